"""Faults the engine meets on a long run (issue 8): a failed stop checkpoint, a full disk, a run
that must start over, a torn history, queued checkpoint requests, a changed config.

In-process Trainers on a tiny MLP config with a recording publisher; full disks are real: the run
directory lives on a small tmpfs (tests/tmpfs.py) that the test fills up mid-run and frees again.
"""
import json
import queue
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.run_configs import MFCC_MLP, RESNET_TINY, run_config
from trainer import cli
from trainer.checkpoint import CheckpointError, CheckpointStore
from trainer.engine import NullPublisher, Trainer
from trainer.history import read_history


def mlp_cfg(**overrides):
    return run_config(RESNET_TINY, **MFCC_MLP, **overrides)


class Recorder(NullPublisher):
    """Records events (kind, level, message, data) in a list and a queue; `on_step(step)` runs in
    the training thread after each step's progress."""

    def __init__(self, on_step=None):
        self.events: list = []
        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self.on_step = on_step
        self.seen_steps: set = set()

    def event(self, kind, level, message, **data):
        self.events.append((kind, level, message, data))
        self.queue.put((kind, level, message, data))

    def progress(self, body):
        if self.on_step is not None and body["step"] not in self.seen_steps:
            self.seen_steps.add(body["step"])
            self.on_step(body["step"])

    def of(self, kind, **match):
        return [(lvl, msg, d) for k, lvl, msg, d in self.events
                if k == kind and all(d.get(key) == value for key, value in match.items())]

    def wait_for(self, kind, timeout=60, **match):
        """Block until an event of `kind` whose data has `match` arrives (also one seen before)."""
        deadline = time.time() + timeout
        seen = self.of(kind, **match)
        while not seen:
            kind_, level, message, data = self.queue.get(timeout=max(0.01, deadline - time.time()))
            if kind_ == kind and all(data.get(k) == v for k, v in match.items()):
                return level, message, data
        return seen[0]


