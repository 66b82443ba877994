"""Faults the daemon and its journals meet (issue 8, items 1, 2 and 11): a torn events.jsonl, a
disk that fills up mid-run, a stop whose final checkpoint fails, a power cut after a checkpoint.

Torch-free: the daemon runs tests/fake_worker.py; full disks are small tmpfs mounts
(tests/tmpfs.py). Each test names the fault it reproduces.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
import threading

from daemon_helpers import FAKE_WORKER, RawClient, is_final_state, make_run, wait_exit, wait_for
from test_daemon import env  # noqa: F401  (fixture: a runs root and a Launcher)
from trainer import console, daemon, remote
from trainer.run import linefile
from trainer.run.events import EventLog, last_seq, read_tail
from trainer.run.linefile import AppendFile, tail_lines
from trainer.run.rundir import RunDir
from trainer.run.sockets import socket_path
from trainer.run.state import StateFile
from trainer.run.status import status

TORN = '{"seq": 7, "time": 1.0, "kind": "alert", "lev'


def lines_of(path) -> list[str]:
    return path.read_text().split("\n")


def events_after_torn(path) -> list[dict]:
    """The events after the torn line; fails if any of those lines does not parse."""
    lines = lines_of(path)
    assert lines[-1] == "", "events.jsonl does not end with a newline"
    after = lines[lines.index(TORN) + 1:-1]
    return [json.loads(line) for line in after]


def daemon_state(run_dir) -> dict:
    return StateFile(run_dir).read()


# ----------------------------------------------------------------------------- readers and writer
def test_readers_skip_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 5, "time": 1.0}\n{"seq": 6, "time": 2.0}\n' + TORN)
    assert tail_lines(path, 5) == ['{"seq": 5, "time": 1.0}', '{"seq": 6, "time": 2.0}']
    assert last_seq(RunDir(tmp_path).events) == 6
    assert [e["seq"] for e in read_tail(path, 10)] == [5, 6]
    log = tmp_path / "train.log"
    log.write_text("line 1\nunfinished text line")  # a text log's last line is kept
    assert tail_lines(log, 5) == ["line 1", "unfinished text line"]


def test_event_log_starts_on_a_fresh_line_after_a_torn_one(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 6, "time": 2.0, "kind": "state", "level": "info", "message": "x", "data": {}}\n' + TORN)
    log = EventLog(path).open()
    body = log.add("state", "info", "starting", {"state": "starting"})
    log.close()
    assert body["seq"] == 7
    assert [e["seq"] for e in events_after_torn(path)] == [7]


def test_short_write_is_cut_back_and_held_lines_are_written_later(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, keep=100).open()
    log.add("alert", "info", "first", {})
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:  # a full disk: half of the line goes in, then ENOSPC
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(linefile.os, "write", failing_write)
    log.add("alert", "info", "second", {"text": "x" * 100})  # never raises into the caller
    log.add("alert", "info", "third", {})
    assert log.error is not None and log.held == 2
    assert path.read_text().endswith("\n")  # the half line was cut back off
    assert [e["message"] for e in map(json.loads, path.read_text().splitlines())] == ["first"]
    monkeypatch.setattr(linefile.os, "write", real_write)
    assert log.retry() and log.error is None and log.held == 0
    log.close()
    assert [e["message"] for e in map(json.loads, path.read_text().splitlines())] == ["first", "second", "third"]


def test_append_file_on_a_full_tmpfs_drops_and_counts_then_resumes(tmpfs):
    fs = tmpfs(1)
    path = fs.path / "train.log"
    out = AppendFile(path).open()
    assert out.append(["before"])
    filler = fs.fill()
    assert not out.append(["lost " + "y" * 8000, "lost too"])
    assert out.failing and out.lost == 2
    assert path.read_text() == "before\n"
    filler.unlink()
    assert out.append(["after"]) and not out.failing and out.take_lost() == 2
    out.close()
    assert path.read_text() == "before\nafter\n"


def test_console_publisher_fsyncs_events_at_a_checkpoint_and_survives_a_full_disk(tmpfs, monkeypatch, capsys):
    fs = tmpfs(1)
    run_dir = fs.path / "run"
    run_dir.mkdir()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    pub = console.ConsolePublisher(run_dir, "run", quiet=True)
    pub.started()
    synced.clear()
    pub.event("checkpoint", "info", "checkpoint at step 5", step=5, path="ckpt/step-5")
    assert str(run_dir / "events.jsonl") in synced
    filler = fs.fill()
    pub.event("alert", "warning", "during the full disk", what="x")  # no OSError into the trainer
    pub.event("state", "info", "paused", state="paused", reason="disk_full")
    assert "cannot write" in capsys.readouterr().err
    filler.unlink()
    pub.event("state", "info", "stopped", state="stopped")
    state = StateFile(run_dir).read()
    assert state["state"] == "stopped" and state["pid"] is None and state["pause_reason"] is None
    messages = [json.loads(line)["message"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert messages[-3:] == ["during the full disk", "paused", "stopped"]


# ----------------------------------------------------------------------------- the daemon
def test_next_daemon_does_not_glue_its_first_event_onto_a_torn_line(env):
    root, launcher = env
    run_dir = make_run(root, "torn", fake={"steps": 20, "step_time": 0.005})
    (run_dir / "events.jsonl").write_text(
        '{"seq": 6, "time": 2.0, "kind": "state", "level": "info", "message": "x", "data": {"state": "running"}}\n'
        + TORN)
    pid = launcher.start(run_dir)
    wait_exit(pid, 20)
    events = events_after_torn(run_dir / "events.jsonl")
    assert events[0]["kind"] == "state" and events[0]["data"]["state"] == "starting" and events[0]["seq"] == 7
    assert [e for e in events if e["kind"] == "state"][-1]["data"]["state"] == "finished"


def test_full_disk_mid_run_keeps_the_relay_and_state_json_becomes_true(env, tmpfs):
    _root, launcher = env
    fs = tmpfs(6)
    run_dir = make_run(fs.path / "runs", "full", fake={
        "steps": 10**6, "step_time": 0.01, "log_bytes": 400, "event_every": 20, "write_history": False})
    pid = launcher.start(run_dir, settings={"write_retry_interval": 0.1, "state_write_interval": 0.1})
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "running")
    c = RawClient(socket_path(run_dir))
    c.hello()
    filler = fs.fill()
    # train.log and events.jsonl fail (once their last page is full): the daemon says so once
    # per file (the next line is on the same page: writes may come and go before it is full)
    # and keeps relaying
    failing = set()

    def disk_full_alert(m):
        if m["type"] == "event" and m["kind"] == "alert" and m["data"].get("what") == "disk_full":
            assert "cannot write" in m["message"]
            failing.add(m["data"]["file"])
        return failing >= {"train.log", "events.jsonl"}  # state.json too, when it is due

    c.recv_until(disk_full_alert)
    c.recv_until(lambda m: m["type"] == "log")
    c.recv_until(lambda m: m["type"] == "log")  # still relayed after the failure
    # a transition while the disk is full: state.json cannot follow yet
    ack, done = remote.request(run_dir, "pause", timeout=10)
    assert ack["ok"] and done["data"]["state"] == "paused"
    assert daemon_state(run_dir)["state"] == "running"  # stale while the disk is full
    filler.unlink()
    wait_for(lambda: daemon_state(run_dir).get("state") == "paused", 10, "state.json to say paused")
    assert daemon_state(run_dir)["pause_reason"] == "request"
    c.recv_until(lambda m: m["type"] == "event" and m["kind"] == "alert" and m["data"].get("what") == "write_resumed"
                 and m["data"]["file"] == "events.jsonl")
    remote.request(run_dir, "resume", timeout=10)
    c.recv_until(lambda m: m["type"] == "log")
    ack, _ = remote.request(run_dir, "stop", timeout=20)
    assert ack["ok"]
    wait_exit(pid, 20)
    assert daemon_state(run_dir)["state"] == "stopped"
    text = (run_dir / "events.jsonl").read_text()
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.splitlines()]  # no torn line anywhere
    states = [e["data"]["state"] for e in events if e["kind"] == "state"]
    assert states == ["starting", "running", "paused", "running", "stopping", "stopped"]
    resumed = [e for e in events if e["data"].get("what") == "write_resumed" and e["data"]["file"] == "train.log"]
    assert resumed and resumed[0]["data"]["lost"] > 0 and "line(s) were lost" in resumed[0]["message"]
    daemon_log = (run_dir / "daemon.log").read_text()
    assert "Task exception was never retrieved" not in daemon_log and "daemon task failed" not in daemon_log


def test_trainer_pause_for_a_full_disk_is_a_real_state_and_resume_is_forwarded(env, tmpfs):
    _root, launcher = env
    fs = tmpfs(4)
    run_dir = make_run(fs.path / "runs", "diskpause", fake={
        "steps": 10**6, "step_time": 0.01, "write_history": False, "pause_below_kb": 1024})
    pid = launcher.start(run_dir)
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "running")
    filler = fs.fill(leave_kb=512)  # short of the trainer's margin, room for state.json
    wait_for(lambda: daemon_state(run_dir).get("state") == "paused", 10, "state.json to say paused")
    assert daemon_state(run_dir)["pause_reason"] == "disk_full"
    assert status(run_dir)["state"] == "paused"
    ack, done = remote.request(run_dir, "resume", timeout=10)
    assert ack["ok"], "a resume while paused for the disk must reach the trainer"
    assert done["kind"] == "request" and done["data"]["outcome"] == "failed" and "still full" in done["message"]
    filler.unlink()
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "running again")
    assert daemon_state(run_dir)["pause_reason"] is None
    remote.request(run_dir, "stop", timeout=20)
    wait_exit(pid, 20)


def test_refused_stop_goes_back_to_running_and_a_second_stop_works(env):
    root, launcher = env
    run_dir = make_run(root, "refuse", fake={"steps": 10**6, "step_time": 0.01, "fail_checkpoints": 1})
    pid = launcher.start(run_dir, settings={"stop_timeout": 1.0, "state_write_interval": 0.1})
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "running")
    ack, done = remote.request(run_dir, "stop", timeout=20)
    assert ack["ok"] and done["kind"] == "request"
    assert done["data"]["outcome"] == "failed" and done["data"]["action"] == "stop"
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "state.json back to running")
    assert daemon_state(run_dir)["stop_reason"] is None
    # the stop's timeout (1 s) was cancelled: the trainer trains on well past it
    step = daemon_state(run_dir).get("step") or 0
    wait_for(lambda: (daemon_state(run_dir).get("step") or 0) > step + 200, 20, "training to go on")
    ack, done = remote.request(run_dir, "stop", timeout=20)
    assert ack["ok"] and done["data"]["outcome"] == "done"
    wait_exit(pid, 20)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    states = [e["data"]["state"] for e in events if e["kind"] == "state"]
    assert states == ["starting", "running", "stopping", "running", "stopping", "stopped"]
    assert not any(e["kind"] == "crash" for e in events)
    assert events[-1]["level"] == "info" and not events[-1]["data"].get("checkpoint_failed")


def test_sigterm_with_a_failing_final_checkpoint_ends_stopped_with_a_warning(env):
    root, launcher = env
    run_dir = make_run(root, "termfail", fake={"steps": 10**6, "step_time": 0.01, "fail_checkpoints": 99})
    pid = launcher.start(run_dir)  # stop_timeout 20 s: the daemon must not wait for it
    wait_for(lambda: daemon_state(run_dir).get("state") == "running", 10, "running")
    c = RawClient(socket_path(run_dir))
    c.hello()
    os.kill(pid, signal.SIGTERM)
    final = c.recv_until(is_final_state, timeout=10)[-1]
    assert final["data"]["state"] == "stopped" and final["level"] == "warning"
    assert final["data"]["checkpoint_failed"] is True and "last checkpoint failed" in final["message"]
    wait_exit(pid, 10)
    assert daemon_state(run_dir)["state"] == "stopped"


def test_events_are_fsynced_when_a_checkpoint_is_relayed(env, monkeypatch):
    root, _ = env
    run_dir = make_run(root, "sync", fake={"steps": 10**6, "step_time": 0.01, "checkpoint_every": 30})
    events_path = str(run_dir / "events.jsonl")
    synced_sizes = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == events_path:
            synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    d = daemon.Daemon(run_dir, [sys.executable, str(FAKE_WORKER)], daemon.Settings(linger=0.1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(d.run()))
    thread.start()
    try:
        def first_checkpoint_end():
            path = run_dir / "events.jsonl"
            text = path.read_text() if path.exists() else ""
            at = text.find('"kind": "checkpoint"')
            return at >= 0 and text.index("\n", at) + 1

        end = wait_for(first_checkpoint_end, 20, "a checkpoint event")
        wait_for(lambda: any(size >= end for size in synced_sizes), 10, "events.jsonl fsynced after the checkpoint")
        assert d.state == "running"  # synced at the checkpoint, not only at the exit
    finally:
        loop.call_soon_threadsafe(d.shutdown, "test over")
        thread.join(30)
        loop.close()
