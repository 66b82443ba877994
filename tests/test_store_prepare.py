"""`longhaul prepare`: the store built by spawned workers, reused shard by shard, crash-safe, one
writer at a time, bad files recorded with their reason, clear errors for a store it cannot write.

Each prepare that computes spawns its workers (a torch import each): the tests use one worker and
a few dozen half-second clips, and make shards small (layout.SHARD_TARGET) to have several."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.run_configs import run_config
from tests.tmpfs import mount_or_skip
from trainer.config import dump_config
from trainer.data.store import FeatureStore, StoreError, StorePaths, layout
from trainer.data.store.prepare import prepare, prepare_lock, store_status

ROOT = Path(__file__).resolve().parent.parent
RATE = 8000


def write_clips(root: Path, per_class: int, classes=("bird", "insect")) -> None:
    for split in ("train", "val"):
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = zlib.crc32(f"{split}/{label}/{i}".encode())
                sf.write(folder / f"{i:03d}.wav", np.random.default_rng(seed).normal(size=4000) * 0.1, RATE)


def config(tmp_path: Path, store: Path | None = None, **changes):
    raw = {"name": "prep", "threads": 1, "seed": 3,
           "data": {"source": "audio_folder", "root": str(tmp_path / "data"),
                    "store": str(store or tmp_path / "store"), "sample_rate": RATE, "duration": 0.5},
           "features": {"kind": "mel", "n_fft": 256, "hop_length": 128, "n_mels": 32},
           "model": {"name": "resnet18"}}
    return run_config(raw, **changes)


def ends_after_odd(path: str, target: int = 0) -> bool:
    return Path(path.split("#")[0]).stem[-1:] in "13579"


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of two clips (a shard ends after each odd-numbered file), so that a few dozen files
    make many shards. Planning runs in the main process: workers are handed their shards."""
    monkeypatch.setattr(layout, "_ends_shard", ends_after_odd)


def shard_files(store: Path) -> set[str]:
    return {p.name for p in (store / "shards").glob("*.npy")}


def test_prepare_then_again_does_nothing(tmp_path, small_shards):
    write_clips(tmp_path / "data", 6)
    cfg = config(tmp_path)
    assert store_status(cfg)[0] == "missing"
    seen = []
    first = prepare(cfg, workers=1, progress=lambda done, total: seen.append((done, total)))
    assert not first.up_to_date and first.computed_shards >= 3 and first.reused_shards == 0
    assert first.items == 24 and first.bad == [] and first.bytes > 0
    assert seen[0] == (0, 24) and seen[-1] == (24, 24)
    manifest = (tmp_path / "store" / "manifest.json").stat().st_mtime_ns
    assert store_status(cfg) == ("current", f"24 examples in {tmp_path / 'store'}")

    again = prepare(cfg, workers=1, progress=lambda *a: pytest.fail("nothing to compute"))
    assert again.up_to_date and again.computed_shards == 0 and again.fingerprint == first.fingerprint
    assert (tmp_path / "store" / "manifest.json").stat().st_mtime_ns == manifest
    assert again.describe().startswith("store up to date: 24 examples")

    # What is stored is the run's raw features (log-mel), frame-major rows, float16.
    from trainer.data.decode import Decoder
    from trainer.data.features import FeatureExtractor

    split = FeatureStore.open(tmp_path / "store").split("train")
    name = split.names()[5]
    expected = FeatureExtractor(cfg).raw(Decoder.from_config(cfg).read_audio(Path(name)).base).numpy()
    assert split.raw(5).dtype == np.float16 and split.raw(5).shape == expected.shape
    np.testing.assert_allclose(split.raw(5).astype(np.float32), expected, atol=0.07, rtol=2e-3)
    assert split.labels[5] == (0 if "/bird/" in name else 1)


