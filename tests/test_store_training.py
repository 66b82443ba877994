"""Training from the feature store (issue 12, items 6 and 8): the same examples as the in-RAM cache,
a missing store prepared visibly, the store's fingerprint recorded and a changed store refused on
resume (unless accepted), a resume that neither scans nor decodes, and exact resume."""
from __future__ import annotations

import importlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config
from tests.store_fixture import VARIANT_STEP, FakePrepare, in_ram_cfg, write_store

from trainer import protocol
from trainer.data import build_datasets, stored
from trainer.data.report import DataError
from trainer.engine import NullPublisher, Trainer
from trainer.history import read_history
from trainer.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
# An MFCC MLP on 4 synthetic classes: 48 train clips, 3 steps per epoch, 12 steps in all.
RAW = changed(RESNET_TINY, **MFCC_MLP)


def store_cfg(tmp_path, dtype="float32", **changes):
    return run_config(RAW, **{"data.store": str(tmp_path / "store"), "data.store_dtype": dtype, **changes})


class Recorder(NullPublisher):
    """Keeps every event and preparing body; asks for a stop once training reaches `stop_at`."""

    def __init__(self, controls=None, stop_at=None):
        self.events, self.preparing_bodies = [], []
        self.controls, self.stop_at = controls, stop_at

    def event(self, kind, level, message, **data):
        self.events.append((kind, level, message, data))

    def preparing(self, body):
        self.preparing_bodies.append(body)

    def progress(self, body):
        if self.stop_at is not None and body["step"] == self.stop_at:
            self.controls.put((1, "stop"))


@pytest.fixture
def fake_prepare(monkeypatch):
    """prepare()/store_status() of the store package, standing in for the prepare module."""
    fake = FakePrepare()
    module = types.ModuleType("trainer.data.store.prepare")
    module.prepare, module.store_status = fake.prepare, fake.store_status
    monkeypatch.setitem(sys.modules, "trainer.data.store.prepare", module)
    return fake


def rd(tmp_path, name):
    """A new run directory (the CLI makes it before the trainer runs)."""
    path = tmp_path / name
    path.mkdir()
    return path


def losses(run_dir):
    return [r["train_loss"] for r in read_history(Path(run_dir) / "history.msgpack") if r["kind"] == "train"]


# ----------------------------------------------------------------------------- the examples
def test_stored_examples_are_the_in_ram_examples(tmp_path):
    cfg = store_cfg(tmp_path)
    write_store(cfg)
    ram, disk = build_datasets(in_ram_cfg(cfg)), build_datasets(cfg)
    assert disk.classes == ram.classes and disk.class_counts == ram.class_counts
    assert disk.input_shape == ram.input_shape and len(disk.train) == len(ram.train)
    assert list(disk.train.labels) == list(ram.train.labels)
    assert disk.val.names == ram.val.names
    for i in (0, 7, len(ram.train) - 1):
        assert torch.equal(disk.train.examples.raw(i), ram.train.examples.raw(i))
        x_disk, y_disk = disk.train[(2, i)]
        x_ram, y_ram = ram.train[(2, i)]
        assert torch.equal(x_disk, x_ram) and y_disk == y_ram and isinstance(y_disk, int)
    assert torch.equal(disk.val[3][0], ram.val[3][0]) and disk.val[3][1] == ram.val[3][1]
    assert isinstance(disk.val[3][1], int)  # collated to int64 targets whatever the stored dtype
    # nothing per example is kept but the labels, once: no items, no names, no second copy
    assert not hasattr(disk.train.examples, "items") and isinstance(disk.train.examples.labels, np.ndarray)
    assert disk.train.examples.labels is disk.train.examples.split.labels


def test_float16_store_is_close(tmp_path):
    cfg = store_cfg(tmp_path, dtype="float16")
    write_store(cfg)
    ram, disk = build_datasets(in_ram_cfg(cfg)), build_datasets(cfg)
    a, b = ram.train.examples.raw(5), disk.train.examples.raw(5)
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.05, rtol=1e-3)


