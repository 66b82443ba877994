"""Power cuts: the harness's own model (fast), then a real run cut many times (slow).

tests/powercut.py mounts a FUSE file system that drops, at a simulated power cut, every write not
fsynced yet (see its docstring for the model).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.daemon_helpers import wait_for
from tests.longhaul_cli import ROOT, assert_bit_identical, cli, logged_steps, status
from tests.powercut import mount_or_skip
from tests.run_configs import POWERCUT
from trainer.history import read_history


@pytest.fixture
def powercut(tmp_path):
    """(mount, cut): the power-cut file system over an empty directory, and a function that
    cuts the power and returns the directory that survived."""
    (tmp_path / "live").mkdir()
    mount = mount_or_skip(tmp_path / "live", tmp_path / "mnt", tmp_path / "fs.log")
    cuts = iter(range(1000))
    yield mount.mountpoint, lambda: mount.cut(tmp_path / f"after-cut-{next(cuts)}")
    mount.unmount()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# ============================================================================ the model itself
def test_a_write_never_fsynced_is_lost(powercut):
    mnt, cut = powercut
    (mnt / "f").write_bytes(b"unsynced")
    fsync_path(mnt)                       # the name is durable, the content is not
    assert (mnt / "f").read_bytes() == b"unsynced"   # programs see normal files until the cut
    assert (cut() / "f").read_bytes() == b""


def test_a_new_file_fsynced_without_its_directory_is_absent(powercut):
    mnt, cut = powercut
    write_synced(mnt / "f", b"content")
    assert not (cut() / "f").exists()
    fsync_path(mnt)
    assert (cut() / "f").read_bytes() == b"content"


def test_temp_file_fsync_rename_fsync_dir_gives_the_new_content(powercut):
    mnt, cut = powercut
    write_synced(mnt / "config", b"old")
    fsync_path(mnt)
    write_synced(mnt / ".config.tmp", b"new")
    os.replace(mnt / ".config.tmp", mnt / "config")
    after = cut()
    assert (after / "config").read_bytes() == b"old"    # rename not durable yet: old name, old content
    assert (after / ".config.tmp").exists() is False    # and the temp name was never durable
    fsync_path(mnt)
    after = cut()
    assert (after / "config").read_bytes() == b"new"
    assert sorted(os.listdir(after)) == ["config"]


def test_a_rename_without_fsyncing_the_content_leaves_0_bytes(powercut):
    mnt, cut = powercut
    (mnt / ".config.tmp").write_bytes(b"name: run\n")
    os.replace(mnt / ".config.tmp", mnt / "config")
    fsync_path(mnt)
    assert (cut() / "config").read_bytes() == b""


def test_append_fsync_append_keeps_the_first_part_only(powercut):
    mnt, cut = powercut
    with open(mnt / "log", "ab") as fh:
        fh.write(b"first\n")
        fh.flush()
        os.fsync(fh.fileno())
        fh.write(b"second\n")
        fh.flush()
    fsync_path(mnt)
    assert (mnt / "log").read_bytes() == b"first\nsecond\n"
    assert (cut() / "log").read_bytes() == b"first\n"


def test_an_unlink_is_undone_unless_the_directory_is_fsynced(powercut):
    mnt, cut = powercut
    write_synced(mnt / "f", b"kept")
    fsync_path(mnt)
    (mnt / "f").unlink()
    assert (cut() / "f").read_bytes() == b"kept"
    fsync_path(mnt)
    assert not (cut() / "f").exists()


def test_a_removed_directory_tree_comes_back_whole_unless_its_parent_is_fsynced(powercut):
    """Checkpoint retention: rename step-N aside and delete it, with no fsync of the store."""
    mnt, cut = powercut
    (mnt / "ckpt" / "step-1").mkdir(parents=True)
    write_synced(mnt / "ckpt" / "step-1" / "state.pt", b"weights")
    for directory in (mnt / "ckpt" / "step-1", mnt / "ckpt", mnt):
        fsync_path(directory)
    os.rename(mnt / "ckpt" / "step-1", mnt / "ckpt" / ".del-step-1")
    (mnt / "ckpt" / ".del-step-1" / "state.pt").unlink()
    (mnt / "ckpt" / ".del-step-1").rmdir()
    (mnt / "ckpt" / "other").write_bytes(b"")   # more activity in the live directory
    after = cut()
    assert sorted(os.listdir(after / "ckpt")) == ["step-1"]
    assert (after / "ckpt" / "step-1" / "state.pt").read_bytes() == b"weights"


def test_a_new_directory_needs_its_parent_fsynced_and_its_own_entries_need_it(powercut):
    mnt, cut = powercut
    (mnt / "run").mkdir()
    write_synced(mnt / "run" / "state", b"{}")
    fsync_path(mnt / "run")
    assert not (cut() / "run").exists()
    fsync_path(mnt)
    assert (cut() / "run" / "state").read_bytes() == b"{}"


def test_an_o_sync_write_is_durable_at_once(powercut):
    mnt, cut = powercut
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_SYNC)
    os.write(fd, b"synced")
    os.close(fd)
    fsync_path(mnt)
    assert (cut() / "f").read_bytes() == b"synced"


# ============================================================================ a real run, cut many times
CUTS = 13


def kill_process_group(pgid: int) -> None:
    """SIGKILL the daemon's whole process group and wait until no member can write any more."""
    import psutil

    os.killpg(pgid, signal.SIGKILL)

    def all_dead() -> bool:
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    return False
            except (OSError, psutil.Error):
                pass
        return True

    wait_for(all_dead, 30, f"process group {pgid} to die")


