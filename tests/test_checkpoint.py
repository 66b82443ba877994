"""Checkpoint store: atomic writes, verification and fallback, retention, async saves, kill -9."""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import capture
from trainer.checkpoint import store as store_module
from trainer.checkpoint import CheckpointError, CheckpointStore, snapshot
from trainer.run import manifest as manifest_module

REPO = Path(__file__).resolve().parent.parent
Pair = collections.namedtuple("Pair", "first second")


def make_state(step: int) -> dict:
    """A state shaped like the engine's: model, optimizer, RNGs, plain data; values tied to step."""
    gen = torch.Generator().manual_seed(step)
    return {
        "model": {"conv.weight": torch.randn(8, 3, 3, 3, generator=gen), "fc.bias": torch.full((10,), float(step))},
        "optimizer": {"state": {0: {"exp_avg": torch.randn(8, 3, 3, 3, generator=gen), "step": torch.tensor(float(step))}},
                      "param_groups": [{"lr": 0.01, "params": [0]}]},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.RandomState(step).get_state(),
                "python": random.Random(step).getstate()},
        "step": step,
        "pair": Pair(step, "x"),
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert torch.equal(a["model"]["conv.weight"], b["model"]["conv.weight"])
    assert torch.equal(a["model"]["fc.bias"], b["model"]["fc.bias"])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert np.array_equal(a["rng"]["numpy"][1], b["rng"]["numpy"][1])
    assert a["rng"]["python"] == b["rng"]["python"]
    assert a["step"] == b["step"] and a["pair"] == b["pair"]


def step_dirs(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))


def leftovers(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith((".tmp-", ".old-")))


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    return tmp_path / "ckpt"


def open_store(ckpt_dir: Path, **kw) -> CheckpointStore:
    kw.setdefault("min_free_mb", 0)
    return CheckpointStore(ckpt_dir, **kw)


def save_steps(ckpt_dir: Path, steps, **kw) -> None:
    with open_store(ckpt_dir, **kw) as store:
        for step in steps:
            store.save(make_state(step), {"step": step})


# -- layout and roundtrip ----------------------------------------------------------------------


def test_roundtrip_layout_and_manifest(ckpt_dir):
    with open_store(ckpt_dir) as store:
        result = store.save(make_state(7), {"step": 7, "epoch": 1, "phase": 0, "metric": 0.5,
                                             "mode": "max", "phase_end": False, "history_offset": 123})
        assert result.ok and result.step == 7 and result.path == ckpt_dir / "step-0000000007"
        state, meta = store.load_latest()
    assert_same_state(state, make_state(7))
    assert meta["step"] == 7 and meta["history_offset"] == 123 and isinstance(meta["time"], float)
    assert sorted(p.name for p in result.path.iterdir()) == ["MANIFEST.json", "meta.json", "state.pt"]
    manifest = json.loads((result.path / "MANIFEST.json").read_text())
    assert manifest["format"] == store_module.FORMAT_VERSION and manifest["step"] == 7
    assert set(manifest["files"]) == {"state.pt", "meta.json"}
    for name, entry in manifest["files"].items():
        assert entry["size"] == (result.path / name).stat().st_size
        assert entry["sha256"] == manifest_module.sha256_of(result.path / name)
    assert result.bytes == sum(p.stat().st_size for p in result.path.iterdir())


def test_empty_store_loads_none(ckpt_dir):
    with open_store(ckpt_dir) as store:
        assert store.load_latest() is None
        assert store.list_valid() == []


def test_meta_is_checked_before_writing(ckpt_dir):
    with open_store(ckpt_dir) as store:
        with pytest.raises(CheckpointError, match=r"meta\['step'\] must be an int"):
            store.save(make_state(1), {"epoch": 1})
        with pytest.raises(CheckpointError, match="not JSON-serializable"):
            store.save(make_state(1), {"step": 1, "lr": torch.tensor(1.0)})
        with pytest.raises(CheckpointError, match=r"meta\['metric'\] must be a number"):
            store.save(make_state(1), {"step": 1, "metric": "0.5"})
        with pytest.raises(CheckpointError, match=r"meta\['mode'\] must be 'max' or 'min'"):
            store.save(make_state(1), {"step": 1, "metric": 0.5, "mode": "MIN"})
    assert step_dirs(ckpt_dir) == [] and leftovers(ckpt_dir) == []