def test_one_changed_file_recomputes_one_shard(tmp_path, small_shards):
    write_clips(tmp_path / "data", 8)
    cfg = config(tmp_path)
    first = prepare(cfg, workers=1)
    before = shard_files(tmp_path / "store")
    sf.write(tmp_path / "data" / "train" / "bird" / "003.wav", np.zeros(2000), RATE)
    state, reason = store_status(cfg)
    assert state == "stale" and reason.startswith("train: 1 of ")

    seen = []
    second = prepare(cfg, workers=1, progress=lambda done, total: seen.append((done, total)))
    assert second.computed_shards == 1 and second.reused_shards == first.computed_shards - 1
    assert seen[0] == (30, 32) and seen[-1] == (32, 32)  # the reused shards' items count as done
    assert second.fingerprint != first.fingerprint
    after = shard_files(tmp_path / "store")
    assert len(after - before) == 1 and len(before - after) == 1  # the old one is gone
    assert not any(StorePaths.is_temp(p) for p in (tmp_path / "store").rglob("*"))


def test_labels_changed_in_a_list_file_make_the_store_stale(tmp_path):
    write_clips(tmp_path / "data", 3)
    lists = {}
    for split in ("train", "val"):
        lists[split] = [f"{p},{p.parent.name}" for p in sorted((tmp_path / "data" / split).rglob("*.wav"))]
        (tmp_path / f"{split}.csv").write_text("\n".join(lists[split]) + "\n")
    cfg = config(tmp_path, **{"data.source": "csv", "data.train": str(tmp_path / "train.csv"),
                              "data.val": str(tmp_path / "val.csv"), "data.root": None})
    prepare(cfg, workers=1)
    assert store_status(cfg)[0] == "current"
    lists["train"][0] = lists["train"][0].replace(",bird", ",insect")
    (tmp_path / "train.csv").write_text("\n".join(lists["train"]) + "\n")
    assert store_status(cfg) == ("stale", "train: labels changed")
    assert prepare(cfg, workers=1).computed_shards == 0  # the same rows under other labels


