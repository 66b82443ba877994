"""The training engine: freezing, losses, controls, the quickstart learning, and exact resume
after SIGKILL (real processes killed at random instants)."""
import copy
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config

from trainer.config import RunConfig, load_config
from trainer.checkpoint import CheckpointError, CheckpointStore
from trainer.checkpoint.policy import eval_weights
from trainer.engine import NullPublisher, Trainer, class_weights, focal_loss
from trainer.history import read_history

ROOT = Path(__file__).resolve().parents[1]

def tiny_cfg(**changes) -> RunConfig:
    return run_config(RESNET_TINY, **changes)


class EventRecorder(NullPublisher):
    """A publisher that hands every event to `sink(kind, level, message, data)`."""

    def __init__(self, sink):
        self.sink = sink

    def event(self, kind, level, message, **data):
        self.sink(kind, level, message, data)


def test_frozen_parameters_keep_their_values_bit_for_bit(tmp_path):
    cfg = tiny_cfg(max_steps=6)   # 48 train / 16 per step = 3 steps per epoch: phase "head" = 6 steps
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    head = {id(p) for p in trainer.model.get_classifier().parameters()}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert trainer.train() == "finished"
    for name, p in trainer.model.named_parameters():
        if id(p) in head:
            assert not torch.equal(before[name], p), f"head parameter {name} did not train"
        else:
            assert torch.equal(before[name], p), f"frozen parameter {name} changed"
            assert p not in trainer.optimizer.state, f"optimizer state created for frozen {name}"


def test_unfrozen_phase_changes_the_backbone(tmp_path):
    cfg = tiny_cfg(max_steps=8)
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    stem = trainer.model.conv1.weight.detach().clone()
    trainer.train()
    assert not torch.equal(stem, trainer.model.conv1.weight)


def test_focal_loss_hand_worked():
    logits = torch.log(torch.tensor([[0.8, 0.2]]))
    target = torch.tensor([[1.0, 0.0]])
    # -(1 - 0.8)^2 * log(0.8) = 0.04 * 0.22314
    assert focal_loss(logits, target, 2.0, None, 0.0).item() == pytest.approx(0.04 * 0.2231436, rel=1e-4)
    assert focal_loss(logits, target, 0.0, None, 0.0).item() == pytest.approx(0.2231436, rel=1e-4)
    w = torch.tensor([2.0, 1.0])
    assert focal_loss(logits, target, 0.0, w, 0.0).item() == pytest.approx(2 * 0.2231436, rel=1e-4)


def test_balanced_class_weights():
    assert class_weights("balanced", [30, 10]).tolist() == pytest.approx([40 / 60, 40 / 20])
    assert class_weights(None, [1, 2]) is None
    with pytest.raises(ValueError, match="2 classes"):
        class_weights([1.0, 2.0, 3.0], [1, 2])


def test_history_eval_and_files(tmp_path):
    cfg = tiny_cfg()
    assert Trainer(cfg, tmp_path).run() == "finished"
    records = list(read_history(tmp_path / "history.msgpack"))
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 13))
    elapsed = [r["elapsed"] for r in train]  # the TUI's time axis: training seconds at each record
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert len(evals) == 4 and {"val_accuracy", "val_f1_macro", "confusion"} <= set(evals[-1])
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["plan"]["total_steps"] == 12 and len(plan["plan"]["phases"]) == 2
    # offline readers take the direction of "best" from here instead of guessing it from the name
    assert plan["config"]["monitor"] == cfg.eval.monitor and plan["config"]["mode"] == cfg.eval.mode


def test_controls_pause_checkpoint_stop(tmp_path):
    cfg = tiny_cfg(**{"checkpoint.interval_seconds": 3600})
    events: "queue.SimpleQueue" = queue.SimpleQueue()

    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    controls.put((1, "pause"))
    trainer = Trainer(cfg, tmp_path, EventRecorder(lambda kind, level, message, data: events.put((kind, data))),
                      controls)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("final", trainer.run()))
    thread.start()
    seen = []
    deadline = time.time() + 60
    while ("state", "paused") not in seen and time.time() < deadline:
        kind, data = events.get(timeout=60)
        seen.append((kind, data.get("state")))
    step_when_paused = trainer.state.step
    time.sleep(0.5)
    assert trainer.state.step == step_when_paused, "trained while paused"
    controls.put((2, "checkpoint"))
    controls.put((3, "resume"))
    controls.put((4, "stop"))
    thread.join(60)
    assert result["final"] == "stopped"
    kinds = []
    while not events.empty():
        kinds.append(events.get())
    assert any(k == "request" and d.get("id") == 2 and d["outcome"] == "done" for k, d in kinds)
    assert any(k == "checkpoint" for k, d in kinds)
    assert any(k == "state" and d.get("state") == "stopped" for k, d in kinds)


def test_failed_checkpoints_alert_but_training_goes_on(tmp_path, monkeypatch):
    # a failure other than a full disk (which pauses the run: tests/test_faults_engine.py)
    def broken_write(self, state, meta, before_commit=None):
        raise CheckpointError(f"injected failure writing step {meta['step']}")

    monkeypatch.setattr(CheckpointStore, "_write", broken_write)
    cfg = tiny_cfg(max_steps=4)
    events = []
    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    controls.put((1, "checkpoint"))
    recorder = EventRecorder(lambda kind, level, message, data: events.append((kind, level, message)))
    assert Trainer(cfg, tmp_path, recorder, controls).run() == "finished"
    failed = [e for e in events if e[0] == "checkpoint_failed"]
    assert failed and all(level == "error" for _, level, _ in failed)
    assert any(k == "request" and "failed" in m for k, _, m in events)
    assert not list((tmp_path / "ckpt").glob("step-*"))