def test_write_protocol_fsync_order(ckpt_dir, monkeypatch):
    """Files, then the manifest, then the temp dir are fsync'ed before the rename; then the parent."""
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(b))), real_rename(a, b)))
    with open_store(ckpt_dir) as store:
        events.clear()
        store.save(make_state(1), {"step": 1})
    names = [(kind, Path(p).name if kind == "fsync" else p) for kind, p in events]
    kinds_files = [n for _, n in names[:3]]
    assert sorted(kinds_files[:2]) == ["meta.json", "state.pt"] and kinds_files[2] == "MANIFEST.json"
    assert names[3][0] == "fsync" and names[3][1].startswith(".tmp-step-0000000001-")
    assert names[4] == ("rename", str(ckpt_dir / "step-0000000001"))
    assert names[5] == ("fsync", "ckpt")


# -- verification and fallback -----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no_manifest", "bad_manifest", "missing_file"])
def test_damaged_newest_is_rejected_and_previous_loaded(ckpt_dir, damage, caplog):
    save_steps(ckpt_dir, [1, 2])
    newest = ckpt_dir / "step-0000000002"
    state_pt = newest / "state.pt"
    if damage == "truncate":
        os.truncate(state_pt, state_pt.stat().st_size // 2)
    elif damage == "bitflip":
        data = bytearray(state_pt.read_bytes())
        data[len(data) // 2] ^= 0x01
        state_pt.write_bytes(bytes(data))
    elif damage == "no_manifest":  # killed before the manifest was written
        (newest / "MANIFEST.json").unlink()
    elif damage == "bad_manifest":
        (newest / "MANIFEST.json").write_text('{"format": 1, "step": 2, "fi')
    else:
        (newest / "meta.json").unlink()
    caplog.set_level(logging.WARNING, logger="trainer.checkpoint")
    with open_store(ckpt_dir) as store:
        state, meta = store.load_latest()
        assert meta["step"] == 1
        assert_same_state(state, make_state(1))
        assert [path for path, _ in store.rejected] == [newest]
        reason = store.rejected[0][1]
        expected = {"truncate": "state.pt has", "bitflip": "state.pt sha256", "no_manifest": "no MANIFEST.json",
                    "bad_manifest": "not valid JSON", "missing_file": "meta.json is missing"}[damage]
        assert expected in reason
        assert str(newest) in caplog.text
        assert [info.step for info in store.list_valid()] == [1]


def test_manifest_for_another_step_is_rejected(ckpt_dir):
    save_steps(ckpt_dir, [1, 2])
    os.rename(ckpt_dir / "step-0000000002", ckpt_dir / "step-0000000003")
    with open_store(ckpt_dir) as store:
        assert store.load_latest()[1]["step"] == 1
        assert "is for step 2, not 3" in store.rejected[0][1]


def test_all_damaged_gives_none(ckpt_dir):
    save_steps(ckpt_dir, [1])
    (ckpt_dir / "step-0000000001" / "MANIFEST.json").unlink()
    with open_store(ckpt_dir) as store:
        assert store.load_latest() is None
        assert len(store.rejected) == 1


def test_verified_but_unloadable_raises_instead_of_falling_back(ckpt_dir):
    save_steps(ckpt_dir, [1, 2])
    with open_store(ckpt_dir) as store:
        # numpy RNG state is refused by torch's weights_only unpickler
        with pytest.raises(CheckpointError, match="step-0000000002 verified but could not be loaded"):
            store.load_latest(weights_only=True)


# -- crashes in the middle of a write ----------------------------------------------------------


def test_unfinished_temp_dirs_are_cleaned_and_ignored(ckpt_dir):
    save_steps(ckpt_dir, [1])
    tmp = ckpt_dir / ".tmp-step-0000000002-deadbeef"  # a write killed half-way
    tmp.mkdir()
    (tmp / "state.pt").write_bytes(b"PK\x03\x04 partial")
    deleting = ckpt_dir / ".tmp-del-step-0000000000-cafe0000"  # a removal killed half-way
    deleting.mkdir()
    with open_store(ckpt_dir) as store:
        assert leftovers(ckpt_dir) == []
        assert store.load_latest()[1]["step"] == 1 and store.rejected == []


def test_replacement_interrupted_between_renames_restores_old(ckpt_dir):
    save_steps(ckpt_dir, [1, 2])
    # crash after step-2 was moved aside and before the new step-2 was renamed into place
    os.rename(ckpt_dir / "step-0000000002", ckpt_dir / ".old-step-0000000002")
    (ckpt_dir / ".tmp-step-0000000002-0badf00d").mkdir()
    with open_store(ckpt_dir) as store:
        assert leftovers(ckpt_dir) == []
        state, meta = store.load_latest()
        assert meta["step"] == 2
        assert_same_state(state, make_state(2))


def test_replacement_interrupted_after_new_one_landed_drops_old(ckpt_dir):
    save_steps(ckpt_dir, [1, 2])
    old = ckpt_dir / ".old-step-0000000002"
    os.rename(ckpt_dir / "step-0000000001", old)  # any stale content will do
    with open_store(ckpt_dir) as store:
        assert leftovers(ckpt_dir) == []
        assert [info.step for info in store.list_valid()] == [2]


def test_saving_an_existing_step_again_replaces_it(ckpt_dir):
    with open_store(ckpt_dir) as store:
        store.save(make_state(5), {"step": 5, "note": "first"})
        store.save(make_state(6), {"step": 5, "note": "second"})
        state, meta = store.load_latest()
    assert meta["note"] == "second" and state["step"] == 6
    assert step_dirs(ckpt_dir) == ["step-0000000005"] and leftovers(ckpt_dir) == []


def test_failed_replacement_keeps_the_previous_checkpoint(ckpt_dir, monkeypatch):
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".tmp-step-"):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    with open_store(ckpt_dir) as store:
        store.save(make_state(5), {"step": 5, "note": "first"})
        monkeypatch.setattr(os, "rename", failing_rename)
        with pytest.raises(CheckpointError, match="step 5 .*Input/output error"):
            store.save(make_state(6), {"step": 5, "note": "second"})
        monkeypatch.setattr(os, "rename", real_rename)
        assert store.load_latest()[1]["note"] == "first"
    assert step_dirs(ckpt_dir) == ["step-0000000005"] and leftovers(ckpt_dir) == []


# -- retention ---------------------------------------------------------------------------------


def test_retention_keeps_last_best_and_phase_ends(ckpt_dir):
    metrics = {1: 0.1, 2: 0.2, 3: 0.9, 4: 0.3, 5: 0.3, 6: 0.4, 7: 0.5, 8: 0.6, 9: 0.7, 10: 0.8}
    phase_ends = {2: 0, 4: 0, 7: 1}  # step -> phase; step 2 is superseded by step 4 in phase 0
    with open_store(ckpt_dir, keep_last=2) as store:
        for step in range(1, 11):
            meta = {"step": step, "metric": metrics[step], "mode": "max",
                    "phase": phase_ends.get(step, 2), "phase_end": step in phase_ends}
            store.save(make_state(step), meta)
    # last 2 (9, 10) + best (3) + last phase end of phase 0 (4) and of phase 1 (7)
    assert step_dirs(ckpt_dir) == [f"step-{s:010d}" for s in (3, 4, 7, 9, 10)]
    assert leftovers(ckpt_dir) == []


def test_retention_best_with_min_mode_and_switches(ckpt_dir):
    with open_store(ckpt_dir, keep_last=1, keep_phase_ends=False) as store:
        for step, loss in [(1, 0.9), (2, 0.2), (3, 0.2), (4, 0.5)]:  # tie: the earlier one is best
            store.save(make_state(step), {"step": step, "metric": loss, "mode": "min", "phase_end": True})
    assert step_dirs(ckpt_dir) == ["step-0000000002", "step-0000000004"]
    with open_store(ckpt_dir, keep_last=1, keep_best=False, keep_phase_ends=False) as store:
        store.save(make_state(5), {"step": 5, "metric": float("nan"), "mode": "min"})
    assert step_dirs(ckpt_dir) == ["step-0000000005"]


def test_retention_removes_invalid_older_and_keeps_invalid_newer(ckpt_dir):
    save_steps(ckpt_dir, [1, 2], keep_last=5)
    (ckpt_dir / "step-0000000001" / "MANIFEST.json").unlink()
    broken_newer = ckpt_dir / "step-0000000009"
    broken_newer.mkdir()
    (broken_newer / "state.pt").write_bytes(b"partial")
    save_steps(ckpt_dir, [3], keep_last=1)
    # 1 (invalid, older) and 2 (valid, beyond keep_last) are gone; 9 is newer than any valid one
    assert step_dirs(ckpt_dir) == ["step-0000000003", "step-0000000009"]
    save_steps(ckpt_dir, [10], keep_last=1)
    assert step_dirs(ckpt_dir) == ["step-0000000010"]


def test_retention_removes_nothing_when_a_checkpoint_cannot_be_read(ckpt_dir, monkeypatch, caplog):
    save_steps(ckpt_dir, [1, 2], keep_last=5)
    real = manifest_module.sha256_of

    def unreadable(path):
        if path.parent.name == "step-0000000001":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(manifest_module, "sha256_of", unreadable)
    caplog.set_level(logging.WARNING, logger="trainer.checkpoint")
    save_steps(ckpt_dir, [3], keep_last=1)  # a fresh store has to hash step 1 again
    assert step_dirs(ckpt_dir) == [f"step-{s:010d}" for s in (1, 2, 3)]
    assert "retention skipped" in caplog.text


# -- refusing and failing writes ---------------------------------------------------------------


def test_disk_full_refusal_keeps_earlier_checkpoints(ckpt_dir, monkeypatch):
    save_steps(ckpt_dir, [1])
    usage = store_module.shutil.disk_usage(ckpt_dir)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda p: usage._replace(free=600 * 2**20))
    with open_store(ckpt_dir, min_free_mb=600) as store:
        with pytest.raises(CheckpointError, match=r"not enough disk space .* step 2 .*min_free_mb=600"):
            store.save(make_state(2), {"step": 2})
        assert step_dirs(ckpt_dir) == ["step-0000000001"] and leftovers(ckpt_dir) == []
        assert store.load_latest()[1]["step"] == 1