def test_variant_is_drawn_from_seed_epoch_index(tmp_path):
    cfg = store_cfg(tmp_path)
    write_store(cfg, variants=2)
    disk = build_datasets(cfg).train.examples
    base = disk.split.raw(4, 0)
    picks = [disk.variant(4, epoch) for epoch in range(60)]
    assert set(picks) == {0, 1, 2}                                   # uniform over original + 2
    assert picks == [disk.variant(4, epoch) for epoch in range(60)]   # a pure function
    for epoch in range(3):
        v = picks[epoch]
        got = disk.raw(4, epoch).numpy()
        assert np.allclose(got, base + VARIANT_STEP * v, atol=1e-6)
    assert np.array_equal(disk.raw(4).numpy(), base)                 # evaluation: the original


def test_training_window_is_drawn_from_seed_epoch_index():
    from trainer.data import windows

    class Split:   # a StoreSplit of one recording of 40 rows per variant
        variants, labels = 1, [2]

        def __init__(self):
            self.reads = []

        def length(self, item, variant=0):
            return 40

        def raw(self, item, variant=0, start=0, count=None):
            self.reads.append((item, variant, start, count))
            return np.zeros((1, count), dtype=np.float16)

    split = Split()
    waveform = types.SimpleNamespace(kind="waveform", top_db=None)  # (1, T) rows, no dB floor
    examples = stored.StoredExamples(split, extractor=waveform, seed=3, window=8)
    for epoch in range(5):
        x = examples.raw(0, epoch)
        assert x.shape == (1, 8) and x.dtype == torch.float32
        assert split.reads[-1] == (0, examples.variant(0, epoch), windows.train_start(40, 8, 3, epoch, 0), 8)
    assert len({r[2] for r in split.reads}) > 1                  # windows from anywhere in the recording
    examples.raw(0)
    assert split.reads[-1] == (0, 0, 0, 8)                        # outside training: the first window


def test_store_for_other_settings_is_refused(tmp_path):
    write_store(store_cfg(tmp_path))
    other = store_cfg(tmp_path, **{"features.n_mels": 24})
    from trainer.data.store import StoreError

    with pytest.raises(StoreError, match=r"store was prepared for other settings: features.n_mels 32 -> 24"):
        build_datasets(other)


def test_auto_values_kept_by_the_run_are_not_measured_again(tmp_path, monkeypatch):
    cfg = store_cfg(tmp_path, **{"data.sample_rate": "auto"})
    frozen = tmp_path / "data_auto.json"
    first, values = stored.resolve_auto(cfg, frozen)
    assert first.data.sample_rate == 16000 and frozen.exists()
    from trainer.data import datasets

    monkeypatch.setattr(datasets, "scan", lambda cfg: pytest.fail("scanned although the run kept its auto values"))
    again, _ = stored.resolve_auto(cfg, frozen)
    assert again.data.sample_rate == 16000


# ----------------------------------------------------------------------------- training
def test_prepare_and_the_run_resolve_auto_and_name_the_store_with_one_function(tmp_path, monkeypatch):
    """`longhaul prepare` plans the recipe the run plans: the same resolve_auto, the same store_dir."""
    from trainer import cli
    from trainer.data.store import StoreError
    from trainer.config import dump_config

    prepare_module = importlib.import_module("trainer.data.store.prepare")  # the package's `prepare` is the function

    cfg = store_cfg(tmp_path, **{"data.sample_rate": "auto"})
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    resolved, asked = [], []
    real = stored.resolve_auto

    def spy(cfg, frozen):
        resolved.append(frozen)
        return real(cfg, frozen)

    def fake_prepare(cfg, **kwargs):
        asked.append(cfg.data.sample_rate)
        return types.SimpleNamespace(report=None, describe=lambda: "store up to date", store_dir=tmp_path / "store")

    monkeypatch.setattr(stored, "resolve_auto", spy)
    monkeypatch.setattr(prepare_module, "prepare", fake_prepare)
    assert cli.main(["prepare", str(tmp_path / "c.yaml")]) == 0
    assert resolved == [None] and asked == [16000]
    with pytest.raises(StoreError, match="data.store is not set"):
        stored.open_store(store_cfg(tmp_path, **{"data.store": None}))


