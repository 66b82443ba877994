"""Off-box checkpoint copies (`checkpoint.replicate_to`): the replica's copy, verification and
retention (trainer/run/replica.py), the daemon's replication thread with its alerts and command
(trainer/daemon/replicator.py), `resume --from` (trainer/run/restore.py), and a run under a real
daemon killed, its directory deleted, restored from the replica and finished bit-identical."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from trainer.checkpoint import CheckpointStore
from trainer.config import ConfigError, build_config, resolved_dict
from trainer.daemon.replicator import Replicator
from trainer.run import replica as replica_module
from trainer.run.errors import RunError
from trainer.run.manifest import verify
from trainer.run.replica import Replica, ReplicaError, local_steps, placement_problem
from trainer.run.restore import replica_dir, restore, restore_target
from trainer.run.rundir import RunDir
from trainer.run.state import StateFile, read_state
from tests.daemon_helpers import wait_for
from tests.longhaul_cli import assert_bit_identical, cli, cli_env, logged_steps, status
from tests.run_configs import POWERCUT, changed


def make_run(tmp_path: Path, name: str = "run") -> RunDir:
    run = RunDir(tmp_path / "runs" / name)
    run.path.mkdir(parents=True)
    run.config.write_text("seed: 1\n")
    run.history.write_bytes(b"h" * 1000)
    run.events.write_text('{"seq": 1}\n')
    StateFile(run.path).update(state="running", pid=os.getpid(), step=0)
    return run


def save(run: RunDir, steps, keep_last: int = 2, size: int = 1000) -> None:
    with CheckpointStore(run.checkpoints, keep_last=keep_last, min_free_mb=0) as store:
        for step in steps:
            store.save({"w": torch.full((size,), float(step))}, {"step": step})


def copy_of(tmp_path: Path, run: RunDir) -> RunDir:
    return RunDir(tmp_path / "replica" / run.name)


@pytest.fixture
def replica_root(tmp_path) -> Path:
    (tmp_path / "replica").mkdir()
    return tmp_path / "replica"


# ----------------------------------------------------------------------------- the copy
def test_sync_copies_verified_checkpoints_and_appends_only_new_history_bytes(tmp_path, replica_root):
    run = make_run(tmp_path)
    save(run, [1, 2])
    replica = Replica(run.path, replica_root)
    first = replica.sync()
    there = copy_of(tmp_path, run)
    assert first.steps == [1, 2] and local_steps(there) == [1, 2]
    assert all(verify(there.checkpoint(s), s)[1] is None for s in (1, 2))
    for name in ("config", "history", "events", "state"):
        assert getattr(there, name).read_bytes() == getattr(run, name).read_bytes(), name

    with open(run.history, "ab") as fh:
        fh.write(b"n" * 10)
    again = replica.sync()
    assert again.steps == [] and again.bytes == 10  # nothing but the new bytes (state unchanged)
    assert there.history.read_bytes() == run.history.read_bytes()
    assert not [p for p in there.path.iterdir() if p.name.startswith(".tmp-")]

    (there.path / ".tmp-history.msgpack-dead").write_bytes(b"half")  # a daemon killed mid-copy
    (there.checkpoints / ".tmp-step-0000000009-dead").mkdir()
    replica.sync()
    assert not [p for p in [*there.path.iterdir(), *there.checkpoints.iterdir()] if p.name.startswith(".tmp-")]


def test_a_history_cut_back_and_grown_again_is_copied_whole(tmp_path, replica_root):
    run = make_run(tmp_path)
    run.history.write_bytes(bytes(range(256)) * 8)
    replica = Replica(run.path, replica_root)
    replica.sync()
    with open(run.history, "r+b") as fh:  # what a resume does: cut to the checkpoint, then train on
        fh.truncate(100)
        fh.seek(100)
        fh.write(b"x" * 4000)
    replica.sync()
    assert copy_of(tmp_path, run).history.read_bytes() == run.history.read_bytes()


def test_a_copy_that_does_not_match_the_manifest_is_refused_and_leaves_nothing(tmp_path, replica_root, monkeypatch):
    run = make_run(tmp_path)
    save(run, [5])
    real = replica_module.copy_file

    def corrupting(src, dst):
        size = real(src, dst)
        if dst.name == "state.pt":
            with open(dst, "r+b") as fh:
                fh.seek(100)
                fh.write(b"\xff")
        return size

    monkeypatch.setattr(replica_module, "copy_file", corrupting)
    with pytest.raises(ReplicaError, match="step-0000000005.*does not match its manifest: state.pt sha256"):
        Replica(run.path, replica_root).sync()
    ckpt = copy_of(tmp_path, run).checkpoints
    assert os.listdir(ckpt) == []  # neither a step directory nor a temp one
    assert verify(run.checkpoint(5), 5)[1] is None


def test_a_sync_killed_while_copying_a_checkpoint_already_holds_its_history(tmp_path, replica_root, monkeypatch):
    run = make_run(tmp_path)
    save(run, [1])
    Replica(run.path, replica_root).sync()
    with open(run.history, "ab") as fh:  # step 2 logged its rows, then its checkpoint landed
        fh.write(b"2" * 500)
    save(run, [2])

    def power_cut(*args, **kwargs):
        raise KeyboardInterrupt  # the daemon dies in the middle of the checkpoint copy

    monkeypatch.setattr(replica_module, "copy_checkpoint", power_cut)
    with pytest.raises(KeyboardInterrupt):
        Replica(run.path, replica_root).sync()
    copy = copy_of(tmp_path, run)
    assert copy.history.read_bytes() == run.history.read_bytes()  # rows of every checkpoint it may get
    assert local_steps(copy) == [1]


def test_retention_applies_in_the_replica_after_the_new_checkpoint_landed(tmp_path, replica_root):
    run = make_run(tmp_path)
    save(run, [1, 2, 3], keep_last=2)
    replica = Replica(run.path, replica_root)
    assert replica.sync().steps == [2, 3]
    save(run, [4], keep_last=2)
    result = replica.sync()
    assert (result.steps, result.removed) == ([4], [2])
    assert local_steps(copy_of(tmp_path, run)) == local_steps(run) == [3, 4]


def test_a_full_replica_disk_fails_cleanly_and_the_local_checkpoint_is_fine(tmp_path, tmpfs):
    disk = tmpfs(1)
    run = make_run(tmp_path)
    save(run, [7], size=400_000)  # 1.6 MB: does not fit in 1 MiB
    with pytest.raises(ReplicaError, match="No space left on device"):
        Replica(run.path, disk.path).sync()
    ckpt = disk.path / run.name / "ckpt"
    assert os.listdir(ckpt) == []
    assert verify(run.checkpoint(7), 7)[1] is None


def test_a_replica_overlapping_the_run_directory_is_a_config_error(tmp_path):
    run = make_run(tmp_path)
    assert "overlaps" in placement_problem(run.path, run.path)
    assert "overlaps" in placement_problem(run.path, run.path.parent)  # root/NAME is the run itself
    assert placement_problem(run.path, tmp_path / "elsewhere") is None
    cfg = build_config({"checkpoint": {"replicate_to": {"dir": "backup"}}}, "c.yaml", tmp_path / "cfgs",
                       check_paths=False, check_model=False)
    assert resolved_dict(cfg)["checkpoint"]["replicate_to"]["dir"] == str(tmp_path / "cfgs" / "backup")
    with pytest.raises(ConfigError, match="checkpoint.replicate_to.command"):
        build_config({"checkpoint": {"replicate_to": {"command": ""}}}, "c.yaml", tmp_path,
                     check_paths=False, check_model=False)


def test_another_run_of_the_same_name_is_refused_in_a_replica(tmp_path, replica_root):
    run = make_run(tmp_path)
    save(run, [1])
    Replica(run.path, replica_root).sync()
    twin = make_run(tmp_path / "other-root")
    save(twin, [9])
    with pytest.raises(ReplicaError, match=f"is the replica of another run .[^:]+:{run.path}"):
        Replica(twin.path, replica_root).sync()
    assert local_steps(copy_of(tmp_path, run)) == [1]


def test_the_same_run_path_on_another_host_is_another_run(tmp_path, replica_root, monkeypatch):
    run = make_run(tmp_path)
    save(run, [1])
    Replica(run.path, replica_root).sync()
    monkeypatch.setattr(replica_module.socket, "gethostname", lambda: "other-box")
    with pytest.raises(ReplicaError, match="is the replica of another run"):
        Replica(run.path, replica_root).sync()  # same home layout, same name, one NFS directory
    assert local_steps(copy_of(tmp_path, run)) == [1]


def test_a_replica_is_not_a_run_to_train_in_and_a_run_is_not_a_replica(tmp_path, replica_root, runtime_dir):
    from trainer.daemon import launch_daemon
    from trainer.daemon.ownership import DaemonError

    run = make_run(tmp_path)
    save(run, [1])
    StateFile(run.path).update(state="stopped", pid=None)
    Replica(run.path, replica_root).sync()
    with pytest.raises(DaemonError, match="is the off-box replica of .*resume run --from"):
        launch_daemon(copy_of(tmp_path, run).path)
    with pytest.raises(RunError, match="is a run directory, not a replica"):
        replica_dir(run.path, run.name)


def test_a_restore_that_fails_puts_the_run_directory_back(tmp_path, replica_root, monkeypatch):
    run = make_run(tmp_path)
    save(run, [1, 2])
    StateFile(run.path).update(state="stopped", pid=None)
    Replica(run.path, replica_root).sync()
    shutil.rmtree(run.checkpoints)  # damaged: restore puts it aside first

    def broken_disk(*args, **kwargs):
        raise OSError(5, "Input/output error", "replica disk")

    monkeypatch.setattr("trainer.run.restore.copy_checkpoint", broken_disk)
    with pytest.raises(RunError, match="Input/output error.*is as it was"):
        restore(replica_dir(replica_root, run.name), run.path)
    assert run.path.is_dir() and (run.path / "state.json").exists()
    assert sorted(p.name for p in run.path.parent.iterdir()) == [run.name]  # nothing aside, no temp


def test_start_refuses_a_replica_inside_the_run_directory(tmp_path, runtime_dir):
    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "c.yaml"
    run_dir = tmp_path / "runs" / "inside"
    config.write_text(yaml.safe_dump(changed(POWERCUT, **{"checkpoint.replicate_to.dir": str(run_dir / "copies")})))
    result = cli(env, "start", str(config), "--run-dir", str(run_dir), check=False)
    assert result.returncode != 0
    assert "checkpoint.replicate_to.dir" in result.stderr and "overlaps" in result.stderr
    assert not run_dir.exists()  # a start that never ran leaves nothing behind


# ----------------------------------------------------------------------------- the daemon's thread
def replicate_rounds(run: RunDir, rounds, **cfg) -> list[dict]:
    """Run the Replicator as the daemon does: `rounds` is a list of (prepare, step) run in order,
    each waiting for the round before; returns the events it emitted."""
    events = []
    replica_cfg = SimpleNamespace(**{"dir": None, "command": None, "timeout_seconds": 30.0, **cfg})

    async def main():
        emit = lambda kind, level, message, data: events.append({"kind": kind, "level": level,
                                                                  "message": message, **data})
        replicator = Replicator.for_run(run.path, SimpleNamespace(checkpoint=SimpleNamespace(replicate_to=replica_cfg)),
                                        emit)
        for prepare, step in rounds:
            prepare()
            done = replicator.rounds
            replicator.landed(step)
            while replicator.rounds == done:
                await asyncio.sleep(0.01)
        await replicator.finish()
    asyncio.run(main())
    return events


def test_a_missing_replica_dir_is_one_alert_until_it_works_again(tmp_path):
    run = make_run(tmp_path)
    save(run, [1])
    gone = tmp_path / "unmounted"
    events = replicate_rounds(run, [(lambda: None, 1), (lambda: save(run, [2]), 2),
                                    (lambda: gone.mkdir(), 2)], dir=str(gone))
    failed = [e for e in events if e.get("what") == "replica_failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error" and "does not exist" in failed[0]["error"]
    assert "the local checkpoint is fine" in failed[0]["message"]
    ok = [e for e in events if e.get("what") == "replica_ok"]
    assert len(ok) == 1 and ok[0]["resolves"] == "replica_failed"
    copied = [e for e in events if e["kind"] == "replica"]
    assert copied and copied[0]["step"] == 2 and copied[0]["bytes"] > 0 and copied[0]["seconds"] >= 0
    assert local_steps(RunDir(gone / run.name)) == [1, 2]


def test_a_hanging_command_is_killed_at_its_timeout_and_alerted(tmp_path):
    run = make_run(tmp_path)
    save(run, [3])
    marker = tmp_path / "started"
    started = time.monotonic()
    events = replicate_rounds(run, [(lambda: None, 3)], command=f"touch {marker}; sleep 60", timeout_seconds=1.0)
    assert time.monotonic() - started < 20
    assert marker.exists()
    failed = [e for e in events if e.get("what") == "replica_failed"]
    assert len(failed) == 1 and "ran past 1 s and was killed" in failed[0]["error"]
    assert failed[0]["target"] == "command"


def test_the_command_sees_the_run_and_a_failing_one_is_alerted_with_its_output(tmp_path):
    run = make_run(tmp_path)
    save(run, [4])
    out = tmp_path / "env.txt"
    command = (f'echo "$LONGHAUL_RUN $LONGHAUL_STEP $LONGHAUL_CHECKPOINT $LONGHAUL_RUN_DIR" > {out}; '
               'echo "backup host unreachable" >&2; exit 3')
    events = replicate_rounds(run, [(lambda: None, 4)], command=command)
    assert out.read_text().split() == [run.name, "4", str(run.checkpoint(4)), str(run.path)]
    failed = [e for e in events if e.get("what") == "replica_failed"]
    assert len(failed) == 1 and "exited with status 3: backup host unreachable" in failed[0]["error"]


def test_the_daemon_does_not_wait_forever_for_a_hung_last_copy(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    (tmp_path / "nfs").mkdir()
    monkeypatch.setattr(Replica, "sync", lambda self: time.sleep(5))  # a hard mount that went away
    monkeypatch.setattr("trainer.daemon.replicator._FINAL_GRACE_S", 0.5)
    started = time.monotonic()
    events = replicate_rounds(run, [], dir=str(tmp_path / "nfs"), timeout_seconds=0.5)
    assert time.monotonic() - started < 4
    assert [e["error"] for e in events] == ["the last off-box copy did not finish in 1 s"]


# ----------------------------------------------------------------------------- restore
def test_restore_refuses_a_healthy_run_and_puts_a_damaged_one_aside(tmp_path, replica_root):
    run = make_run(tmp_path)
    save(run, [1, 2])
    StateFile(run.path).update(state="stopped", pid=None)
    Replica(run.path, replica_root).sync()
    source = replica_dir(replica_root, run.name)
    assert replica_dir(source, run.name) == source
    with pytest.raises(RunError, match="has a valid checkpoint .step 2.*--force"):
        restore(source, run.path)

    shutil.rmtree(run.checkpoints)  # the disk lost the checkpoints but not the rest
    done = restore(source, run.path)
    assert done.aside is not None and done.aside.is_dir() and done.step == 2
    assert local_steps(run) == [1, 2] and verify(run.checkpoint(2), 2)[1] is None
    assert read_state(run.path)["state"] == "stopped"  # a final state stays
    assert restore_target(run.name, run.path.parent) == run.path


def test_restore_skips_a_damaged_replica_checkpoint_and_refuses_a_replica_with_none(tmp_path, replica_root):
    run = make_run(tmp_path)
    save(run, [1, 2])
    Replica(run.path, replica_root).sync()
    shutil.rmtree(run.path)
    source = replica_dir(replica_root, run.name)
    with open(RunDir(source).checkpoint(2) / "state.pt", "r+b") as fh:
        fh.write(b"garbage")
    done = restore(source, run.path)
    assert done.step == 1 and [s for s, _ in done.skipped] == [2]
    assert read_state(run.path)["state"] == "interrupted"  # its daemon is not here any more
    shutil.rmtree(run.path)
    shutil.rmtree(RunDir(source).checkpoint(1))
    with pytest.raises(RunError, match="has no valid checkpoint"):
        restore(source, run.path)
    assert not run.path.exists() and not [p for p in run.path.parent.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- end to end
def test_a_run_whose_directory_is_lost_resumes_from_its_replica_bit_identical(tmp_path, runtime_dir):
    env = cli_env(tmp_path / "runs", runtime_dir)
    backup = tmp_path / "backup"
    backup.mkdir()
    raw = changed(POWERCUT, phases=[{"name": "a", "epochs": 12}, {"name": "b", "epochs": 12, "lr_mult": 0.5}],
                  **{"checkpoint.replicate_to": {"dir": str(backup)}})
    config = tmp_path / "powercut.yaml"
    config.write_text(yaml.safe_dump(raw))
    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet")

    cli(env, "start", str(config))
    run_dir = tmp_path / "runs" / "powercut"
    copy = RunDir(backup / "powercut")
    wait_for(lambda: logged_steps(run_dir) >= 30 and local_steps(copy), 120, "training and a replicated checkpoint")
    current = status(env, "powercut")
    assert current["state"] == "running", "the run ended before the cut; lengthen it"
    os.killpg(current["pid"], signal.SIGKILL)
    wait_for(lambda: status(env, "powercut")["state"] == "interrupted", 30, "state interrupted")
    shutil.rmtree(run_dir)  # the disk is lost

    refused = cli(env, "resume", "powercut", check=False)
    assert refused.returncode != 0
    broken = tmp_path / "notify.yaml"
    broken.write_text("notify:\n  - on: [finshed]\n    command: curl x\n")
    refused = cli({**env, "LONGHAUL_NOTIFY_FILE": str(broken)}, "resume", "powercut", "--from", str(backup),
                  check=False)
    assert refused.returncode != 0 and "notify.0.on" in refused.stderr
    assert not run_dir.exists()  # refused before anything was restored
    out = cli(env, "resume", "powercut", "--from", str(backup)).stdout
    assert f"restored {run_dir} from {backup}" in out
    wait_for(lambda: status(env, "powercut")["state"] == "finished", 180, "the run to finish")
    assert_bit_identical(run_dir, tmp_path / "reference")
    events = [json.loads(line) for line in RunDir(run_dir).events.read_text().splitlines()]
    assert [e for e in events if e["kind"] == "resume"], "the restored run resumed from a checkpoint"
    seqs = [e["seq"] for e in events]
    assert seqs[0] == 1 and seqs == sorted(set(seqs)), "the events from before the loss came back, in order"
    resumed_at = next(i for i, e in enumerate(events) if e["kind"] == "resume")
    assert [e for e in events[:resumed_at] if e["kind"] == "checkpoint"], "events from before the loss"
    assert [e for e in events if e["kind"] == "replica" and e["data"]["bytes"] > 0]
    assert not [e for e in events if e["kind"] == "alert" and e["data"].get("what") == "replica_failed"]
    wait_for(lambda: read_state(copy.path).get("state") == "finished", 30, "the replica's final state")