def test_failure_during_write_cleans_up(ckpt_dir, monkeypatch):
    save_steps(ckpt_dir, [1])

    def no_space(obj, f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.torch, "save", no_space)
    results = []
    with open_store(ckpt_dir, on_done=results.append) as store:
        with pytest.raises(CheckpointError, match="step 2 .*No space left"):
            store.save(make_state(2), {"step": 2})
    assert step_dirs(ckpt_dir) == ["step-0000000001"] and leftovers(ckpt_dir) == []
    assert len(results) == 1 and not results[0].ok and results[0].step == 2


# -- async saves and snapshots -----------------------------------------------------------------


def test_save_async_reports_through_on_done(ckpt_dir):
    results = []
    with open_store(ckpt_dir, on_done=results.append) as store:
        store.save_async(make_state(3), {"step": 3})
        store.wait()
        assert [r.step for r in results] == [3]
        r = results[0]
        assert r.ok and r.path == ckpt_dir / "step-0000000003" and r.write_s > 0
        assert r.bytes == sum(p.stat().st_size for p in r.path.iterdir())
        assert_same_state(store.load_latest()[0], make_state(3))


def test_save_async_waits_for_the_write_in_flight(ckpt_dir, monkeypatch):
    real_save = torch.save
    writing = threading.Event()

    def slow_save(obj, f):
        writing.set()
        time.sleep(0.3)
        real_save(obj, f)

    monkeypatch.setattr(store_module.torch, "save", slow_save)
    results = []
    with open_store(ckpt_dir, on_done=results.append) as store:
        store.save_async(make_state(1), {"step": 1})
        writing.wait(5)
        store.save_async(make_state(2), {"step": 2})
        store.wait()
    assert [r.step for r in results] == [1, 2]
    assert results[0].waited_s == 0.0 and results[1].waited_s > 0.1


