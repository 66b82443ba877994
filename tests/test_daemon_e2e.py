"""End to end: the real worker and engine under the daemon, on a tiny synthetic MFCC run."""
from __future__ import annotations

import pytest
import yaml

from daemon_helpers import RawClient, is_final_state, read_events, wait_exit, wait_for
from tests.run_configs import DAEMON_TINY, changed
from trainer import daemon, remote
from trainer.config import dump_config, load_config
from trainer.run.liveness import is_longhaul_process
from trainer.run.locate import create_run_dir
from trainer.run.sockets import socket_path
from trainer.run.state import StateFile
from trainer.run.status import status

@pytest.fixture
def env(tmp_path, runtime_dir):
    started: list[int] = []
    yield tmp_path, started
    for pid in started:  # only if a test failed half-way
        if is_longhaul_process(pid):
            import os
            import signal

            os.kill(pid, signal.SIGTERM)


def new_run(tmp_path, name: str, epochs: int):
    source = tmp_path / f"{name}.yaml"
    source.write_text(yaml.safe_dump(changed(DAEMON_TINY, phases=[{"name": "train", "epochs": epochs}])))
    cfg = load_config(source)
    run_dir = create_run_dir(tmp_path / "runs", name)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


def test_tiny_run_end_to_end(env):
    tmp_path, started = env
    run_dir = new_run(tmp_path, "tiny", epochs=2)  # 32 examples / batch 8 = 4 steps per epoch
    pid = daemon.launch_daemon(run_dir)
    started.append(pid)
    wait_for(lambda: socket_path(run_dir).exists(), 20, "daemon socket")
    c = RawClient(socket_path(run_dir), timeout=120)
    welcome = c.hello(client="e2e")
    assert welcome["type"] == "welcome" and welcome["run"]["daemon_pid"] == pid
    msgs = c.recv_until(is_final_state, timeout=120)
    events = [m for m in msgs if m["type"] == "event"]
    assert events[-1]["data"]["state"] == "finished", [e["message"] for e in events]
    kinds = [e["kind"] for e in events]
    assert "eval" in kinds and "checkpoint" in kinds and "finished" in kinds
    progress = [m for m in msgs if m["type"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 8
    assert any(m["type"] == "log" for m in msgs)
    wait_exit(pid, 20)
    info = status(run_dir)
    assert info["state"] == "finished" and info["step"] == 8 and info["last_checkpoint_age"] is not None
    assert info["best_eval"] is not None
    assert (run_dir / "plan.json").exists() and list((run_dir / "ckpt").iterdir())
    states = [e["data"]["state"] for e in read_events(run_dir) if e["kind"] == "state"]
    assert states == ["starting", "running", "finished"]
    # what the worker did before its first step, in order, between `starting` and `running`
    kinds = [e["data"].get("stage") or e["data"].get("state") for e in read_events(run_dir)
             if e["kind"] in ("setup", "state")]
    assert kinds[:2] == ["starting", "start"] and kinds[-3:] == ["ready", "running", "finished"]
    assert kinds[2:-3] == ["scan", "data", "model"]


def test_pause_stop_and_resume_with_the_real_engine(env):
    tmp_path, started = env
    run_dir = new_run(tmp_path, "pausable", epochs=400)  # 1600 steps: long enough to steer
    pid = daemon.launch_daemon(run_dir)
    started.append(pid)
    wait_for(lambda: StateFile(run_dir).read().get("state") == "running", 60, "the engine to start")
    ack, done = remote.request(run_dir, "pause", timeout=30)
    assert ack["ok"] and done["data"].get("state") == "paused"
    snapshot = remote.fetch_snapshot(run_dir)
    assert snapshot["state"] == "paused" and snapshot["plan"]["total_steps"] == 1600
    assert snapshot["config"]["classes"] and snapshot["config"]["model"] == "mfcc_mlp"
    ack, done = remote.request(run_dir, "checkpoint", timeout=30)
    assert ack["ok"] and done["data"]["outcome"] == "done"
    ack, done = remote.request(run_dir, "stop", timeout=60)
    assert ack["ok"] and done is not None
    wait_exit(pid, 30)
    state = StateFile(run_dir).read()
    assert status(run_dir)["state"] == "stopped" and state["stop_reason"] == "request"
    stopped_at = state["step"]
    assert 0 < stopped_at < 1600
    # `longhaul resume`: a new daemon; the engine continues from its checkpoint
    pid = daemon.launch_daemon(run_dir)
    started.append(pid)
    wait_for(lambda: any(e["kind"] == "resume" for e in read_events(run_dir)), 60, "resume event")
    resumed = [e for e in read_events(run_dir) if e["kind"] == "resume"][-1]
    assert resumed["data"]["step"] == stopped_at
    ack, _ = remote.request(run_dir, "stop", timeout=60)
    assert ack["ok"]
    wait_exit(pid, 30)
    assert status(run_dir)["state"] == "stopped"
    assert StateFile(run_dir).read()["step"] >= stopped_at