def test_bad_files_are_recorded_with_their_reason(tmp_path, capsys):
    from trainer import cli
    from trainer.data.index import DataIndex

    write_clips(tmp_path / "data", 3)
    bird = tmp_path / "data" / "train" / "bird"
    (bird / "empty.wav").write_bytes(b"")
    (bird / "notes.wav").write_text("these are my field notes, not audio\n" * 20)
    whole = (bird / "000.wav").read_bytes()
    (bird / "cut.wav").write_bytes(whole[:30])
    path = tmp_path / "prep.yaml"
    path.write_text(dump_config(config(tmp_path)))

    assert cli.main(["prepare", str(path), "--workers", "1"]) == 1  # bad files, skip_bad_files off
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(tmp_path / "store")
    assert any("empty.wav" in line for line in out) and "Result: FAILED: 3 bad item(s)" in "\n".join(out)
    assert (tmp_path / "store" / "manifest.json").exists()  # written for the good files all the same
    with DataIndex(tmp_path / "store" / "index.sqlite") as index:
        bad = {Path(r.path).name: r.problem for r in index.records() if r.status == "bad"}
        assert len([r for r in index.records() if r.ok]) == 12
    assert set(bad) == {"empty.wav", "notes.wav", "cut.wav"}
    assert all(reason.startswith("cannot decode audio") for reason in bad.values()), bad
    assert FeatureStore.open(tmp_path / "store").split("train").names() == [
        str(p) for p in sorted(bird.glob("0*.wav")) + sorted((bird.parent / "insect").glob("*.wav"))]

    assert cli.main(["prepare", str(path), "--set", "data.skip_bad_files=true"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("store up to date: 12 examples") and out[-1] == str(tmp_path / "store")

    (bird / "notes.wav").unlink()  # gone from the data: gone from the index
    prepare(config(tmp_path), workers=1)
    with DataIndex(tmp_path / "store" / "index.sqlite") as index:
        assert {Path(r.path).name for r in index.records() if r.status == "bad"} == {"empty.wav", "cut.wav"}


def test_a_file_name_with_a_line_break_is_a_bad_file_found_before_any_work(tmp_path):
    """The names file holds one name a line: such a file is left out of the plan as a skippable
    bad file (not a StoreError after every shard is computed)."""
    from trainer.data.store.plan import LINE_BREAK, make_plan

    write_clips(tmp_path / "data", 2)
    cfg = config(tmp_path, **{"data.skip_bad_files": True})
    first = prepare(cfg, workers=1)
    odd = tmp_path / "data" / "train" / "bird" / "two\nlines.wav"
    odd.write_bytes((tmp_path / "data" / "train" / "bird" / "000.wav").read_bytes())
    plan = make_plan(cfg)
    assert plan.left_out["train"] and plan.left_out["train"][0].path == str(odd)
    assert all(str(odd) != key.path for task in plan.shards["train"] for key in task.keys)
    assert store_status(cfg)[0] == "stale"  # the manifest must list it with the bad files
    again = prepare(cfg, workers=1)
    assert again.computed_shards == 0 and again.items == first.items == 8
    assert again.bad == [(str(odd), LINE_BREAK)] and again.report.usable
    assert store_status(cfg)[0] == "current" and prepare(cfg).up_to_date
    assert not prepare(config(tmp_path), workers=1).report.usable  # data.skip_bad_files off: refused


def test_a_second_prepare_waits_or_refuses(tmp_path, capsys):
    from trainer import cli

    write_clips(tmp_path / "data", 2)
    cfg = config(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "prep.yaml").write_text(dump_config(cfg))
    paths = StorePaths(tmp_path / "store")
    results = []
    with prepare_lock(paths, wait=False):
        with pytest.raises(StoreError, match=rf"another prepare \(pid {os.getpid()}\) is writing this store"):
            prepare(cfg, workers=1, wait=False)
        assert cli.main(["prepare", str(tmp_path / "prep.yaml"), "--no-wait"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"longhaul prepare: {tmp_path / 'store'}: another prepare (pid {os.getpid()})")
        waiter = threading.Thread(target=lambda: results.append(prepare(cfg, workers=1)))
        waiter.start()
        deadline = time.monotonic() + 30
        while "waiting for another prepare" not in capsys.readouterr().err:
            assert time.monotonic() < deadline and not results
            time.sleep(0.05)
        assert not (tmp_path / "store" / "manifest.json").exists()
    waiter.join(120)
    assert results and results[0].items == 8


def test_waiting_for_the_lock_reports_and_a_stop_ends_the_wait(tmp_path, capsys):
    """A run that waits for another prepare's lock sends `preparing` frames and honours a stop
    (store_setup.PreparingReport raises PrepareStopped) instead of blocking in flock for hours."""
    from trainer.store_setup import PreparingReport, PrepareStopped

    paths = StorePaths(tmp_path / "store")
    paths.make_dirs()
    frames: list[dict] = []
    report = PreparingReport(frames.append, str(paths.root), stop=lambda: len(frames) >= 3)
    with prepare_lock(paths, wait=False):
        started = time.monotonic()
        with pytest.raises(PrepareStopped):
            with prepare_lock(paths, wait=True, progress=report):
                pytest.fail("took a lock another prepare holds")
        assert 0.9 < time.monotonic() - started < 10
        assert [(f["done"], f["total"], f["finished"]) for f in frames] == [(0, 0, False)] * 3
        assert capsys.readouterr().err.count(f"waiting for another prepare of {paths.root} (pid {os.getpid()})") == 1
    with prepare_lock(paths, wait=True, progress=report):  # free again: taken at once, no report
        assert len(frames) == 3


def test_a_store_it_cannot_write_is_named(tmp_path):
    write_clips(tmp_path / "data", 1)
    with pytest.raises(StoreError, match=f"{tmp_path / 'nowhere'} does not exist"):
        prepare(config(tmp_path, store=tmp_path / "nowhere" / "store"))
    fs = mount_or_skip(1)
    try:
        cfg = config(tmp_path, store=fs.path / "store")
        prepared = prepare(cfg, workers=1)
        subprocess.run(["mount", "-o", "remount,ro", str(fs.path)], check=True, capture_output=True)
        again = prepare(cfg)  # a current store on a read-only disk is fine
        assert again.up_to_date and again.fingerprint == prepared.fingerprint
        sf.write(tmp_path / "data" / "train" / "bird" / "new.wav", np.zeros(100), RATE)
        with pytest.raises(StoreError, match=f"{fs.path / 'store'}.*(Read-only file system|not writable)"):
            prepare(cfg)
    finally:
        fs.unmount()


def test_full_disk_keeps_finished_shards_and_no_manifest(tmp_path, small_shards):
    write_clips(tmp_path / "data", 12)
    fs = mount_or_skip(4)
    try:
        store = fs.path / "store"
        cfg = config(tmp_path, store=store, **{"data.store_dtype": "float32"})
        StorePaths(store).make_dirs()
        fs.fill(leave_kb=140)  # a shard is ~4 items x 33 frames x 32 mels x 4 bytes = 17 KiB
        with pytest.raises(StoreError, match=r"disk is full.*MiB free on the store's disk") as caught:
            prepare(cfg, workers=1)
        assert isinstance(caught.value, layout.StoreDiskFull) and caught.value.retry_may_help
        assert not (store / "manifest.json").exists()
        leftovers = [p for p in store.rglob("*") if StorePaths.is_temp(p)]
        assert leftovers == []
        finished = shard_files(store)
        assert finished and all(layout.read_shard_outcomes(StorePaths(store), n[:-4]) for n in finished)
        (fs.path / ".filler").unlink()
        result = prepare(cfg, workers=1)
        assert result.reused_shards == len(finished) and result.computed_shards > 0
    finally:
        fs.unmount()


def test_a_worker_killed_names_its_shard(tmp_path, small_shards):
    write_clips(tmp_path / "data", 8)
    cfg = config(tmp_path)

    killed = []

    def kill_worker(done, total):
        if done >= 6 and not killed:
            killed.append(multiprocessing.active_children()[0].pid)
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(StoreError, match=r"worker \(pid \d+\) was killed by SIGKILL while computing shard \w+") as caught:
        prepare(cfg, workers=1, progress=kill_worker)
    assert caught.value.retry_may_help  # a daemon restarts the run (the OOM killer may not strike twice)
    finished = shard_files(tmp_path / "store")
    assert finished and not (tmp_path / "store" / "manifest.json").exists()
    assert prepare(cfg, workers=1).reused_shards >= len(finished)


def test_a_dead_worker_or_a_full_disk_is_a_crash_a_restart_may_fix(tmp_path):
    """trainer/worker.py exits USER_ERROR_EXIT (failed, no restart) only for errors that a restart
    cannot fix; a prepare worker killed or a full disk is restarted like any crash."""
    import errno

    from trainer import worker
    from trainer.data.report import DataError
    from trainer.data.store.pool import WorkerDied

    assert not worker.is_user_error(WorkerDied("a prepare worker (pid 7) was killed by SIGKILL"))
    with pytest.raises(layout.StoreDiskFull) as caught:
        layout.durable_write(tmp_path / "manifest.json", lambda fh: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert not worker.is_user_error(caught.value)
    assert worker.is_user_error(StoreError("manifest.json missing")) and worker.is_user_error(DataError("changed"))
    assert not worker.is_user_error(RuntimeError("a bug"))


def test_workers_count_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    from trainer.data.store.prepare import worker_count

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a 2-core container of a big host
    cfg = config(tmp_path)
    assert worker_count(cfg, None, 100) == 2 and worker_count(cfg, None, 1) == 1 and worker_count(cfg, 5, 100) == 5


def test_only_a_full_disk_gets_the_free_space_added(tmp_path):
    from trainer.data.store.prepare import _with_free_space

    paths = StorePaths(tmp_path)
    other = StoreError("'a\\nb': a source name with a line break cannot be stored")
    assert _with_free_space(other, paths) is other
    full = _with_free_space(layout.StoreDiskFull(f"{tmp_path}/x: the disk is full"), paths)
    assert isinstance(full, layout.StoreDiskFull) and "MiB free on the store's disk" in str(full)


KILLABLE_CLI = """
import sys
from tests.test_store_prepare import ends_after_odd
from trainer.data.store import layout
layout._ends_shard = ends_after_odd  # many small shards: the kill lands in the middle
from trainer import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_in_the_middle_then_again_equals_a_clean_prepare(tmp_path, small_shards):
    write_clips(tmp_path / "data", 60)
    cfg = config(tmp_path)
    path = tmp_path / "prep.yaml"
    path.write_text(dump_config(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_CLI, "prepare", str(path), "--workers", "1"],
                            env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(shard_files(tmp_path / "store")) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = shard_files(tmp_path / "store")
    assert not (tmp_path / "store" / "manifest.json").exists(), "killed too late: make the data bigger"

    resumed = prepare(cfg, workers=1)
    assert resumed.reused_shards >= len(finished) and resumed.computed_shards > 0
    assert finished <= shard_files(tmp_path / "store")
    clean = prepare(config(tmp_path, store=tmp_path / "clean"), workers=1)
    assert clean.fingerprint == resumed.fingerprint
    a = FeatureStore.open(tmp_path / "store").split("train")
    b = FeatureStore.open(tmp_path / "clean").split("train")
    assert all(np.array_equal(a.rows(i), b.rows(i)) for i in range(len(a)))


def test_variants_and_windows_of_long_recordings(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for label, freq in (("bird", 900.0), ("insect", 2500.0)):
            (data / split / label).mkdir(parents=True)
            for i, seconds in enumerate((0.3, 1.2, 3.0)):  # shorter than a window, between, longer than kept
                t = np.arange(int(seconds * 16000)) / 16000
                sf.write(data / split / label / f"{i}.wav", np.sin(2 * np.pi * (freq + 50 * i) * t) * 0.3, 16000)
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "hum.wav", np.random.default_rng(0).normal(size=8000) * 0.05, RATE)
    cfg = config(tmp_path, **{"data.windows": {"enabled": True, "max_seconds": 2.0},
                              "data.variants": {"count": 2, "gain_db": 6.0, "pitch_semitones": 1.0,
                                                "noise_dir": str(noise)}})
    result = prepare(cfg, workers=1)
    assert result.items == 12 and result.bad == []
    store = FeatureStore.open(tmp_path / "store")
    train, val = store.split("train"), store.split("val")
    assert train.variants == 2 and val.variants == 0
    frames = {0: 4000 // 128 + 1, 1: 9600 // 128 + 1, 2: 16000 // 128 + 1}  # padded to a window, whole, cut
    for i, name in enumerate(train.names()):
        want = frames[int(Path(name).stem)]
        assert [train.length(i, v) for v in range(3)] == [want] * 3
        assert not np.array_equal(train.rows(i, 0), train.rows(i, 1))
    assert [val.length(i) for i in range(len(val))] == [frames[int(Path(n).stem)] for n in val.names()]
    stats = json.loads((tmp_path / "store" / "manifest.json").read_text())["stats"]["train"]
    assert stats["padded"] == 2 and stats["trimmed"] == 2 and stats["rates"] == {"16000": 6}


def test_images_are_stored_at_the_training_size(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, shade in (("plain", 40), ("bright", 220)):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (37 + i, 20), (shade, shade, i)).save(tmp_path / "data" / split / label / f"{i}.png")
    cfg = config(tmp_path, **{"data.source": "image_folder", "data.image_size": 16,
                              "features": {"kind": "image"}})
    prepare(cfg, workers=1)
    store = FeatureStore.open(tmp_path / "store")
    assert store.row_shape == (3, 16, 16) and store.dtype == np.uint8
    image = store.split("train").raw(0)
    assert image.shape == (3, 16, 16) and image.dtype == np.uint8


def test_progress_line_rate_and_eta():
    import io

    from trainer.console import PrepareProgressLine

    now = [0.0]
    log = io.StringIO()
    line = PrepareProgressLine(log, log_interval=5.0, clock=lambda: now[0])
    for done in range(1001):
        now[0] = done * 0.01  # 100 files/s
        line(done, 1000)
    assert log.getvalue().splitlines() == [
        "preparing data: 500/1000 files, 100.0 files/s, ETA 5s",
        "preparing data: 1000/1000 files, 100.0 files/s, took 10s"]

    log = io.StringIO()  # workers take 4 s to start: that is not the rate the ETA goes by
    line = PrepareProgressLine(log, log_interval=5.0, clock=lambda: now[0])
    for t, done in ((0.0, 0), (4.0, 10), (5.0, 20)):
        now[0] = t
        line(done, 100)
    assert log.getvalue() == "preparing data: 20/100 files, 10.0 files/s, ETA 8s\n"

    log = io.StringIO()  # a prepare that goes on: 60 files of reused shards are done at once
    line = PrepareProgressLine(log, log_interval=5.0, clock=lambda: now[0])
    for t, done in ((0.0, 60), (4.0, 70), (5.0, 80)):
        now[0] = t
        line(done, 100)
    assert log.getvalue() == "preparing data: 80/100 files, 10.0 files/s, ETA 2s\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    line = PrepareProgressLine(tty, interval=0.5, clock=lambda: now[0])
    for done in range(101):
        now[0] = done * 0.01
        line(done, 100)
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("took 1s\n")


def test_a_killed_prepares_temp_files_are_swept_from_the_root_too(tmp_path):
    """A power cut between the manifest's temp write and its rename leaves STORE/.manifest.json.tmp-PID."""
    write_clips(tmp_path / "data", 1)
    paths = StorePaths(tmp_path / "store")
    paths.make_dirs()
    leftovers = [StorePaths.temp(paths.manifest).with_name(".manifest.json.tmp-99999"),
                 paths.shards / ".abc.npy.tmp-99999"]
    for path in leftovers:
        path.write_bytes(b"half")
    prepare(config(tmp_path), workers=1)
    assert not any(path.exists() for path in leftovers)
    assert not [p for p in paths.root.rglob("*") if StorePaths.is_temp(p)]


def test_the_run_directory_copy_of_a_config_names_the_same_store(tmp_path):
    import yaml

    from trainer.config import load_config

    for folder in ("conf", "noise", "data"):
        (tmp_path / folder).mkdir()
    path = tmp_path / "conf" / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "audio_folder", "root": "../data", "store": "../store",
                                             "variants": {"count": 1, "noise_dir": "../noise"}},
                                    "model": {"name": "resnet18"}}))
    cfg = load_config(path, check_model=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg))
    copy = load_config(tmp_path / "run" / "config.yaml", check_model=False)
    assert copy.resolve_path(copy.data.store) == (tmp_path / "store").resolve() == cfg.resolve_path(cfg.data.store).resolve()
    assert copy.resolve_path(copy.data.variants.noise_dir) == (tmp_path / "noise").resolve()