def run_in_thread(trainer):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("final", trainer.run()), daemon=True)
    thread.start()
    return thread, result


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["train_loss"] for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"}


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_run(got: Path, reference: Path) -> None:
    reader = read_history(got / "history.msgpack")
    records = list(reader)
    assert not reader.torn, reader.problem
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)), "duplicate or out-of-order history rows"
    assert losses(got) == losses(reference)
    want, have = weights(reference), weights(got)
    assert want.keys() == have.keys()
    for key in want:
        assert torch.equal(want[key], have[key]), key
    store = CheckpointStore(got / "ckpt", readonly=True)
    assert store.list_valid() and not store.rejected, store.rejected
    leftovers = [p for p in got.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    assert not leftovers, f"torn or unfinished files left behind: {leftovers}"


def fail_writes(monkeypatch, failing: dict):
    """Checkpoint writes raise a non-disk CheckpointError while failing["on"] is true."""
    real = CheckpointStore._write

    def write(self, state, meta, before_commit=None):
        if failing["on"]:
            raise CheckpointError(f"injected failure writing step {meta['step']}")
        return real(self, state, meta, before_commit)

    monkeypatch.setattr(CheckpointStore, "_write", write)


# ----------------------------------------------------------------------------- item 1: stop
def test_a_stop_whose_checkpoint_fails_is_refused_and_training_goes_on(tmp_path, monkeypatch):
    failing = {"on": True}
    fail_writes(monkeypatch, failing)
    controls: "queue.SimpleQueue" = queue.SimpleQueue()

    def on_step(step):
        if step == 2:
            controls.put((5, "stop"))
        if step == 5:
            failing["on"] = False
            controls.put((6, "stop"))

    recorder = Recorder(on_step)
    trainer = Trainer(mlp_cfg(**{"checkpoint.interval_seconds": 3600}), tmp_path, recorder, controls)
    assert trainer.run() == "stopped"
    refused = recorder.of("request", id=5)
    assert [d["outcome"] for _, _, d in refused] == ["failed"]
    level, message, _ = refused[0]
    assert level == "error" and message.startswith("stop refused: checkpoint at step 2 failed: injected failure")
    assert "the run goes on" in message
    assert recorder.of("alert", what="stop_refused")
    assert [d["outcome"] for _, _, d in recorder.of("request", id=6)] == ["done"]
    assert trainer.state.step == 5  # trained on after the refused stop, stopped at the second one
    newest = CheckpointStore(tmp_path / "ckpt", readonly=True).list_valid()[-1]
    assert newest.step == 5 and newest.meta["reason"] == "stop"


def test_a_failed_checkpoint_is_reported_once_even_when_the_stop_retries_it(tmp_path, monkeypatch):
    """An interval checkpoint at step 2 fails, then a stop at step 2 retries the same state: one
    checkpoint_failed for step 2, not two. A stop the process must obey (id 0: daemon gone,
    SIGTERM) still ends the run, with the failure in its last events."""
    fail_writes(monkeypatch, {"on": True})
    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    recorder = Recorder(lambda step: controls.put((0, "stop")) if step == 2 else None)
    trainer = Trainer(mlp_cfg(**{"checkpoint.interval_seconds": 0.001}), tmp_path, recorder, controls)
    assert trainer.run() == "stopped"
    assert [d["step"] for _, _, d in recorder.of("checkpoint_failed")] == [1, 2]
    request = recorder.of("request", id=0)
    assert [d["outcome"] for _, _, d in request] == ["failed"]
    assert "stopping without a final checkpoint" in request[0][1]
    kinds = [k for k, *_ in recorder.events]
    assert kinds[-2:] == ["request", "state"] and recorder.events[-1][3]["state"] == "stopped"


# ----------------------------------------------------------------------------- item 1: starting over
def test_a_resume_with_no_valid_checkpoint_says_so_and_keeps_the_old_history(tmp_path):
    assert Trainer(mlp_cfg(max_steps=6), tmp_path).run() == "finished"
    old_history = (tmp_path / "history.msgpack").read_bytes()
    assert old_history
    for manifest in (tmp_path / "ckpt").glob("step-*/MANIFEST.json"):
        manifest.write_text("{")  # every checkpoint damaged
    recorder = Recorder()
    trainer = Trainer(mlp_cfg(max_steps=6), tmp_path, recorder)
    trainer.setup()
    assert trainer.state.step == 0
    alerts = recorder.of("alert", what="starting_over")
    assert len(alerts) == 1
    level, message, data = alerts[0]
    assert level == "error" and data["reason"] == "all_rejected" and "MANIFEST.json is not valid JSON" in message
    aside = list(tmp_path.glob("history.before-restart-*.msgpack"))
    assert len(aside) == 1 and aside[0].read_bytes() == old_history and aside[0].name in message
    assert (tmp_path / "history.msgpack").stat().st_size == 0
    trainer.checkpoints.store.close()


def test_a_run_killed_before_its_first_checkpoint_starts_over_loudly(tmp_path):
    trainer = Trainer(mlp_cfg(), tmp_path)
    trainer.setup()
    trainer.write_record({"kind": "train", "step": 1, "train_loss": 1.0})
    trainer.checkpoints.store.close()
    recorder = Recorder()
    again = Trainer(mlp_cfg(), tmp_path, recorder)
    again.setup()
    (level, message, data), = recorder.of("alert", what="starting_over")
    assert data["reason"] == "no_checkpoint" and "no checkpoint was found" in message
    again.checkpoints.store.close()


# ----------------------------------------------------------------------------- item 6: history gaps
def _finished_run(run_dir: Path) -> int:
    """A finished 6-step run; returns the history offset of its newest checkpoint."""
    assert Trainer(mlp_cfg(max_steps=6, **{"checkpoint.interval_seconds": 3600}), run_dir).run() == "finished"
    return CheckpointStore(run_dir / "ckpt", readonly=True).list_valid()[-1].meta["history_offset"]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_history_gap_found_on_resume_is_alerted_and_training_goes_on(tmp_path, damage):
    offset = _finished_run(tmp_path)
    path = tmp_path / "history.msgpack"
    data = path.read_bytes()
    records = list(read_history(path))
    if damage == "truncated":
        path.write_bytes(data[:offset - 10])  # cut inside the last record
    else:
        path.write_bytes(data[:offset // 2] + b"\xc1" * 8 + data[offset // 2 + 8:])  # 0xc1: never valid msgpack
    reader = read_history(path)
    kept = list(reader)
    recorder = Recorder()
    trainer = Trainer(mlp_cfg(max_steps=6, **{"checkpoint.interval_seconds": 3600}), tmp_path, recorder)
    trainer.setup()
    (level, message, info), = recorder.of("alert", what="history_gap")
    assert level == "warning" and info["expected_bytes"] == offset
    assert info["valid_bytes"] == reader.valid_length < offset
    assert info["lost_steps"] == [kept[-1]["step"] + 1, 6] and f"steps {kept[-1]['step'] + 1}-6 are lost" in message
    # cut back to the whole records: new rows follow them instead of hiding behind the damage
    assert path.stat().st_size == reader.valid_length == trainer.history.tell()
    assert len(kept) < len(records)
    trainer.checkpoints.store.close()


def test_an_intact_history_resumes_without_an_alert(tmp_path):
    _finished_run(tmp_path)
    recorder = Recorder()
    trainer = Trainer(mlp_cfg(max_steps=6, **{"checkpoint.interval_seconds": 3600}), tmp_path, recorder)
    trainer.setup()
    assert not recorder.of("alert")
    trainer.checkpoints.store.close()


def test_export_of_a_torn_history_warns_and_exits_1(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _finished_run(run)
    (run / "config.yaml").write_text("{}\n")  # what makes it a run directory for `export RUN`
    whole = (run / "history.msgpack").stat().st_size
    intact = tmp_path / "intact.jsonl"
    assert cli.main(["export", str(run), "--format", "jsonl", "-o", str(intact)]) == 0
    assert "is torn at" not in capsys.readouterr().err
    with open(run / "history.msgpack", "ab") as f:
        f.write(b"\x8a\xa4kind")  # the start of a record that never finished
    out = tmp_path / "out.jsonl"
    assert cli.main(["export", str(run), "--format", "jsonl", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    rows = len(intact.read_text().splitlines())
    assert f"{run / 'history.msgpack'} is torn at byte {whole}" in err and f"the {rows} rows before it" in err
    assert out.read_text() == intact.read_text()  # every row before the tear
    assert cli.main(["export", str(run), "--format", "csv"]) == 1
    captured = capsys.readouterr()
    assert "torn at byte" in captured.err and captured.out.startswith("step,")


# ----------------------------------------------------------------------------- item 8
def test_queued_checkpoint_requests_are_answered_by_one_write(tmp_path):
    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    for request_id in range(1, 21):
        controls.put((request_id, "checkpoint"))
    recorder = Recorder()
    cfg = mlp_cfg(max_steps=2, **{"checkpoint.interval_seconds": 3600, "checkpoint.keep_last": 100})
    assert Trainer(cfg, tmp_path, recorder, controls).run() == "finished"
    assert [d["step"] for _, _, d in recorder.of("checkpoint")] == [0, 2]  # one for the 20, one final
    done = recorder.of("request", action="checkpoint")
    assert sorted(d["id"] for _, _, d in done) == list(range(1, 21))
    assert all(d["outcome"] == "done" for _, _, d in done)


# ----------------------------------------------------------------------------- item 11
def test_resume_refuses_a_config_that_does_not_match_the_checkpoint(tmp_path):
    _finished_run(tmp_path)
    newest = CheckpointStore(tmp_path / "ckpt", readonly=True).list_valid()[-1]
    assert len(newest.meta["config_sha256"]) == 64
    other = Trainer(mlp_cfg(max_steps=9, **{"checkpoint.interval_seconds": 3600}), tmp_path)
    with pytest.raises(CheckpointError, match="config.yaml does not match the checkpoint"):
        other.setup()
    other.checkpoints.store.close()


def test_a_run_started_by_an_older_longhaul_resumes_while_its_config_file_is_unchanged(tmp_path):
    """An upgrade adds config keys (distributed, device...): the loaded config's dump, and so its
    hash, differs from the one the checkpoints hold, but config.yaml is byte for byte the file
    they were written with. An edit of that file is still refused."""
    import hashlib

    import yaml

    from trainer.config import dump_config

    cfg = mlp_cfg(max_steps=6, **{"checkpoint.interval_seconds": 3600})
    older = {k: v for k, v in yaml.safe_load(dump_config(cfg)).items() if k not in ("distributed", "device")}
    text = yaml.safe_dump(older, sort_keys=False).encode()
    (tmp_path / "config.yaml").write_bytes(text)
    old = Trainer(cfg, tmp_path)
    old.config_hash = hashlib.sha256(text).hexdigest()  # what the older longhaul hashed: its own dump
    assert old.config_hash != Trainer(cfg, tmp_path / "other").config_hash
    assert old.run() == "finished"
    resumed = Trainer(mlp_cfg(max_steps=9, **{"checkpoint.interval_seconds": 3600}), tmp_path)
    resumed.setup()
    assert resumed.resumed and resumed.state.step == 6
    resumed.checkpoints.store.close()
    (tmp_path / "config.yaml").write_bytes(text.replace(b"seed:", b"seed: 1\nold_seed:", 1))
    edited = Trainer(mlp_cfg(max_steps=9, **{"checkpoint.interval_seconds": 3600}), tmp_path)
    with pytest.raises(CheckpointError, match="config.yaml does not match the checkpoint"):
        edited.setup()
    edited.checkpoints.store.close()


def test_checkpoints_without_a_config_hash_still_load(tmp_path):
    cfg = mlp_cfg(max_steps=6, **{"checkpoint.interval_seconds": 3600})
    old = Trainer(cfg, tmp_path)
    old.config_hash = None  # as written before checkpoints carried it
    assert old.run() == "finished"
    resumed = Trainer(mlp_cfg(max_steps=9, **{"checkpoint.interval_seconds": 3600}), tmp_path)
    resumed.setup()
    assert resumed.resumed and resumed.state.step == 6
    resumed.checkpoints.store.close()


def test_plan_json_is_written_atomically_and_fsynced(tmp_path, monkeypatch):
    from trainer.run import plan

    written = []
    real = plan.atomic_write_json
    monkeypatch.setattr(plan, "atomic_write_json", lambda path, obj: (written.append(Path(path).name), real(path, obj)))
    trainer = Trainer(mlp_cfg(max_steps=1), tmp_path)
    trainer.setup()
    assert written == ["plan.json"] and json.loads((tmp_path / "plan.json").read_text())["plan"]["total_steps"] == 1
    trainer.checkpoints.store.close()


# ----------------------------------------------------------------------------- item 2: full disk
FULL_DISK_CFG = {"checkpoint.interval_seconds": 0.3, "checkpoint.keep_last": 2, "checkpoint.min_free_mb": 1}


def reference_run(tmp_path) -> Path:
    reference = tmp_path / "reference"
    reference.mkdir()
    assert Trainer(mlp_cfg(**FULL_DISK_CFG), reference).run() == "finished"
    return reference


@pytest.mark.parametrize("leave_kb", [0, 1024], ids=["enospc", "below_reserve"])
def test_a_full_disk_pauses_the_run_and_it_resumes_by_itself(tmp_path, tmpfs, leave_kb):
    """leave_kb=0: the history append itself meets ENOSPC (the fallback); 1024: 1 MiB stays
    free, less than a checkpoint needs, so the free-space check pauses before anything fails."""
    fs = tmpfs(40)
    run_dir = fs.path / "run"
    run_dir.mkdir()
    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    filled = {}
    recorder = Recorder(lambda step: filled.setdefault("filler", fs.fill(leave_kb=leave_kb)) if step == 4 else None)
    trainer = Trainer(mlp_cfg(**FULL_DISK_CFG), run_dir, recorder, controls)
    thread, result = run_in_thread(trainer)

    level, message, paused = recorder.wait_for("state", state="paused", reason="disk_full")
    assert paused["free_bytes"] < paused["needed_bytes"]
    level, message, alert = recorder.wait_for("alert", what="disk_full")
    assert level == "error" and str(run_dir) in message and "MiB free" in message
    step = trainer.state.step
    controls.put((9, "resume"))  # refused while the disk is still full, with the numbers
    level, message, refused = recorder.wait_for("request", id=9)
    assert refused["outcome"] == "failed" and "still full" in message and refused["free_bytes"] < refused["needed_bytes"]
    time.sleep(0.5)
    assert trainer.state.step == step and thread.is_alive(), "trained on a full disk"

    filled["filler"].unlink()
    thread.join(120)
    assert result.get("final") == "finished"
    assert recorder.of("state", state="running", reason="disk_space_back")
    assert recorder.of("alert", what="disk_space_back")
    assert not recorder.of("crash")
    assert_same_run(run_dir, reference_run(tmp_path))
    assert not list((run_dir / "ckpt").glob(".tmp-*"))


def test_a_stop_while_paused_for_disk_is_refused_then_works_once_space_is_back(tmp_path, tmpfs):
    fs = tmpfs(40)
    run_dir = fs.path / "run"
    run_dir.mkdir()
    controls: "queue.SimpleQueue" = queue.SimpleQueue()
    filled = {}
    recorder = Recorder(lambda step: filled.setdefault("filler", fs.fill()) if step == 3 else None)
    trainer = Trainer(mlp_cfg(**FULL_DISK_CFG), run_dir, recorder, controls)
    thread, result = run_in_thread(trainer)
    recorder.wait_for("state", state="paused", reason="disk_full")
    step = trainer.state.step
    controls.put((7, "stop"))
    level, message, refused = recorder.wait_for("request", id=7)
    assert refused["outcome"] == "failed" and message.startswith(f"stop refused: checkpoint at step {step} failed")
    assert "free space and stop again" in message
    assert thread.is_alive() and trainer.state.step == step and trainer.disk.full is not None

    filled["filler"].unlink()
    recorder.wait_for("state", state="running", reason="disk_space_back")
    controls.put((8, "stop"))
    thread.join(120)
    assert result.get("final") == "stopped"
    assert [d["outcome"] for _, _, d in recorder.of("request", id=8)] == ["done"]
    newest = CheckpointStore(run_dir / "ckpt", readonly=True).list_valid()[-1]
    assert newest.step == trainer.state.step
    reader = read_history(run_dir / "history.msgpack")
    steps = [r["step"] for r in reader if r["kind"] == "train"]
    assert not reader.torn and steps == list(range(1, trainer.state.step + 1))