def test_background_failure_surfaces_in_wait(ckpt_dir):
    results = []
    with open_store(ckpt_dir, on_done=results.append) as store:
        state = make_state(4)
        state["unpicklable"] = lambda: None
        store.save_async(state, {"step": 4})
        with pytest.raises(CheckpointError, match="step 4"):
            store.wait()
        store.wait()  # reported once
        assert len(results) == 1 and isinstance(results[0].error, CheckpointError)
        assert step_dirs(ckpt_dir) == [] and leftovers(ckpt_dir) == []


def test_snapshot_is_independent_of_later_changes():
    weight = torch.nn.Parameter(torch.ones(4))
    state = {"model": {"w": weight, "tied": weight}, "opt": {"lr": [0.1]}, "pair": Pair(torch.zeros(2), 1)}
    snap = snapshot(state)
    with torch.no_grad():
        weight.add_(5)
    state["pair"].first.fill_(7)
    state["opt"]["lr"].append(0.2)
    assert torch.equal(snap["model"]["w"], torch.ones(4))
    assert snap["model"]["w"] is snap["model"]["tied"]  # tied weights stay tied
    assert not snap["model"]["w"].requires_grad
    assert torch.equal(snap["pair"].first, torch.zeros(2)) and isinstance(snap["pair"], Pair)
    assert snap["opt"]["lr"] == [0.1]