@pytest.mark.slow
def test_two_prepares_at_once_one_waits_and_the_store_is_whole(tmp_path):
    write_clips(tmp_path / "data", 10)
    path = tmp_path / "prep.yaml"
    path.write_text(dump_config(config(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "trainer.cli", "prepare", str(path), "--workers", "1"]
    procs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert sum("waiting for another prepare" in err for _, err in outs) <= 1
    assert all(out.splitlines()[-1] == str(tmp_path / "store") for out, _ in outs)
    said = sorted(out.splitlines()[-2] for out, _ in outs)  # one computed, the other found it done
    assert said[0].startswith("store prepared in") and said[1].startswith("store up to date: 40 examples")
    split = FeatureStore.open(tmp_path / "store").split("train")
    assert len(split) == 20 and all(split.length(i) == 32 for i in range(len(split)))


def test_json_waveforms_and_auto_settings(tmp_path, capsys):
    from trainer import cli

    rng = np.random.default_rng(0)
    doc = {"fs": RATE, "labels": ["ok", "ng", "ok", "ng"],
           "waveforms": [list(rng.normal(size=3000 + 500 * i) * 0.1) for i in range(4)]}
    for split in ("train", "val"):
        (tmp_path / f"{split}.json").write_text(json.dumps(doc))
    cfg = config(tmp_path, **{"data.source": "json_waveforms", "data.root": None, "data.sample_rate": "auto",
                              "data.duration": "auto", "data.train": str(tmp_path / "train.json"),
                              "data.val": str(tmp_path / "val.json")})
    (tmp_path / "prep.yaml").write_text(dump_config(cfg))
    assert cli.main(["prepare", str(tmp_path / "prep.yaml"), "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "store")
    store = FeatureStore.open(tmp_path / "store")
    assert store.recipe["data.sample_rate"] == RATE and store.recipe["data.duration"] == 0.6  # 95th pct of 0.375..0.5625 s, rounded up
    train = store.split("train")
    assert train.names() == [f"{tmp_path / 'train.json'} (item {i})" for i in range(4)]
    assert list(train.labels) == [1, 0, 1, 0]  # classes sorted: ng, ok
    # Shard boundaries are content-defined (they hash the items' paths, so they move with
    # tmp_path): look through every shard, not the first one listed.
    paths = [item["path"] for header in (tmp_path / "store" / "shards").glob("*.json")
             for item in json.loads(header.read_text())["items"]]
    assert sum(p.endswith("train.json#3") for p in paths) == 1 and sum(p.endswith("val.json#3") for p in paths) == 1


@pytest.mark.slow
def test_train_reads_the_store_longhaul_prepare_made(tmp_path, capsys):
    """The config names its data (through a symlink) and its store relative to itself; the run
    directory's copy names them resolved: train must find the same store current and prepare nothing."""
    from trainer import cli

    write_clips(tmp_path / "data", 8)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "run.yaml"
    path.write_text(json.dumps({
        "name": "fromstore", "threads": 1, "seed": 2,
        "data": {"source": "audio_folder", "root": "../link", "store": "../store", "sample_rate": RATE,
                 "duration": 0.5},
        "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13},
        "model": {"name": "mfcc_mlp"}, "optim": {"batch_size": 8}, "phases": [{"name": "only", "epochs": 1}]}))
    assert cli.main(["prepare", str(path), "--workers", "1"]) == 0
    prepared = FeatureStore.open(tmp_path / "store").fingerprint
    capsys.readouterr()
    assert cli.main(["--root", str(tmp_path / "runs"), "train", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "preparing data" not in out
    recorded = json.loads((tmp_path / "runs" / "fromstore" / "data_store.json").read_text())
    assert recorded["fingerprint"] == prepared
    assert not (tmp_path / "runs" / "fromstore" / "store").exists()


def test_a_reprepare_keeps_the_files_a_reading_run_uses(tmp_path, small_shards):
    """A training run that opened the store before a re-prepare keeps reading its shards: the
    prepare leaves the old files while the store is held for reading, and removes them once not."""
    write_clips(tmp_path / "data", 6)
    cfg = config(tmp_path)
    prepare(cfg, workers=1)
    reader = FeatureStore.open(tmp_path / "store")
    train = reader.split("train")
    before = [train.raw(i) for i in range(len(train))]
    old = shard_files(tmp_path / "store")
    sf.write(tmp_path / "data" / "train" / "bird" / "003.wav", np.zeros(2000), RATE)
    second = prepare(cfg, workers=1)
    assert second.old_files_kept and "previous version's files were kept" in second.describe()
    assert old <= shard_files(tmp_path / "store")
    reader.files.close()  # drop the open descriptors: every old shard must still be there by name
    assert all(np.array_equal(train.raw(i), x) for i, x in enumerate(before))
    reader.close()
    sf.write(tmp_path / "data" / "train" / "bird" / "005.wav", np.zeros(2000), RATE)
    third = prepare(cfg, workers=1)
    assert not third.old_files_kept
    now = shard_files(tmp_path / "store")
    assert len(old - now) == 2 and len(now - old) == 2  # both replaced shards gone, nothing else


def test_variants_are_drawn_from_the_shard_key_not_the_csv_row(tmp_path):
    """A row inserted above an item of a CSV list renumbers its name but not its shard key: the
    shard computed again (a store rebuilt elsewhere) must hold the same variant rows."""
    import dataclasses

    from trainer.data.store.compute import ShardMaker
    from trainer.data.store.plan import make_plan

    write_clips(tmp_path / "data", 2)
    rows = [f"{p},{p.parent.name}" for p in sorted((tmp_path / "data" / "train").rglob("*.wav"))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = config(tmp_path, **{"data.source": "csv", "data.root": None, "data.train": str(tmp_path / "train.csv"),
                              "data.val_fraction": 0.25, "data.variants": {"count": 1, "gain_db": 6.0}})
    task = make_plan(cfg).shards["train"][0]
    renumbered = dataclasses.replace(task, items=[dataclasses.replace(item, context=f"train.csv row {9 + i}")
                                                  for i, item in enumerate(task.items)])
    assert [item.name for item in renumbered.items] != [item.name for item in task.items]
    shards = []
    for store, shard in (("one", task), ("two", renumbered)):
        StorePaths(tmp_path / store).make_dirs()
        ShardMaker(cfg, str(tmp_path / store)).make(shard, lambda: None)
        shards.append(np.load(StorePaths(tmp_path / store).shard_npy(task.key)))
    assert np.array_equal(shards[0], shards[1])