def test_each_checkpoint_holds_its_steps_state_even_when_the_writer_copies_late(tmp_path, monkeypatch):
    """The writer copies weights and optimizer state while the next step runs; the engine's fence
    before the optimizer step must keep that step from changing them first."""
    from trainer.checkpoint import capture

    real_run = capture._DeferredCopies.run

    def late_run(self):
        time.sleep(0.3)  # longer than a tiny step: without the fence the next update lands first
        real_run(self)

    monkeypatch.setattr(capture._DeferredCopies, "run", late_run)
    cfg = tiny_cfg(**{"checkpoint.interval_seconds": 3600, "checkpoint.keep_last": 100})
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    expected = {}
    real_checkpoint = trainer.checkpoints.checkpoint

    def recording_checkpoint(*args, **kwargs):
        state = trainer.checkpoint_state()
        expected[trainer.state.step] = {key: copy.deepcopy(state[key]) for key in ("model", "optimizer", "ema")}
        real_checkpoint(*args, **kwargs)

    trainer.checkpoints.checkpoint = recording_checkpoint
    assert trainer.train() == "finished"
    store = CheckpointStore(tmp_path / "ckpt", readonly=True)
    infos = store.list_valid()
    assert [i.step for i in infos] == sorted(expected) and len(infos) >= 4
    for info in infos:
        loaded = store.load(info)
        for key, want in expected[info.step].items():
            assert_same_tensors(loaded[key], want, f"step {info.step} {key}")
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["step"] == infos[-1].step
    assert_same_tensors(last["model"], eval_weights(expected[infos[-1].step]), "last.pt")


def test_the_end_of_a_run_does_not_rewrite_an_unchanged_checkpoint(tmp_path):
    events = []
    recorder = EventRecorder(lambda kind, level, message, data: events.append((kind, data)))
    cfg = tiny_cfg(**{"checkpoint.interval_seconds": 3600})
    assert Trainer(cfg, tmp_path, recorder).run() == "finished"
    steps = [data["step"] for kind, data in events if kind == "checkpoint"]
    assert steps == [3, 6, 9, 12]  # one per epoch end; no second write of step 12 at the end
    newest = CheckpointStore(tmp_path / "ckpt", readonly=True).list_valid()[-1]
    assert newest.step == 12 and newest.meta["phase_end"] is True and newest.meta["reason"] == "phase_end"

    # cut mid-epoch by max_steps: the final evaluation changed the state, so it is checkpointed
    events.clear()
    cut = tmp_path / "cut"
    cut.mkdir()
    assert Trainer(tiny_cfg(max_steps=4, **{"checkpoint.interval_seconds": 3600}), cut, recorder).run() == "finished"
    newest = CheckpointStore(cut / "ckpt", readonly=True).list_valid()[-1]
    assert newest.step == 4 and newest.meta["reason"] == "final"
    assert newest.meta["history_offset"] == (cut / "history.msgpack").stat().st_size


def assert_same_tensors(got, want, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same_tensors(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tensors(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def test_quickstart_learns_in_a_shortened_run(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["data.synthetic.train_per_class=60", "data.synthetic.val_per_class=20",
                       "phases.0.epochs=4", "phases.1.epochs=1", "checkpoint.interval_seconds=3600"])
    Trainer(cfg, tmp_path).run()
    evals = [r for r in read_history(tmp_path / "history.msgpack") if r["kind"] == "eval"]
    # 8 classes: chance is 0.125
    assert evals[-1]["val_accuracy"] >= 0.5, evals[-1]["val_accuracy"]


# ----------------------------------------------------------------------------- exact resume
def _train_cmd(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "train", str(config), "--run-dir", str(run_dir), "--quiet"]


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def _losses(run_dir: Path) -> dict:
    return {r["step"]: r["train_loss"] for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"}


def _wait_for_progress(proc, run_dir: Path, more_steps: int, timeout: float = 300) -> bool:
    """Wait until the run has logged `more_steps` steps beyond what it had; False if it ended."""
    def logged() -> int:
        try:
            return sum(1 for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train")
        except Exception:  # the file may be mid-truncation while the run resumes
            return 0

    start, deadline = None, time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        count = logged()
        if start is None and (run_dir / "plan.json").exists():
            start = count
        if start is not None and count >= start + more_steps:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_at_random_instants_then_resume_is_bit_identical(tmp_path):
    raw = changed(RESNET_TINY, **MFCC_MLP)
    raw["data"]["synthetic"].update(train_per_class=48, val_per_class=8)
    # ~500 steps: a kill's random delay (up to 0.4 s, ~60 steps on a quiet box) must not reach
    # the end of the run before the third kill
    raw["phases"] = [{"name": "head", "epochs": 20, "trainable": 0.0}, {"name": "full", "epochs": 24}]
    raw["checkpoint"]["interval_seconds"] = 0.2
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(config, reference), check=True, env=env, cwd=ROOT, capture_output=True)

    victim = tmp_path / "victim"
    rng = random.Random(1)
    kills = 0
    while True:
        proc = subprocess.Popen(_train_cmd(config, victim), env=env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 3 and _wait_for_progress(proc, victim, more_steps=rng.randint(3, 25)):
            time.sleep(rng.uniform(0.0, 0.4))   # anywhere: mid-step, mid-checkpoint-write, mid-eval
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        proc.wait(timeout=600)
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        break
    assert kills == 3, "the run finished before it could be killed three times; lengthen it"

    assert _losses(victim) == _losses(reference)
    ref_w, got_w = _final_weights(reference), _final_weights(victim)
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), f"{key} differs after {kills} kills"