def test_training_from_store_equals_training_in_ram(tmp_path, fake_prepare):
    cfg = store_cfg(tmp_path, max_steps=5)
    write_store(cfg)
    assert Trainer(in_ram_cfg(cfg), rd(tmp_path, "ram")).run() == "finished"
    assert Trainer(cfg, rd(tmp_path, "disk")).run() == "finished"
    assert losses(tmp_path / "disk") == pytest.approx(losses(tmp_path / "ram"), abs=1e-6)
    recorded = json.loads(RunDir(tmp_path / "disk").data_store.read_text())
    assert recorded["fingerprint"] and recorded["splits"]["train"]["items"] == 48


def test_train_prepares_with_the_real_prepare_and_equals_in_ram(tmp_path):
    cfg = store_cfg(tmp_path, max_steps=3, **{"data.prepare_workers": 1})
    recorder = Recorder()
    assert Trainer(cfg, rd(tmp_path, "disk"), recorder).run() == "finished"
    assert Trainer(in_ram_cfg(cfg), rd(tmp_path, "ram")).run() == "finished"
    assert losses(tmp_path / "disk") == losses(tmp_path / "ram")
    assert recorder.preparing_bodies[-1]["finished"] and recorder.preparing_bodies[-1]["total"] == 64
    assert [e[3]["status"] for e in recorder.events if e[0] == "preparing"] == ["missing", "done"]


def test_loader_workers_read_the_store_after_fork(tmp_path, fake_prepare):
    cfg = store_cfg(tmp_path, max_steps=4, **{"data.num_workers": 2})
    write_store(cfg)
    assert Trainer(cfg, rd(tmp_path, "workers")).run() == "finished"
    assert Trainer(in_ram_cfg(cfg), rd(tmp_path, "ram")).run() == "finished"
    assert losses(tmp_path / "workers") == losses(tmp_path / "ram")


def test_training_from_float16_store_is_close(tmp_path, fake_prepare):
    cfg = store_cfg(tmp_path, dtype="float16", max_steps=5)
    write_store(cfg)
    Trainer(in_ram_cfg(cfg), rd(tmp_path, "ram")).run()
    Trainer(cfg, rd(tmp_path, "disk")).run()
    assert losses(tmp_path / "disk") == pytest.approx(losses(tmp_path / "ram"), rel=0.05)


def test_fresh_start_prepares_the_missing_store_visibly(tmp_path, fake_prepare, capsys):
    from trainer.console import ConsolePublisher

    cfg = store_cfg(tmp_path, max_steps=2)
    publisher = ConsolePublisher(rd(tmp_path, "run"), "run")
    assert Trainer(cfg, tmp_path / "run", publisher).run() == "finished"
    assert fake_prepare.prepared == 1
    captured = capsys.readouterr()
    assert "preparing data: feature store" in captured.out and "is missing" in captured.out
    assert "data prepared: 64 items" in captured.out
    assert "preparing data: 64/64 files" in captured.err   # PrepareProgressLine, as `longhaul prepare`
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["data"]["status"] for e in events if e["kind"] == "preparing"] == ["missing", "done"]
    # what the trainer did before its first step: the store stage covers the preparing
    kinds = [e["data"]["stage"] if e["kind"] == "setup" else e["kind"] for e in events
             if e["kind"] in ("setup", "preparing")]
    assert kinds == ["store", "preparing", "preparing", "model", "ready"]
    # a second fresh run finds the store current: nothing prepared
    Trainer(cfg, rd(tmp_path, "run2")).run()
    assert fake_prepare.prepared == 1


def test_preparing_reports_are_protocol_frames(tmp_path, fake_prepare, monkeypatch):
    from trainer import store_setup
    from trainer.worker import plain

    monkeypatch.setattr(store_setup, "PREPARING_INTERVAL", 0.0)
    cfg = store_cfg(tmp_path, max_steps=1)
    recorder = Recorder()
    Trainer(cfg, rd(tmp_path, "run"), recorder).run()
    bodies = recorder.preparing_bodies
    assert len(bodies) >= 2 and bodies[-1]["finished"] and bodies[-1]["done"] == bodies[-1]["total"] == 64
    assert [b["done"] for b in bodies] == sorted(b["done"] for b in bodies)
    for body in bodies:   # what LinkPublisher sends, as the daemon validates it
        frame = protocol.preparing(**plain(body), check=False)
        decoded = protocol.FrameDecoder(protocol.MAX_SERVER_FRAME, protocol.WORKER_TO_DAEMON).feed(
            protocol.encode(frame, protocol.MAX_SERVER_FRAME))
        assert decoded == [frame]
    kinds = [e[0] for e in recorder.events]
    assert kinds.index("preparing") < kinds.index("phase")


