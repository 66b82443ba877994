"""The daemon with the fake worker: handshake, streaming, requests, supervision, shutdown.

Every test starts a real daemon process (`launch_daemon`) whose worker is tests/fake_worker.py,
and talks to it over its Unix socket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from daemon_helpers import RawClient, is_final_state, make_run, read_events, wait_exit, wait_for
from trainer import daemon, protocol, remote
from trainer.daemon import hub
from trainer.run.liveness import pid_alive
from trainer.run.rundir import RunDir
from trainer.run.sockets import socket_path
from trainer.run.state import StateFile, effective_state
from trainer.run.status import status


@pytest.fixture
def env(tmp_path, runtime_dir, launcher):
    """A runs root and a Launcher (conftest.py) that kills every daemon started."""
    return tmp_path / "runs", launcher


def connect(run_dir) -> RawClient:
    return RawClient(socket_path(run_dir))


def daemon_pid(run_dir) -> int:
    return StateFile(run_dir).read()["pid"]


# ----------------------------------------------------------------------------- handshake
def test_welcome_snapshot_then_live_stream(env):
    root, launcher = env
    run_dir = make_run(root, "hs", fake={"steps": 150, "step_time": 0.01, "steps_per_epoch": 10, "event_every": 7})
    pid = launcher.start(run_dir)
    c = connect(run_dir)
    welcome = c.hello()
    assert welcome["type"] == "welcome" and welcome["version"] == protocol.PROTOCOL_VERSION
    assert welcome["run"] == {"name": "hs", "dir": str(run_dir), "daemon_pid": pid}
    snap = welcome["snapshot"]
    assert set(snap) == {"state", "config", "plan", "progress", "series", "eval", "events", "logs", "system", "preparing"}
    assert snap["preparing"] is None  # only while a feature store is prepared
    assert snap["state"] in ("starting", "running")
    assert snap["config"]["monitor"] == "val_f1_macro"
    assert snap["events"][0]["kind"] == "state" and snap["events"][0]["data"]["state"] == "starting"
    msgs = c.recv_until(is_final_state)
    kinds = {m["type"] for m in msgs}
    assert {"progress", "event", "log"} <= kinds
    events = [m for m in msgs if m["type"] == "event"]
    logs = [m for m in msgs if m["type"] == "log"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # ordered, no gaps
    assert [m["seq"] for m in logs] == list(range(logs[0]["seq"], logs[0]["seq"] + len(logs)))
    assert any(e["kind"] == "eval" for e in events) and any(e["kind"] == "alert" for e in events)
    assert logs[-1]["stream"] == "stdout" and logs[-1]["line"].startswith("step ")
    progress = [m for m in msgs if m["type"] == "progress"]
    assert progress[-1]["step"] == 150 and progress[-1]["total_steps"] == 150
    after = c.read_to_end()  # the daemon exits after the run; after the final state only the run's report
    assert all(m["type"] in ("progress", "system") or (m["type"] == "event" and m["kind"] == "report")
               for m in after), after
    wait_exit(pid, 10)
    info = status(run_dir)
    assert info["state"] == "finished" and info["step"] == 150 and info["socket"] is None
    assert not socket_path(run_dir).exists()
    # a new client of a finished run's next daemon would see the history: check the files
    states = [e["data"]["state"] for e in read_events(run_dir) if e["kind"] == "state"]
    assert states == ["starting", "running", "finished"]
    assert "step 150 " in (run_dir / "train.log").read_text()
    # the daemon left the downsampled series for later readers, valid for the final history
    from trainer import history
    from trainer.history import cache as history_cache
    from trainer.monitor import Monitor

    cached = history_cache._read_summary_cache(str(RunDir(run_dir).series_cache), history_cache._summary_key(
        str(run_dir / "history.msgpack"), Monitor("val_f1_macro", "max"), history.DEFAULT_MAX_POINTS,
        history.DEFAULT_SMOOTHING))
    assert cached is not None and cached.series["train_loss"]["step"][-1] == 150


def test_snapshot_carries_history_plan_and_eval(env):
    root, launcher = env
    run_dir = make_run(root, "snap", fake={"steps": 40, "step_time": 0.005, "steps_per_epoch": 10})
    pid = launcher.start(run_dir)
    wait_exit(pid, 20)
    # Resume the finished run's directory with a longer plan: the new daemon's snapshot holds
    # the history of the first daemon, and the plan of plan.json/its worker.
    (run_dir / "fake.json").write_text(json.dumps({"steps": 400, "step_time": 0.02, "steps_per_epoch": 10}))
    pid = launcher.start(run_dir)
    c = connect(run_dir)
    snap = c.hello()["snapshot"]
    loss = snap["series"]["train_loss"]
    assert loss["step"][:40] == list(range(1, 41)) and len(loss["value"]) == len(loss["min"]) == len(loss["max"])
    assert "val_f1_macro" in snap["series"] and "train_loss_smooth" in snap["series"]
    assert snap["eval"]["last"]["step"] >= 40 and snap["eval"]["best"]["val_f1_macro"] >= 0.1
    old_seqs = [e["seq"] for e in snap["events"]]
    assert old_seqs == sorted(old_seqs) and len(set(old_seqs)) == len(old_seqs)  # seq continues across daemons
    c.send({"type": "request", "id": 1, "action": "stop"})
    c.recv_until(is_final_state)
    wait_exit(pid, 20)


def test_plan_laid_out_after_attach_is_sent_to_the_client(env):
    root, launcher = env
    run_dir = make_run(root, "lateplan", fake={"steps": 30, "step_time": 0.01, "setup_seconds": 1.5})
    launcher.start(run_dir)
    c = connect(run_dir)
    snap = c.hello()["snapshot"]
    assert not snap["plan"].get("total_steps"), "attached too late to test this"
    msgs = c.recv_until(lambda m: m["type"] == "plan")
    assert msgs[-1]["plan"]["total_steps"] == 30 and msgs[-1]["config"]["model"] == "fake"
    c.recv_until(is_final_state)


def test_progress_to_clients_is_rate_limited_and_ends_with_the_last_step(env):
    root, launcher = env
    run_dir = make_run(root, "rate", fake={"steps": 200, "step_time": 0.01, "steps_per_epoch": 1000,
                                           "event_every": 100000})
    launcher.start(run_dir)
    c = connect(run_dir)
    c.hello()
    started = time.monotonic()
    msgs = c.recv_until(is_final_state)
    elapsed = time.monotonic() - started
    progress = [m for m in msgs if m["type"] == "progress"]
    events = [m for m in msgs if m["type"] == "event"]
    # at most one per 0.2 s, plus one flushed ahead of each event
    assert len(progress) <= elapsed / 0.2 + len(events) + 2, (len(progress), elapsed, len(events))
    assert progress[-1]["step"] == 200


def test_a_client_gets_progress_at_the_pace_it_asked_for_and_the_last_step(env):
    """hello `progress_every`: a TUI repainting every 2 s took ten progress frames per repaint."""
    root, launcher = env
    run_dir = make_run(root, "pace", fake={"steps": 150, "step_time": 0.02, "steps_per_epoch": 1000,
                                           "event_every": 100000})
    launcher.start(run_dir)
    paced, plain = connect(run_dir), connect(run_dir)
    paced.hello(progress_every=1.0)
    plain.hello()
    started = time.monotonic()
    msgs = paced.recv_until(is_final_state)
    elapsed = time.monotonic() - started
    progress = [m for m in msgs if m["type"] == "progress"]
    events = [m for m in msgs if m["type"] == "event"]
    assert len(progress) <= elapsed / 1.0 + len(events) + 2, (len(progress), elapsed, len(events))
    assert progress[-1]["step"] == 150, "the newest progress is held, not dropped"
    others = [m for m in plain.recv_until(is_final_state) if m["type"] == "progress"]
    assert len(others) > 2 * len(progress), "the pace is per client: the other one gets the daemon's rate"


def test_a_ping_changes_the_pace_and_nonsense_paces_are_clamped():
    import asyncio

    async def scenario():
        conn = hub.ClientConn(1, None, FakeWriter(), daemon.Settings(max_backlog=10_000))
        conn.set_pace(0.3)
        conn.push_progress(b"p1")  # the first one goes at once
        conn.push_progress(b"p2")
        conn.push_progress(b"p3")  # held: the newest wins
        assert conn.writer.writes == [b"p1"]
        await asyncio.sleep(0.4)
        assert conn.writer.writes == [b"p1", b"p3"]
        conn.push_progress(b"p4")  # held again, until an event: progress never falls behind one
        conn.push(b"event1", after_latest=True)
        assert b"".join(conn.writer.writes) == b"p1p3p4event1"
        await asyncio.sleep(0.4)
        assert b"".join(conn.writer.writes) == b"p1p3p4event1", "a flushed progress is not sent twice"
        conn.set_pace(0)
        conn.push_progress(b"p5")
        conn.push_progress(b"p6")
        assert conn.writer.writes[-2:] == [b"p5", b"p6"]
        for asked, kept in ((-5, 0.0), (float("nan"), 0.0), (float("inf"), 0.0), (1e9, hub.MAX_PROGRESS_EVERY),
                            ("2", 0.0), (True, 0.0), (2, 2.0)):
            conn.set_pace(asked)
            assert conn.progress_every == kept, asked
        conn.set_pace(5)
        conn.push_progress(b"p7")
        conn.abort("test")
        await asyncio.sleep(0)
        assert conn._progress_timer is None or conn._progress_timer.cancelled()

    asyncio.run(scenario())


def test_version_mismatch_gets_error_and_close(env):
    root, launcher = env
    run_dir = make_run(root, "ver", fake={"steps": 1000, "step_time": 0.01})
    launcher.start(run_dir)
    c = connect(run_dir)
    reply = c.hello(version=99)
    assert reply["type"] == "error" and reply["code"] == "version_mismatch"
    assert "99" in reply["message"] and str(protocol.PROTOCOL_VERSION) in reply["message"]
    assert c.recv() is None
    c2 = connect(run_dir)
    c2.send({"type": "ping"})
    reply = c2.recv()
    assert reply["type"] == "error" and reply["code"] == "not_hello"
    assert c2.recv() is None


# ----------------------------------------------------------------------------- many clients
def test_clients_get_the_same_events_in_order(env):
    root, launcher = env
    run_dir = make_run(root, "multi", fake={"steps": 200, "step_time": 0.01, "event_every": 3, "log_every": 2})
    launcher.start(run_dir)
    clients = [connect(run_dir) for _ in range(4)]
    for c in clients:
        assert c.hello()["type"] == "welcome"
    streams = [c.recv_until(is_final_state) for c in clients]
    per_client = []
    for msgs in streams:
        events = {m["seq"]: m for m in msgs if m["type"] == "event"}
        seqs = [m["seq"] for m in msgs if m["type"] == "event"]
        assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[-1] + 1))
        logs = [m["seq"] for m in msgs if m["type"] == "log"]
        assert logs == list(range(logs[0], logs[-1] + 1))
        per_client.append(events)
    common = set.intersection(*(set(e) for e in per_client))
    assert len(common) > 60
    for seq in common:
        assert all(events[seq] == per_client[0][seq] for events in per_client)
    assert all(max(e) == max(per_client[0]) for e in per_client)  # all saw the final event


def test_client_that_never_reads_is_dropped_without_slowing_anyone(env):
    root, launcher = env
    fake = {"steps": 500, "step_time": 0.006, "log_every": 1, "log_bytes": 1500, "event_every": 5}
    settings = {"max_backlog": 256 * 1024}

    def run_once(name, stuck: bool):
        run_dir = make_run(root, name, fake=fake)
        launcher.start(run_dir, settings=settings)
        reader = connect(run_dir)
        assert reader.hello()["type"] == "welcome"
        sleeper = None
        if stuck:
            sleeper = connect(run_dir)
            sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sleeper.send({"type": "hello", "version": protocol.PROTOCOL_VERSION, "client": "never-reads"})
        msgs = reader.recv_until(is_final_state, timeout=60)
        stats = json.loads(wait_for(lambda: (run_dir / "fake_stats.json").exists() and
                                    (run_dir / "fake_stats.json").read_text(), 10, "fake stats"))
        return run_dir, msgs, stats, sleeper

    _, _, base, _ = run_once("baseline", stuck=False)
    run_dir, msgs, stuck, sleeper = run_once("stuck", stuck=True)
    logs = [m["seq"] for m in msgs if m["type"] == "log"]
    assert logs == list(range(logs[0], logs[-1] + 1)) and len(logs) >= 450  # the reader missed nothing
    # The stuck client was cut off: what it can still read ends long before the run did.
    got = sleeper.read_to_end()
    assert len(got) < len(msgs) / 2
    assert "too slow" in (run_dir / "daemon.log").read_text()
    # The worker kept its pace. A daemon blocked by the stuck client would stop taking frames
    # altogether; the margin only absorbs the noise of a shared 2-core machine.
    rate_base = base["frames_sent"] / base["wall"]
    rate_stuck = stuck["frames_sent"] / stuck["wall"]
    assert stuck["steps"] == base["steps"] == 500
    assert rate_stuck > 0.5 * rate_base, (rate_base, rate_stuck)


# ----------------------------------------------------------------------------- bad input
def test_bad_frames_close_only_that_connection(env):
    root, launcher = env
    run_dir = make_run(root, "fuzz", fake={"steps": 2000, "step_time": 0.01})
    launcher.start(run_dir, settings={"handshake_timeout": 1.0, "frame_timeout": 1.0})
    good = connect(run_dir)
    assert good.hello()["type"] == "welcome"

    def error_code(send, hello_first=True) -> str:
        c = connect(run_dir)
        if hello_first:
            assert c.hello()["type"] == "welcome"
        send(c)
        msgs = c.read_to_end()
        errors = [m for m in msgs if m["type"] == "error"]
        assert errors, [m["type"] for m in msgs]
        return errors[-1]["code"]

    assert error_code(lambda c: c.send_raw(b"\x00\x00\x00\x03\xc1\xc1\xc1")) == "bad_frame"  # not msgpack
    assert error_code(lambda c: c.send_raw(b"\x00\x00\x00\x01\x05")) == "bad_frame"  # not a map
    assert error_code(lambda c: c.send_raw(b"\x00\x10\x00\x00")) == "frame_too_large"
    assert error_code(lambda c: c.send({"type": "launch_missiles"})) == "unknown_type"
    assert error_code(lambda c: c.send({"type": "request", "id": "x", "action": "stop"})) == "bad_field"
    assert error_code(lambda c: c.send({"type": "hello", "version": protocol.PROTOCOL_VERSION, "client": "again"})) == "unexpected_type"
    assert error_code(lambda c: c.send_raw(b"\x00\x00\x00\x64" + b"\x80" * 10)) == "bad_frame"  # half-sent
    assert error_code(lambda c: c.send_raw(b"\x00\x00"), hello_first=False) == "not_hello"  # half a header
    assert error_code(lambda c: None, hello_first=False) == "not_hello"  # silent: handshake timeout
    rng = __import__("random").Random(7)
    for _ in range(20):  # random garbage before hello
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        c = connect(run_dir)
        try:
            c.send_raw(blob)
        except (BrokenPipeError, ConnectionResetError):
            continue
        msgs = c.read_to_end()
        assert all(m["type"] == "error" for m in msgs)
    # the well-behaved client is still served
    good.send({"type": "ping"})
    msgs = good.recv_until(lambda m: m["type"] == "pong")
    assert any(m["type"] == "progress" for m in msgs)
    assert effective_state(run_dir) == "running"


def test_foreign_uid_is_refused():
    assert hub.peer_refusal(1000, 1000) is None
    assert "uid 1001 refused" in hub.peer_refusal(1001, 1000)
    a, b = socket.socketpair()
    try:
        assert hub.peer_uid(a) == os.getuid()
    finally:
        a.close()
        b.close()


def test_foreign_uid_connection_is_closed(env, tmp_path):
    import asyncio
    import threading

    root, _ = env
    run_dir = make_run(root, "uid", fake={"steps": 100000, "step_time": 0.01})
    from daemon_helpers import FAKE_WORKER
    import sys

    d = daemon.Daemon(run_dir, [sys.executable, str(FAKE_WORKER)], daemon.Settings(linger=0.1),
                      peer_uid_fn=lambda sock: os.getuid() + 1)
    loop = asyncio.new_event_loop()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", loop.run_until_complete(d.run())))
    thread.start()
    try:
        wait_for(lambda: socket_path(run_dir).exists(), 10, "socket")
        c = connect(run_dir)
        try:
            c.send({"type": "hello", "version": protocol.PROTOCOL_VERSION, "client": "intruder"})
        except BrokenPipeError:
            pass  # the refusal does not wait for the hello: the daemon may have closed already
        reply = c.recv()
        assert reply["type"] == "error" and reply["code"] == "forbidden"
        assert f"uid {os.getuid() + 1} refused" in reply["message"]
        assert c.recv() is None
    finally:
        loop.call_soon_threadsafe(d.shutdown, "test over")
        thread.join(30)
    assert result["code"] == 0
    assert StateFile(run_dir).read()["state"] == "stopped"


# ----------------------------------------------------------------------------- requests
def test_requests_ack_then_completion(env):
    root, launcher = env
    run_dir = make_run(root, "req", fake={"steps": 100000, "step_time": 0.01})
    pid = launcher.start(run_dir)
    wait_for(lambda: StateFile(run_dir).read().get("state") == "running", 10, "running")
    # raw: the ack comes first, then the completing state event names our id
    c = connect(run_dir)
    c.hello()
    c.send({"type": "request", "id": 77, "action": "pause"})
    msgs = c.recv_until(lambda m: m["type"] == "event" and m["kind"] == "request")
    acks = [i for i, m in enumerate(msgs) if m["type"] == "ack"]
    assert acks and msgs[acks[0]] == {"type": "ack", "id": 77, "ok": True, "message": "pause sent to the trainer"}
    events = [m for m in msgs[acks[0]:] if m["type"] == "event" and m["kind"] in ("state", "request")]
    assert [e["kind"] for e in events] == ["state", "request"]  # other events (eval, ...) may interleave
    assert events[0]["data"] == {"state": "paused", "request_id": 77}
    assert events[1]["data"] == {"id": 77, "action": "pause", "outcome": "done"}
    wait_for(lambda: status(run_dir)["state"] == "paused", 5, "state.json to say paused")
    ack, done = remote.request(run_dir, "pause", timeout=5)
    assert ack["ok"] is False and ack["message"] == "already paused" and done is None
    ack, done = remote.request(run_dir, "checkpoint", timeout=10)  # works while paused
    assert ack["ok"] and done["kind"] == "request" and done["data"]["outcome"] == "done"
    wait_for(lambda: "last_checkpoint" in StateFile(run_dir).read(), 5, "last_checkpoint in state.json")
    assert StateFile(run_dir).read()["last_checkpoint"]["path"].endswith("fake_ckpt")
    ack, done = remote.request(run_dir, "resume", timeout=5)
    assert ack["ok"] and done["data"]["state"] == "running"
    ack, _ = remote.request(run_dir, "resume", timeout=5)
    assert not ack["ok"] and ack["message"].startswith("not paused")
    ack, done = remote.request(run_dir, "stop", timeout=20)
    assert ack["ok"] and done["kind"] in ("request", "state")
    wait_exit(pid, 20)
    info = status(run_dir)
    assert info["state"] == "stopped"
    assert StateFile(run_dir).read()["stop_reason"] == "request"
    with pytest.raises(remote.NoDaemon, match="no running daemon"):
        remote.request(run_dir, "pause")
    assert remote.fetch_snapshot(run_dir) is None


def test_follow_logs_streams_lines(env):
    root, launcher = env
    run_dir = make_run(root, "logs", fake={"steps": 60, "step_time": 0.02})
    launcher.start(run_dir)
    lines = list(remote.follow_logs(run_dir))
    assert lines and lines[-1].startswith("step 60 ")
    numbers = [int(line.split()[1]) for line in lines if line.startswith("step ")]
    assert numbers == list(range(numbers[0], 61))


# ----------------------------------------------------------------------------- supervision
def test_crash_restart_with_backoff_then_failed(env):
    root, launcher = env
    run_dir = make_run(root, "crash", fake={"steps": 100, "step_time": 0.005, "crash_at": 3, "stderr_lines": 2},
                       daemon_cfg={"max_restarts": 2, "backoff_seconds": 0.2, "backoff_max_seconds": 0.3})
    pid = launcher.start(run_dir)
    c = connect(run_dir)
    c.hello()
    msgs = c.recv_until(is_final_state, timeout=30)
    events = [m for m in msgs if m["type"] == "event"]
    crashes = [e for e in events if e["kind"] == "crash"]
    restarts = [e for e in events if e["kind"] == "restart"]
    assert len(crashes) == 3 and len(restarts) == 2
    assert crashes[0]["data"]["returncode"] == 1 and crashes[0]["data"]["signal"] is None
    assert "RuntimeError: fake crash at step 3" in crashes[0]["data"]["traceback"]
    assert "fake crash at step 3" in crashes[0]["message"]
    assert [r["data"]["attempt"] for r in restarts] == [1, 2]
    assert [r["data"]["delay"] for r in restarts] == [0.2, 0.3]  # doubled, capped
    final = events[-1]
    assert final["data"]["state"] == "failed" and final["level"] == "error"
    assert "giving up after 2 restart(s)" in final["message"]
    assert len((run_dir / "fake_runs").read_text().split()) == 3
    wait_exit(pid, 10)
    assert status(run_dir)["state"] == "failed"
    assert "Traceback" in (run_dir / "train.log").read_text()


def test_sigkilled_worker_is_restarted_and_resumes(env):
    root, launcher = env
    run_dir = make_run(root, "oom", fake={"steps": 30, "step_time": 0.01, "crash_at": 12, "crash_runs": 1,
                                          "crash_mode": "kill", "checkpoint_every": 5})
    pid = launcher.start(run_dir)
    wait_exit(pid, 30)
    events = read_events(run_dir)
    crash = next(e for e in events if e["kind"] == "crash")
    assert crash["data"]["signal"] == signal.SIGKILL and crash["data"]["signal_name"] == "SIGKILL"
    assert crash["data"]["returncode"] == -signal.SIGKILL
    assert "out of memory" in crash["message"]
    resumed = next(e for e in events if e["kind"] == "resume")
    assert resumed["data"]["step"] == 10  # the fake resumes from its last checkpoint
    assert [e["data"]["state"] for e in events if e["kind"] == "state"] == [
        "starting", "running", "starting", "running", "finished"]
    assert status(run_dir)["state"] == "finished"


def test_stop_during_restart_backoff(env):
    root, launcher = env
    run_dir = make_run(root, "backoff", fake={"steps": 100, "step_time": 0.005, "crash_at": 2, "crash_mode": "exit"},
                       daemon_cfg={"max_restarts": 5, "backoff_seconds": 30.0, "backoff_max_seconds": 30.0})
    pid = launcher.start(run_dir)
    wait_for(lambda: any(e["kind"] == "restart" for e in read_events(run_dir)), 20, "restart event")
    ack, done = remote.request(run_dir, "pause", timeout=5)
    assert not ack["ok"] and ack["message"].startswith("no trainer is running")
    ack, done = remote.request(run_dir, "stop", timeout=10)
    assert ack["ok"] and ack["message"] == "restart cancelled"
    wait_exit(pid, 10)
    assert status(run_dir)["state"] == "stopped"
    crash = next(e for e in read_events(run_dir) if e["kind"] == "crash")
    assert crash["data"]["returncode"] == 3 and crash["message"] == "trainer exited with code 3"


def test_sigterm_stops_the_run(env):
    root, launcher = env
    run_dir = make_run(root, "term", fake={"steps": 100000, "step_time": 0.01})
    pid = launcher.start(run_dir, settings={"state_write_interval": 0.1})
    wait_for(lambda: (StateFile(run_dir).read().get("step") or 0) > 5, 10, "progress in state.json")
    c = connect(run_dir)
    c.hello()
    os.kill(pid, signal.SIGTERM)
    msgs = c.read_to_end()
    states = [m["data"]["state"] for m in msgs if m["type"] == "event" and m["kind"] == "state"]
    assert states == ["stopping", "stopped"]
    wait_exit(pid, 20)
    state = StateFile(run_dir).read()
    assert state["state"] == "stopped" and state["stop_reason"] == "signal SIGTERM"
    assert status(run_dir)["state"] == "stopped"
    assert not socket_path(run_dir).exists()
    worker_pid = int((run_dir / "fake_runs").read_text().split()[-1])
    assert not pid_alive(worker_pid)
    assert int((run_dir / "fake_ckpt").read_text()) >= 5  # the worker checkpointed on its way out


def test_worker_that_ignores_stop_is_terminated(env):
    root, launcher = env
    run_dir = make_run(root, "deaf", fake={"steps": 100000, "step_time": 0.01, "ignore_controls": True})
    pid = launcher.start(run_dir, settings={"stop_timeout": 0.5, "kill_timeout": 0.5})
    wait_for(lambda: StateFile(run_dir).read().get("state") == "running", 10, "running")
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid, 20)
    events = read_events(run_dir)
    assert events[-1]["kind"] == "state" and events[-1]["data"]["state"] == "stopped"
    crash = next(e for e in events if e["kind"] == "crash")
    assert crash["data"]["signal_name"] in ("SIGTERM", "SIGKILL")


def test_killed_daemon_leaves_an_interrupted_run_and_no_orphan(env):
    root, launcher = env
    run_dir = make_run(root, "orphan", fake={"steps": 100000, "step_time": 0.01})
    pid = launcher.start(run_dir)
    wait_for(lambda: (run_dir / "fake_runs").exists() and StateFile(run_dir).read().get("state") == "running",
             10, "worker running")
    worker_pid = int((run_dir / "fake_runs").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_exit(pid, 5)
    wait_exit(worker_pid, 10)  # the worker saw the channel close, checkpointed and stopped
    assert (run_dir / "fake_ckpt").exists()
    assert status(run_dir)["state"] == "interrupted"
    # the stale socket does not keep a new daemon from taking the run
    assert socket_path(run_dir).exists()
    pid2 = launcher.start(run_dir)
    assert pid2 != pid and effective_state(run_dir) in ("starting", "running")
    assert remote.request(run_dir, "stop", timeout=20)[0]["ok"]
    wait_exit(pid2, 20)


def test_second_daemon_is_refused(env):
    root, launcher = env
    run_dir = make_run(root, "twice", fake={"steps": 100000, "step_time": 0.01})
    pid = launcher.start(run_dir)
    with pytest.raises(daemon.DaemonError, match="already"):
        daemon.launch_daemon(run_dir)
    import asyncio

    with pytest.raises(daemon.DaemonError, match="already owned by a live daemon"):
        asyncio.run(daemon.Daemon(run_dir).run())
    assert StateFile(run_dir).read()["pid"] == pid
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid, 20)


def test_bad_config_fails_the_run(env):
    root, launcher = env
    run_dir = make_run(root, "badcfg")
    (run_dir / "config.yaml").write_text("optim: {lr: -1}\n")
    with pytest.raises(daemon.DaemonError, match="optim.lr"):  # start reports the death and its cause
        launcher.start(run_dir, wait_socket=False)
    events = read_events(run_dir)
    assert events[-1]["data"]["state"] == "failed" and "optim.lr" in events[-1]["message"]
    assert status(run_dir)["state"] == "failed"


# ----------------------------------------------------------------------------- client queues
class FakeTransport:
    HIGH_WATER = 100

    def __init__(self):
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self):
        return self.buffered

    def get_write_buffer_limits(self):
        return self.HIGH_WATER // 4, self.HIGH_WATER

    def abort(self):
        self.aborted = True


class FakeWriter:
    def __init__(self):
        self.transport = FakeTransport()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_client_that_keeps_up_gets_every_frame_written_at_once_in_order():
    conn = hub.ClientConn(1, None, FakeWriter(), daemon.Settings(max_backlog=1000))
    conn.push_latest("progress", b"p1")
    conn.push(b"log1")
    conn.push(b"event1", after_latest=True)
    assert conn.writer.writes == [b"p1", b"log1", b"event1"]
    assert not conn.ordered and not conn.latest and not conn.wake.is_set()


def test_backed_up_client_queue_coalesces_orders_and_bounds():
    import asyncio

    async def scenario():
        conn = hub.ClientConn(1, None, FakeWriter(), daemon.Settings(max_backlog=1000))
        conn.writer.transport.buffered = 101  # over the transport's high-water mark
        conn.push_latest("progress", b"p1")
        conn.push_latest("progress", b"p2")  # latest wins
        conn.push_latest("system", b"s1")
        conn.push(b"log1")
        assert conn.writer.writes == [] and conn.wake.is_set()  # left to the sender task
        assert list(conn.ordered) == [b"log1"] and conn.latest == {"progress": b"p2", "system": b"s1"}
        conn.push(b"event1", after_latest=True)  # an event never overtakes earlier progress
        assert list(conn.ordered) == [b"log1", b"p2", b"s1", b"event1"] and conn.latest == {}
        # a big welcome still in the transport buffer is neither backlog nor backed up
        conn.allowance = 5000
        conn.writer.transport.buffered = 5000
        assert conn.backlog() == conn.ordered_bytes == 14
        conn.writer.transport.buffered = 5900
        assert conn.backlog() == 914
        conn.push(b"x" * 100)  # 1014 > 1000: dropped, nothing kept
        assert conn.closed and conn.writer.transport.aborted and "too slow" in conn.close_reason
        assert not conn.ordered and conn.ordered_bytes == 0
        conn.push(b"more")
        assert not conn.ordered and conn.writer.writes == []

    asyncio.run(scenario())