def stop_our_daemon(run_dir: Path) -> None:
    """Kill the run's daemon group if one is still alive: only the pid state.json names, and only
    if that process really is this run's daemon (its working directory is the run directory)."""
    import psutil

    pid = written_state(run_dir).get("pid")
    try:
        if pid and Path(psutil.Process(pid).cwd()) == run_dir:
            os.killpg(pid, signal.SIGKILL)
    except (OSError, psutil.Error):
        pass


def written_state(run_dir: Path, tries: int = 20) -> dict:
    """state.json as written (cheaper than `longhaul status`, which the test calls once per cut).

    A read racing the daemon's atomic replace can fail on the power-cut file system (libfuse
    opens by path and, with hard_remove, the old node is gone once the rename lands), which
    a real file system never does: such a read is tried again. {} when there is no readable file."""
    for attempt in range(tries):
        try:
            return json.loads((run_dir / "state.json").read_text())
        except (OSError, ValueError):
            if attempt + 1 < tries:
                time.sleep(0.05)
    return {}


def json_lines(path: Path) -> tuple[list[str], list[str]]:
    """(lines, problems) of a JSON-lines file: a line that does not parse, or a last line without
    its newline, is a torn write."""
    if not path.exists():
        return [], []
    text = path.read_bytes().decode(errors="replace")
    lines = text.splitlines()
    problems = [] if not text or text.endswith("\n") else [f"{path.name}: torn last line {lines[-1][:60]!r}"]
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            problems.append(f"{path.name}: line {number} is not JSON: {line[:60]!r}")
    return lines, problems


def problems_after_cut(run_dir: Path, config: bytes, live_events: list[str], live_history: list[dict]) -> list[str]:
    """Everything wrong with what a resume would read in the run directory left by a power cut,
    compared with what the killed run had written (`live_*`, read before the cut)."""
    from trainer.checkpoint import CheckpointStore

    if not run_dir.is_dir():
        return [f"the run directory {run_dir.name}/ itself is gone (its entry in the runs root was never fsynced)"]
    problems = []
    kept_config = (run_dir / "config.yaml").read_bytes() if (run_dir / "config.yaml").exists() else None
    if kept_config != config:
        problems.append("config.yaml is missing" if kept_config is None else
                        f"config.yaml is {len(kept_config)} bytes and differs from the run's config "
                        f"({len(config)} bytes)" if kept_config else "config.yaml is 0 bytes")
    for name, required in (("state.json", True), ("plan.json", False)):
        path = run_dir / name
        if not path.exists():
            if required:
                problems.append(f"{name} is missing")
            continue
        try:
            json.loads(path.read_bytes())
        except ValueError:
            problems.append(f"{name} is not valid JSON ({path.stat().st_size} bytes)")

    store = CheckpointStore(run_dir / "ckpt", readonly=True)
    valid = store.list_valid() if (run_dir / "ckpt").is_dir() else []
    problems += [f"checkpoint {path.name} rejected: {reason}" for path, reason in store.rejected]
    newest = valid[-1] if valid else None

    events, torn = json_lines(run_dir / "events.jsonl")
    problems += torn
    if events != live_events[:len(events)]:
        problems.append("events.jsonl is not a prefix of what was written")
    if newest is not None:
        # Events written before the checkpoint preceding the newest durable one (that one was
        # surely complete before the newest began) must have been made durable with it.
        earlier = [i for i, line in enumerate(live_events)
                   if json.loads(line).get("kind") == "checkpoint"
                   and (json.loads(line).get("data") or {}).get("step", newest.step) < newest.step]
        needed = earlier[-1] if earlier else 0
        if len(events) < needed:
            lost = sorted({json.loads(line)["kind"] for line in live_events[len(events):needed]})
            problems.append(f"events.jsonl kept {len(events)} of the {needed} events written before checkpoint "
                            f"step {newest.step} began (lost kinds: {', '.join(lost)})")

    history = run_dir / "history.msgpack"
    reader = read_history(history)
    records = list(reader)
    size = history.stat().st_size if history.exists() else 0
    if reader.valid_length != size:
        problems.append(f"history.msgpack is torn: {size} bytes, {reader.valid_length} of them whole records")
    if records != live_history[:len(records)]:
        problems.append("history.msgpack is not a prefix of what was written")
    steps = [r["step"] for r in records if r["kind"] == "train"]
    if steps != list(range(1, len(steps) + 1)):
        problems.append(f"history.msgpack train steps have gaps: {steps[:5]}...{steps[-5:]}")
    if newest is not None and size < newest.meta["history_offset"]:
        problems.append(f"history.msgpack has {size} bytes, checkpoint step {newest.step} points at "
                        f"{newest.meta['history_offset']}")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(900)  # nine daemon starts; a busy box makes each one slow