def test_a_stop_while_preparing_ends_the_run_stopped_and_a_restart_goes_on(tmp_path, monkeypatch):
    from trainer import store_setup
    from trainer.data.store import FeatureStore, StoreError

    monkeypatch.setattr(store_setup, "PREPARING_INTERVAL", 0.0)
    cfg = store_cfg(tmp_path, max_steps=2, **{"data.prepare_workers": 1})
    controls = queue.SimpleQueue()

    class StopWhilePreparing(Recorder):
        def preparing(self, body):
            super().preparing(body)
            controls.put((5, "checkpoint"))      # stays queued for training
            controls.put((7, "stop"))

    recorder = StopWhilePreparing()
    run = rd(tmp_path, "run")
    assert Trainer(cfg, run, recorder, controls).run() == "stopped"
    assert ("request", 7, "done") in [(k, d.get("id"), d.get("outcome")) for k, _, _, d in recorder.events]
    assert recorder.events[-1][3] == {"state": "stopped"}
    assert not recorder.preparing_bodies[-1]["finished"]
    assert controls.get_nowait() == (5, "checkpoint")            # other requests wait for training
    with pytest.raises(StoreError):
        FeatureStore.open(tmp_path / "store")                    # never half-made: no manifest
    assert Trainer(cfg, run, Recorder()).run() == "finished"     # the next start prepares and trains


def test_preparing_report_rate_limit():
    from trainer.store_setup import PreparingReport

    now = [0.0]
    sent = []
    report = PreparingReport(sent.append, "/s", clock=lambda: now[0])
    for done in range(1, 101):
        now[0] += 0.01
        report(done, 100)
    assert 2 <= len(sent) <= 4 and sent[-1]["done"] == 100       # every 0.5 s, and the last
    report.done(100)
    assert sent[-1]["finished"] and sent[-1]["eta"] == 0.0


def test_preparing_counts_reused_items_as_done_and_the_rate_from_the_computed_ones():
    from trainer.store_setup import PreparingReport

    now = [0.0]
    sent = []
    report = PreparingReport(sent.append, "/s", clock=lambda: now[0])
    for t, done, total in ((0.0, 0, 0), (1.0, 30, 40), (5.0, 32, 40), (7.0, 36, 40)):
        now[0] = t  # waiting for the lock, then 30 reused after a 1 s scan; the workers start in 4 s
        report(done, total)
    assert [(s["done"], s["total"]) for s in sent] == [(0, 0), (30, 40), (32, 40), (36, 40)]
    assert sent[-1]["rate"] == 2.0 and sent[-1]["eta"] == 2.0


def test_daemon_relays_preparing_and_keeps_it_for_new_clients(tmp_path, runtime_dir, launcher):
    from tests.daemon_helpers import RawClient, is_final_state, make_run
    from trainer.run.sockets import socket_path

    run_dir = make_run(tmp_path / "runs", "prep", fake={"steps": 20, "preparing_items": 200, "preparing_step": 0.1})
    launcher.start(run_dir)
    client = RawClient(socket_path(run_dir))
    first = client.hello()["snapshot"]
    frames = client.recv_until(lambda m: m["type"] == "preparing" and m["done"] >= 50)
    late = RawClient(socket_path(run_dir)).hello()["snapshot"]   # a client attaching mid-way
    assert late["state"] == "starting" and late["preparing"]["total"] == 200 and late["preparing"]["done"] >= 50
    assert first["preparing"] is None or first["preparing"]["total"] == 200
    rest = client.recv_until(lambda m: m["type"] == "progress")
    assert RawClient(socket_path(run_dir)).hello()["snapshot"]["preparing"] is None   # training started
    preparing = [m for m in frames + rest if m["type"] == "preparing"]
    assert preparing[-1]["finished"] and preparing[-1]["done"] == 200
    seen = [("event", e["kind"]) for e in first["events"]] + [(m["type"], m.get("kind")) for m in frames + rest]
    assert seen.index(("event", "preparing")) < seen.index(("preparing", None))
    client.recv_until(is_final_state)


# ----------------------------------------------------------------------------- resume
def stopped_run(tmp_path, cfg, stop_at=4):
    controls = queue.SimpleQueue()
    run = rd(tmp_path, "run")
    assert Trainer(cfg, run, Recorder(controls, stop_at), controls).run() == "stopped"
    return run


def test_resume_neither_prepares_nor_scans_nor_decodes(tmp_path, fake_prepare, monkeypatch):
    from trainer.data import datasets, features, sources

    cfg = store_cfg(tmp_path)
    run = stopped_run(tmp_path, cfg)
    assert fake_prepare.prepared == 1
    calls = []
    for module, name in ((sources, "scan"), (datasets, "scan"), (datasets, "_decode_split"),
                         (features.FeatureExtractor, "raw_batch")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _o=original, **k: (calls.append(_n), _o(*a, **k))[1])
    status_calls = fake_prepare.status_calls
    assert Trainer(cfg, run).run() == "finished"
    assert calls == [] and fake_prepare.status_calls == status_calls and fake_prepare.prepared == 1


def test_resume_without_the_record_warns_and_never_prepares(tmp_path, fake_prepare):
    cfg = store_cfg(tmp_path)
    run = stopped_run(tmp_path, cfg)
    RunDir(run).data_store.unlink()
    recorder = Recorder()
    assert Trainer(cfg, run, recorder).run() == "finished"
    assert [d["what"] for k, _, _, d in recorder.events if k == "alert"] == ["data_unrecorded"]
    assert fake_prepare.prepared == 1 and RunDir(run).data_store.exists()


def test_resume_of_the_recorded_store_does_not_compare_the_recipe_again(tmp_path, fake_prepare, monkeypatch):
    """The recipe lists the noise folder afresh (names, sizes, mtimes): a touched or restored noise
    file must not refuse the very store the run trained on."""
    from trainer.data.store import layout

    cfg = store_cfg(tmp_path)
    run = stopped_run(tmp_path, cfg)
    recipe = layout.recipe
    monkeypatch.setattr(layout, "recipe", lambda c: {**recipe(c), "data.variants.noise_files": "touched"})
    assert Trainer(cfg, run).run() == "finished"


def test_resume_against_a_changed_store_is_refused_then_accepted(tmp_path, fake_prepare):
    cfg = store_cfg(tmp_path)
    run = stopped_run(tmp_path, cfg)
    before = json.loads(RunDir(run).data_store.read_text())
    write_store(store_cfg(tmp_path, **{"data.synthetic.train_per_class": 13}))   # 52 train clips now
    with pytest.raises(DataError) as info:
        Trainer(cfg, run).run()
    message = str(info.value)
    assert "train: 1 of 1 shards replaced, 48 -> 52 examples" in message
    assert f"longhaul resume {run} --accept-data-change" in message
    assert json.loads(RunDir(run).data_store.read_text()) == before

    recorder = Recorder()
    assert Trainer(cfg, run, recorder, accept_data_change=True).run() == "finished"
    alerts = [e for e in recorder.events if e[0] == "alert" and e[3].get("what") == "data_changed"]
    assert len(alerts) == 1 and alerts[0][1] == "warning"
    assert alerts[0][2].startswith("data store changed: bit-exact resume is lost: train: 1 of 1 shards replaced")
    assert json.loads(RunDir(run).data_store.read_text())["splits"]["train"]["items"] == 52
    assert fake_prepare.prepared == 1


def test_accept_flag_reaches_the_worker_through_the_environment(monkeypatch):
    from trainer import cli, store_setup

    # setenv, not delenv: delenv of an absent variable records nothing to undo, and the "1" set
    # below would leak into every later test's daemon (which then accepts any changed store)
    monkeypatch.setenv(store_setup.ACCEPT_ENV, "0")
    assert not store_setup.accept_from_env()
    for argv in (["resume", "somerun", "--accept-data-change"], ["train", "c.yaml", "--accept-data-change"],
                 ["start", "c.yaml", "--accept-data-change"]):
        assert cli.build_parser().parse_args(argv).accept_data_change
    args = cli.build_parser().parse_args(["resume", "somerun", "--accept-data-change"])
    cli._pass_accept_data_change(args)
    assert store_setup.accept_from_env()
    from trainer.daemon.supervisor import child_env

    assert child_env()[store_setup.ACCEPT_ENV] == "1"   # what the daemon gives its worker


def test_accepting_a_change_names_the_store_the_user_saw(tmp_path, fake_prepare, monkeypatch):
    """`resume RUN --accept-data-change` passes the store's fingerprint, not a blanket yes: a
    store changed again later in the same daemon's life (a worker restart) is refused."""
    from trainer import cli, store_setup
    from trainer.data.store import FeatureStore

    cfg = store_cfg(tmp_path)
    run = stopped_run(tmp_path, cfg)
    cli.write_config(run, cfg)
    write_store(store_cfg(tmp_path, **{"data.synthetic.train_per_class": 13}))
    monkeypatch.setenv(store_setup.ACCEPT_ENV, "0")
    cli._pass_accept_data_change(cli.build_parser().parse_args(["resume", "x", "--accept-data-change"]), run)
    seen = store_setup.accept_from_env()
    assert isinstance(seen, str) and seen == FeatureStore.open(tmp_path / "store").fingerprint
    write_store(store_cfg(tmp_path, **{"data.synthetic.train_per_class": 14}))   # changed again
    with pytest.raises(DataError, match="the feature store changed"):
        Trainer(cfg, run, accept_data_change=seen).run()
    write_store(store_cfg(tmp_path, **{"data.synthetic.train_per_class": 13}))   # the one accepted
    assert Trainer(cfg, run, accept_data_change=seen).run() == "finished"