def test_snapshot_keeps_dtype_strides_and_values():
    state = {
        "nhwc": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "transposed": torch.arange(12).reshape(3, 4).t(),
        "bf16": torch.randn(3).to(torch.bfloat16),  # numpy has no bfloat16: cloned by torch
        "scalar": torch.tensor(3.0),
        "flags": torch.tensor([True, False]),
    }
    snap = snapshot(state)
    for name, original in state.items():
        copy = snap[name]
        assert copy.dtype == original.dtype and copy.shape == original.shape, name
        assert copy.stride() == original.stride(), name
        assert torch.equal(copy, original), name
        assert copy.untyped_storage().data_ptr() != original.untyped_storage().data_ptr(), name


# -- locking -----------------------------------------------------------------------------------


HOLDER = """
import sys, time
from pathlib import Path
from trainer.checkpoint import CheckpointStore
store = CheckpointStore(Path(sys.argv[1]), min_free_mb=0)
print("ready", flush=True)
time.sleep(120)
"""


def test_another_process_writing_is_refused_and_readonly_can_read(ckpt_dir):
    save_steps(ckpt_dir, [1])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ckpt_dir)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CheckpointError, match=f"in use by another process \\(pid {holder.pid};"):
            open_store(ckpt_dir, lock_timeout=0.3)
        reader = open_store(ckpt_dir, readonly=True)
        assert reader.load_latest()[1]["step"] == 1
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save(make_state(2), {"step": 2})
    finally:
        holder.kill()
        holder.communicate()
    with open_store(ckpt_dir, lock_timeout=5) as store:  # the kernel dropped the dead holder's lock
        store.save(make_state(2), {"step": 2})


def test_same_process_can_open_again_without_closing(ckpt_dir):
    first = open_store(ckpt_dir)
    first.save(make_state(1), {"step": 1})
    with open_store(ckpt_dir, lock_timeout=0) as second:  # e.g. a new Trainer in the same process
        assert second.load_latest()[1]["step"] == 1
    first.close()


# -- real kill -9 ------------------------------------------------------------------------------

SAVER = """
import sys, torch
from pathlib import Path
from trainer.checkpoint import CheckpointStore
store = CheckpointStore(Path(sys.argv[1]), keep_last=2, min_free_mb=0)
latest = store.load_latest()
step = latest[1]["step"] if latest else 0   # the first save rewrites the loaded step
print("ready", flush=True)
while True:
    state = {"w": torch.full((512, 1024), float(step)), "step": step}
    store.save_async(state, {"step": step, "metric": float(step % 7), "mode": "max"}, stable=[state["w"]])
    step += 1
"""


def test_sigkill_at_random_moments_leaves_a_loadable_store(ckpt_dir):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    last_step = -1
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(ckpt_dir)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            deadline = time.monotonic() + 30
            while not step_dirs(ckpt_dir) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        context = f"seed {seed}, attempt {attempt}, files {sorted(os.listdir(ckpt_dir))}"
        with open_store(ckpt_dir, keep_last=2, lock_timeout=5) as store:
            assert leftovers(ckpt_dir) == [], context
            loaded = store.load_latest()
            assert loaded is not None and store.rejected == [], context
            state, meta = loaded
            assert state["step"] == meta["step"] >= last_step, context
            assert torch.equal(state["w"], torch.full((512, 1024), float(meta["step"]))), context
            assert [info.path.name for info in store.list_valid()] == step_dirs(ckpt_dir), context
            last_step = meta["step"]