def test_power_cuts_at_random_instants_lose_nothing_a_resume_reads(tmp_path):
    """Cut the power (SIGKILL the daemon's process group, drop every unsynced write) at random
    instants; after each cut nothing a resume reads may be empty, torn or stale, and the resumed
    run must end bit-identical to an uninterrupted one."""
    disk = tmp_path / "disk-0"
    (disk / "runs").mkdir(parents=True)   # the runs root exists (and is durable) before the run
    mount = mount_or_skip(disk, tmp_path / "mnt", tmp_path / "fs.log")
    mounts = [mount]
    env = dict(os.environ, LONGHAUL_ROOT=str(mount.mountpoint / "runs"), PYTHONPATH=str(ROOT),
               XDG_STATE_HOME=str(tmp_path / "state"))
    runtime_dirs = []

    def reboot_runtime_dir() -> None:
        """A fresh XDG_RUNTIME_DIR: a power cut wipes /run and its stale sockets."""
        runtime_dirs.append(tempfile.mkdtemp(prefix="lh", dir="/tmp"))
        env["XDG_RUNTIME_DIR"] = runtime_dirs[-1]

    reboot_runtime_dir()
    source = tmp_path / "powercut.yaml"
    # Long enough in steps that a cut's random delay (up to 0.3 s, ~50 steps on a quiet box)
    # never reaches the end of the run before the last cut.
    source.write_text(yaml.safe_dump({**POWERCUT, "phases": [{"name": "a", "epochs": 60},
                                                              {"name": "b", "epochs": 60, "lr_mult": 0.5}]}))
    run_dir = mount.mountpoint / "runs" / "powercut"
    reference = None
    try:
        # The uninterrupted reference trains on the other core meanwhile (both use one thread).
        with open(tmp_path / "reference.log", "w") as log:
            reference = subprocess.Popen([sys.executable, "-m", "trainer.cli", "train", str(source), "--run-dir",
                                          str(tmp_path / "reference"), "--quiet"], env=env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        cli(env, "start", str(source))
        config = (run_dir / "config.yaml").read_bytes()
        assert config, "start wrote an empty config.yaml"
        rng = random.Random(8)
        for cut in range(1, CUTS + 1):
            target = logged_steps(run_dir) + rng.randint(2, 7)
            wait_for(lambda: logged_steps(run_dir) >= target and written_state(run_dir).get("state") == "running",
                     150, "training progress")
            time.sleep(rng.uniform(0.0, 0.3))
            current = written_state(run_dir)
            assert current.get("state") == "running", f"cut {cut}: the run is {current.get('state')}; lengthen it"
            kill_process_group(current["pid"])
            live_events, _ = json_lines(run_dir / "events.jsonl")
            live_history = list(read_history(run_dir / "history.msgpack"))

            survived = mount.cut(tmp_path / f"disk-{cut}")
            mount.unmount()
            mount = mount_or_skip(survived, tmp_path / "mnt", tmp_path / "fs.log")
            mounts.append(mount)
            reboot_runtime_dir()

            problems = problems_after_cut(run_dir, config, live_events, live_history)
            assert not problems, f"after power cut {cut}:\n  " + "\n  ".join(problems)
            assert status(env, "powercut")["state"] == "interrupted"
            cli(env, "resume", "powercut")

        wait_for(lambda: written_state(run_dir).get("state") == "finished", 240, "the run to finish")
        assert status(env, "powercut")["state"] == "finished"
        assert reference.wait(timeout=600) == 0, f"the reference run failed: {(tmp_path / 'reference.log').read_text()}"
        assert_bit_identical(run_dir, tmp_path / "reference")
    finally:
        if reference is not None and reference.poll() is None:
            reference.kill()
            reference.wait()
        stop_our_daemon(run_dir)
        for m in mounts:
            m.unmount()
        for path in runtime_dirs:
            shutil.rmtree(path, ignore_errors=True)