@pytest.mark.parametrize("balanced", [False, True])
def test_stop_and_resume_is_bit_identical_to_one_run(tmp_path, fake_prepare, balanced):
    cfg = store_cfg(tmp_path, **{"data.balanced_sampler": balanced})
    whole = rd(tmp_path, "whole")
    assert Trainer(cfg, whole).run() == "finished"
    run = stopped_run(tmp_path, cfg, stop_at=5)
    assert Trainer(cfg, run).run() == "finished"
    assert losses(run) == losses(whole)
    a = torch.load(whole / "last.pt", weights_only=False)["model"]
    b = torch.load(run / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- SIGKILL
def _train_cmd(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "train", str(config), "--run-dir", str(run_dir), "--quiet"]


def _logged(run_dir: Path) -> int:
    try:
        return sum(1 for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train")
    except Exception:
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_from_the_store_is_bit_identical(tmp_path):
    raw = changed(RAW, **{"data.store": str(tmp_path / "store"), "data.store_dtype": "float32"})
    raw["data"]["synthetic"].update(train_per_class=24, val_per_class=4)
    raw["phases"] = [{"name": "head", "epochs": 10, "trainable": 0.0}, {"name": "full", "epochs": 10}]
    raw["checkpoint"]["interval_seconds"] = 0.2
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(config, reference), check=True, env=env, cwd=ROOT, capture_output=True)
    victim, rng, kills = tmp_path / "victim", random.Random(3), 0
    while True:
        proc = subprocess.Popen(_train_cmd(config, victim), env=env, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 2:
            start, target = None, rng.randint(3, 15)
            while proc.poll() is None:
                start = _logged(victim) if start is None and (victim / "plan.json").exists() else start
                if start is not None and _logged(victim) >= start + target:
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                time.sleep(rng.uniform(0.0, 0.3))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        proc.wait(timeout=600)
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        break
    assert kills == 2
    ref = {r["step"]: r["train_loss"] for r in read_history(reference / "history.msgpack") if r["kind"] == "train"}
    got = {r["step"]: r["train_loss"] for r in read_history(victim / "history.msgpack") if r["kind"] == "train"}
    assert got == ref
    a = torch.load(reference / "last.pt", weights_only=False)["model"]
    b = torch.load(victim / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the TUI
def test_tui_shows_the_preparing_data_phase():
    from datetime import timezone

    from tui.fmt import Clock
    from tui.model import RunModel
    from tui.widgets.header import HeaderInfo
    from tui.widgets.timeline import preparing_view

    body = {"done": 1200, "total": 4800, "rate": 340.4, "eta": 10.6, "elapsed": 3.5, "time": 0.0,
            "store": "/s", "finished": False}
    model = RunModel(name="big", state="starting")
    model.load_snapshot({"state": "starting", "preparing": body})
    clock = Clock(now=lambda: 0.0, tz=timezone.utc)
    info = HeaderInfo.from_model(model, "live", clock)
    assert (info.phase, info.step, info.epoch) == ("preparing data", "files 1,200/4,800 25.0%", "340 files/s")
    assert info.eta.startswith("ETA 10s") or info.eta.startswith("ETA 11s")
    fraction, label = preparing_view(model.preparing)
    assert fraction == 0.25 and label.startswith("preparing data: 1,200/4,800 files  340 files/s  ETA")
    model.apply_preparing({**body, "done": 4800, "finished": True})
    assert model.preparing is None and preparing_view(model.preparing) is None
    model.apply_preparing(body)
    model.apply_progress({"step": 1, "total_steps": 10, "metrics": {}})
    assert model.preparing is None and HeaderInfo.from_model(model, "live", clock).phase != "preparing data"
    for state in ("stopped", "failed"):  # a prepare stopped or failed sends no finished frame
        model.apply_preparing(body)
        model.apply_event({"seq": model.events_total + 100, "kind": "state", "data": {"state": state}})
        assert model.preparing is None and preparing_view(model.preparing) is None, state
    model.apply_preparing(body)
    model.apply_event({"seq": model.events_total + 100, "kind": "state", "data": {"state": "starting"}})
    assert model.preparing == body


# ----------------------------------------------------------------------------- through the daemon
def _daemon_store_config(tmp_path, epochs: int) -> Path:
    from tests.run_configs import POWERCUT

    raw = changed(POWERCUT, **{"data.store": str(tmp_path / "store"), "data.store_dtype": "float32",
                               "data.prepare_workers": 1, "daemon.max_restarts": 1})
    raw["phases"] = [{"name": "a", "epochs": epochs}, {"name": "b", "epochs": epochs, "lr_mult": 0.5}]
    config = tmp_path / "powercut.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_power_cut_of_a_store_run_through_the_daemon_resumes_bit_identical(tmp_path, runtime_dir):
    from tests.daemon_helpers import wait_for
    from tests.longhaul_cli import assert_bit_identical, cli, cli_env, cut_power_and_resume, logged_steps, status

    env = cli_env(tmp_path / "runs", runtime_dir)
    config = _daemon_store_config(tmp_path, epochs=30)
    # the reference prepares its own copy of the store; the daemon's worker prepares the run's
    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet",
        "--set", f"data.store={tmp_path / 'reference-store'}")
    cli(env, "start", str(config))
    run_dir = tmp_path / "runs" / "powercut"
    rng = random.Random(8)
    for kill in range(2):
        before = logged_steps(run_dir)
        wait_for(lambda: logged_steps(run_dir) >= before + rng.randint(3, 12), 180, "training progress")
        time.sleep(rng.uniform(0.0, 0.3))
        cut_power_and_resume(env, "powercut", kill)
    wait_for(lambda: status(env, "powercut")["state"] == "finished", 300, "the run to finish")
    assert [e["data"]["status"] for e in _events(run_dir) if e["kind"] == "preparing"] == ["missing", "done"]
    assert_bit_identical(run_dir, tmp_path / "reference")


@pytest.mark.slow
def test_daemon_resume_on_a_changed_store_needs_the_flag(tmp_path, runtime_dir):
    from tests.daemon_helpers import wait_for
    from tests.longhaul_cli import cli, cli_env, logged_steps, status

    env = cli_env(tmp_path / "runs", runtime_dir)
    config = _daemon_store_config(tmp_path, epochs=60)   # long: it is stopped twice, never finishes
    cli(env, "start", str(config))
    run_dir = tmp_path / "runs" / "powercut"
    wait_for(lambda: logged_steps(run_dir) >= 20, 180, "training progress")
    cli(env, "stop", "powercut")
    wait_for(lambda: status(env, "powercut")["state"] == "stopped", 60, "state stopped")
    cli(env, "prepare", str(config), "--set", "data.synthetic.train_per_class=50")   # the store changes
    cli(env, "resume", "powercut")
    wait_for(lambda: status(env, "powercut")["state"] == "failed", 120, "the refused resume to fail")
    crashes = [e for e in _events(run_dir) if e["kind"] == "crash"]
    assert len(crashes) == 1 and "--accept-data-change" in crashes[0]["message"]   # no restart: it cannot help
    assert crashes[0]["data"]["user_error"]
    assert all("the feature store changed" in e["data"]["traceback"] and "144 -> 150 examples" in e["data"]["traceback"]
               for e in crashes)
    cli(env, "resume", "powercut", "--accept-data-change")
    changed_alerts = lambda: [e for e in _events(run_dir) if e["kind"] == "alert" and e["data"].get("what") == "data_changed"]
    wait_for(lambda: changed_alerts() and status(env, "powercut")["state"] == "running", 120, "the accepted resume")
    cli(env, "stop", "powercut")
    wait_for(lambda: status(env, "powercut")["state"] == "stopped", 60, "state stopped")
    alerts = changed_alerts()
    assert len(alerts) == 1 and "bit-exact resume is lost" in alerts[0]["message"]
    assert json.loads(RunDir(run_dir).data_store.read_text())["splits"]["train"]["items"] == 150


def test_audio_folder_with_variants_and_a_bad_file_trains_and_resumes_exactly(tmp_path):
    from tests.audio_folders import write_audio_folders

    bad = write_audio_folders(tmp_path / "audio", per_class=12)
    raw = changed(RAW, **{"data": {"source": "audio_folder", "root": str(tmp_path / "audio"), "sample_rate": 8000,
                                   "duration": 0.5, "skip_bad_files": True, "store": str(tmp_path / "store"),
                                   "store_dtype": "float32", "prepare_workers": 1,
                                   "variants": {"count": 2, "gain_db": 6.0}},
                          "phases": [{"name": "only", "epochs": 8}], "schedule": {"name": "cosine"}})
    cfg = run_config(raw)
    whole = Recorder()
    assert Trainer(cfg, rd(tmp_path, "whole"), whole).run() == "finished"
    assert [d["count"] for k, _, _, d in whole.events if k == "alert" and d.get("what") == "bad_data"] == [1]
    recorded = json.loads(RunDir(tmp_path / "whole").data_store.read_text())
    assert recorded["splits"]["train"] == {**recorded["splits"]["train"], "items": 24, "variants": 2}
    run = stopped_run(tmp_path, cfg, stop_at=3)
    assert Trainer(cfg, run).run() == "finished"
    assert losses(run) == losses(tmp_path / "whole")
    assert str(bad) not in build_datasets(cfg).train.names


def test_image_store_gives_the_in_ram_examples_with_the_new_augmentations(tmp_path):
    from PIL import Image

    from trainer.data.store.prepare import prepare

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "img" / split / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / label / f"{i}.png")
    cfg = run_config({"data": {"source": "image_folder", "root": str(tmp_path / "img"), "image_size": 16,
                               "store": str(tmp_path / "store"), "prepare_workers": 1},
                      "features": {"kind": "image"},
                      "augment": {"hflip": True, "vflip": True, "rotate_deg": 10, "brightness": 0.2, "contrast": 0.2}})
    prepare(cfg, workers=1)
    ram, disk = build_datasets(in_ram_cfg(cfg)), build_datasets(cfg)
    for i in range(len(ram.train)):
        assert disk.train.examples.raw(i).dtype == torch.uint8
        assert torch.equal(disk.train.examples.raw(i), ram.train.examples.raw(i))
        assert torch.equal(disk.train[(3, i)][0], ram.train[(3, i)][0])