def test_next_snapshot_reuses_the_written_buffers_and_copies_the_new_values(ckpt_dir):
    written = []
    state = {"w": torch.arange(12.0).reshape(3, 4), "opt": [torch.ones(5), {"n": 3}], "step": 1}
    with open_store(ckpt_dir, keep_last=5) as store:
        def save(step):
            store.save_async(state, {"step": step}, after_commit=lambda snap, result: written.append(snap))

        save(1)
        store.wait()
        state["w"].add_(100.0)
        state["opt"][0].mul_(7.0)
        save(2)
        state["w"].zero_()   # the copy is independent of later training
        store.wait()
        assert written[1]["w"].data_ptr() == written[0]["w"].data_ptr(), "buffer of the written snapshot not reused"
        loaded, meta = store.load_latest()
        assert meta["step"] == 2 and loaded["w"][0, 1] == 101.0 and loaded["opt"][0][0] == 7.0
        # a changed shape gets fresh memory instead of a wrong buffer
        state["w"] = torch.zeros(2, 2)
        save(3)
        store.wait()
        assert written[2]["w"].shape == (2, 2) and written[2]["w"].data_ptr() != written[1]["w"].data_ptr()


def test_stable_tensors_are_copied_by_the_writer_and_fence_waits_for_that(ckpt_dir, monkeypatch):
    gate, deferred = threading.Event(), []
    real_run = capture._DeferredCopies.run

    def gated_run(self):
        deferred.append(len(self.pairs))
        gate.wait(10)
        real_run(self)

    monkeypatch.setattr(capture._DeferredCopies, "run", gated_run)
    weight = torch.nn.Parameter(torch.ones(1000))
    running_mean = torch.zeros(3)
    exp_avg = torch.full((1000,), 2.0)
    state = {"model": {"w": weight.detach(), "running_mean": running_mean}, "opt": {"exp_avg": exp_avg}}
    with open_store(ckpt_dir) as store:
        store.save_async(state, {"step": 1}, stable=[weight, exp_avg])
        running_mean.add_(1.0)  # not stable: copied before save_async returned
        waited = []
        fence = threading.Thread(target=lambda: waited.append(store.fence()))
        fence.start()
        fence.join(0.3)
        assert fence.is_alive(), "fence opened before the writer copied the stable tensors"
        gate.set()
        fence.join(10)
        assert waited[0] > 0.2 and deferred == [2]  # the weight and exp_avg, not the buffer
        with torch.no_grad():
            weight.add_(5.0)  # past the fence: the optimizer may change them
        exp_avg.zero_()
        store.wait()
        assert store.fence() == 0.0  # nothing in flight
        loaded, _ = store.load_latest()
    assert torch.equal(loaded["model"]["w"], torch.ones(1000))
    assert torch.equal(loaded["model"]["running_mean"], torch.zeros(3))
    assert torch.equal(loaded["opt"]["exp_avg"], torch.full((1000,), 2.0))


def test_hooks_run_around_the_commit(ckpt_dir):
    seen = []
    with open_store(ckpt_dir) as store:
        def before():
            seen.append(("before", step_dirs(ckpt_dir)))

        def after(snap, result):
            seen.append(("after", step_dirs(ckpt_dir), snap["step"], result.step))

        store.save_async({"step": 4, "t": torch.ones(2)}, {"step": 4}, before_commit=before, after_commit=after)
        store.wait()
    assert seen == [("before", []), ("after", ["step-0000000004"], 4, 4)]


def test_failing_before_commit_fails_the_checkpoint_and_leaves_nothing(ckpt_dir):
    results = []

    def history_not_durable():
        raise OSError(5, "Input/output error")

    with open_store(ckpt_dir, on_done=results.append) as store:
        store.save_async({"t": torch.ones(2)}, {"step": 1}, before_commit=history_not_durable)
        with pytest.raises(CheckpointError, match="step 1 .*Input/output error"):
            store.wait()
    assert step_dirs(ckpt_dir) == [] and leftovers(ckpt_dir) == [] and not results[0].ok


def test_writer_thread_lowers_its_priority_after_copying(ckpt_dir, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice values are a Linux feature")
    nice = []
    real_write = store_module._write_file

    def spy(path, write):
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real_write(path, write)

    monkeypatch.setattr(store_module, "_write_file", spy)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with open_store(ckpt_dir, writer_nice=5) as store:
        store.save_async({"t": torch.ones(2)}, {"step": 1})
        store.wait()
    assert nice and set(nice) == {min(19, base + 5)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched
