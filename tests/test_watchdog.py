"""The stall watchdog: the pure decision (StallWatch), then the daemon with the fake trainer
stopped (SIGSTOP) or hung, and the real engine stopped, killed by the watchdog, restarted and
ending bit-identical to an uninterrupted run."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from tests.daemon_helpers import make_run, read_events, wait_exit, wait_for
from tests.longhaul_cli import assert_bit_identical, cli, cli_env, logged_steps, status
from tests.run_configs import POWERCUT
from trainer.watchdog import FLOOR, STEP_TIMES, StallWatch


# ---------------------------------------------------------------------- the decision
def stepping(watch: StallWatch, steps: int, step_time: float, start: float = 0.0) -> float:
    now = start
    for step in range(1, steps + 1):
        now += step_time
        watch.progress(step, now)
    return now


def test_default_limit_is_a_multiple_of_the_median_step_time_with_a_floor():
    watch = StallWatch(None, setup_seconds=100.0)
    watch.worker_started(0.0)
    assert watch.limit() == 100.0  # before the first step: the set-up limit
    stepping(watch, 30, 1.0)
    assert watch.limit() == FLOOR  # 20 x 1 s is under the floor
    slow = StallWatch(None, setup_seconds=100.0)
    slow.worker_started(0.0)
    stepping(slow, 30, 40.0)
    assert slow.limit() == STEP_TIMES * 40.0
    fixed = StallWatch(7.0, setup_seconds=100.0)
    fixed.worker_started(0.0)
    stepping(fixed, 3, 1.0)
    assert fixed.limit() == 7.0


def test_a_stall_is_reported_once_and_ended_by_life():
    watch = StallWatch(10.0, setup_seconds=100.0)
    watch.worker_started(0.0)
    now = stepping(watch, 5, 1.0)
    assert watch.check("running", now + 9.9) is None
    stall = watch.check("running", now + 10.5)
    assert stall is not None and stall.step == 5 and stall.first_step and stall.seconds == pytest.approx(10.5)
    assert watch.check("running", now + 30.0) is None  # once per stall
    assert watch.progress(5, now + 40.0) == pytest.approx(40.0)  # an evaluation's keep-alive ends it
    assert watch.alive(now + 41.0) is None  # and only once


def test_paused_and_ended_runs_are_never_stalled_and_the_clock_restarts_after_a_pause():
    watch = StallWatch(10.0, setup_seconds=100.0)
    watch.worker_started(0.0)
    now = stepping(watch, 3, 1.0)
    for state in ("paused", "stopping", "finished", None):
        assert watch.check(state, now + 1000.0) is None
    assert watch.check("running", now + 1005.0) is None  # 5 s since the pause ended
    assert watch.check("running", now + 1011.0) is not None


def test_set_up_limit_before_the_first_step_and_a_restarted_worker_ends_the_stall():
    watch = StallWatch(5.0, setup_seconds=60.0)
    watch.worker_started(0.0)
    assert watch.check("starting", 59.0) is None
    assert not watch.check("starting", 61.0).first_step
    assert watch.alive(62.0) == pytest.approx(62.0)  # set-up life ends a stall in set-up


def test_a_restarted_worker_ends_the_stall_with_its_first_progress_not_its_set_up():
    watch = StallWatch(5.0, setup_seconds=60.0)
    watch.worker_started(0.0)
    now = stepping(watch, 3, 1.0)
    assert watch.check("running", now + 6.0).first_step
    watch.worker_started(now + 8.0)  # the watchdog killed it; the restart begins
    assert watch.alive(now + 9.0) is None  # `setup` events: not yet progress
    assert watch.check("starting", now + 30.0) is None
    assert watch.progress(4, now + 40.0) == pytest.approx(40.0)  # stalled since step 3, over at 40 s


def test_a_new_phase_or_a_compile_trial_gets_the_set_up_limit_until_it_has_compiled():
    watch = StallWatch(5.0, setup_seconds=600.0)
    watch.worker_started(0.0)
    now = stepping(watch, 3, 1.0)
    watch.event("phase", {"index": 1}, now)
    assert watch.check("running", now + 100.0) is None  # the phase's first step may compile
    now = stepping(watch, 3, 1.0, start=now + 100.0)
    assert watch.check("running", now + 6.0) is not None  # back to the step limit
    watch.progress(7, now + 7.0)
    watch.event("compile", {"what": "trial"}, now + 7.0)
    now = stepping(watch, 5, 1.0, start=now + 7.0)  # eager steps of the trial (steps 1-5 again: no step times)
    assert watch.check("running", now + 300.0) is None  # then a compiled step compiles
    watch.event("compile", {"what": "decided"}, now + 301.0)
    assert watch.check("running", now + 307.0) is not None


# ---------------------------------------------------------------------- the daemon, fake trainer
@pytest.fixture
def env(tmp_path, runtime_dir, launcher):
    """A runs root and a Launcher (conftest.py) that kills every daemon started."""
    return tmp_path / "runs", launcher


def worker_pid(run_dir) -> int:
    return wait_for(lambda: int((run_dir / "fake_runs").read_text().split()[-1])
                    if (run_dir / "fake_runs").exists() else None, 20, "the worker to start")


def alerts(run_dir, what: str) -> list[dict]:
    return [e for e in read_events(run_dir) if e["kind"] == "alert" and e["data"].get("what") == what]


def test_a_stopped_trainer_is_alerted_and_goes_on_when_continued(env):
    root, launcher = env
    inbox = root.parent / "inbox"
    inbox.mkdir()
    run_dir = make_run(root, "stopped", fake={"steps": 1200, "step_time": 0.01, "log_every": 0},
                       sections={"watchdog": {"stall_seconds": 2.0},
                                 "notify": [{"on": ["stalled"], "command": f"cat > {inbox}/$LONGHAUL_EVENT.json"}]})
    pid = launcher.start(run_dir)
    worker = worker_pid(run_dir)
    wait_for(lambda: any(e["kind"] == "eval" for e in read_events(run_dir)), 20, "training steps")
    os.kill(worker, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # a loaded box may pause the trainer for 2 s before: the alert of the SIGSTOP is the one
        alert = wait_for(lambda: [a for a in alerts(run_dir, "stalled") if a["data"].get("process") == "stopped"],
                         20, "the stall alert")[0]
        seconds = time.monotonic() - stopped_at
    finally:
        os.kill(worker, signal.SIGCONT)
    assert alert["level"] == "error" and alert["data"]["process"] == "stopped"
    assert f"kill -CONT {worker}" in alert["message"] and alert["data"]["restart"] is False
    assert seconds < 2.0 + 0.5 + 5.0, f"the stall was alerted {seconds:.1f} s after the trainer stopped"
    wait_exit(pid, 60)
    ended = alerts(run_dir, "stalled")[-1]
    assert ended["level"] == "info" and "stall over" in ended["message"]
    assert [e["data"]["state"] for e in read_events(run_dir) if e["kind"] == "state"][-1] == "finished"
    # the stack request was delivered when the process continued
    assert "most recent call first" in (run_dir / "train.log").read_text()
    told = json.loads((inbox / "stalled.json").read_text())  # the contract's `stalled` rule
    assert told["event"] == "stalled" and told["level"] == "error" and told["data"]["process"] == "stopped"


def test_a_hung_trainer_has_its_stacks_written_to_train_log(env):
    root, launcher = env
    run_dir = make_run(root, "hung", fake={"steps": 60, "step_time": 0.01, "hang_at": 20, "hang_seconds": 6,
                                           "log_every": 0}, sections={"watchdog": {"stall_seconds": 2.0}})
    pid = launcher.start(run_dir)
    alert = wait_for(lambda: [a for a in alerts(run_dir, "stalled") if a["data"].get("step") == 19], 30,
                     "the stall alert")[0]
    assert alert["data"]["process"] in ("sleeping", "running")
    log_text = wait_for(lambda: "in hang" in (run_dir / "train.log").read_text()
                        and (run_dir / "train.log").read_text(), 10, "the stacks in train.log")
    assert "most recent call first" in log_text and "daemon-sender" not in alert["message"]
    wait_exit(pid, 60)
    assert alerts(run_dir, "stalled")[-1]["level"] == "info"
    assert (run_dir / "fake_runs").read_text().split().__len__() == 1  # no restart without watchdog.restart


def test_with_restart_a_stalled_trainer_is_killed_and_restarted_from_its_checkpoint(env):
    root, launcher = env
    run_dir = make_run(root, "restart", fake={"steps": 80, "step_time": 0.01, "hang_at": 30, "checkpoint_every": 10,
                                              "log_every": 0},
                       sections={"watchdog": {"stall_seconds": 1.0, "restart": True}})
    pid = launcher.start(run_dir)
    wait_exit(pid, 60)
    events = read_events(run_dir)
    stall = next(e for e in events if e["kind"] == "alert" and e["data"].get("what") == "stalled")
    assert stall["data"]["restart"] is True and "killing it" in stall["message"]
    crash = next(e for e in events if e["kind"] == "crash")
    assert crash["data"]["signal_name"] == "SIGKILL" and "stall watchdog" in crash["message"]
    assert "out of memory" not in crash["message"]
    assert next(e for e in events if e["kind"] == "resume")["data"]["step"] == 20  # it hung before checkpoint 30
    assert [e["data"]["state"] for e in events if e["kind"] == "state"][-1] == "finished"
    assert alerts(run_dir, "stalled")[-1]["level"] == "info"  # the new worker's progress ended it


# ---------------------------------------------------------------------- the real engine
@pytest.mark.slow
def test_sigstopped_engine_is_restarted_by_the_watchdog_and_ends_bit_identical(tmp_path, runtime_dir):
    from trainer.run.state import StateFile

    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "stall.yaml"
    # 1,350 steps: a quiet box trains this model at hundreds of steps a second, and the stop must
    # come while it trains
    config.write_text(yaml.safe_dump({**POWERCUT, "name": "stall", "phases": [{"name": "a", "epochs": 150}],
                                      "watchdog": {"stall_seconds": 5.0, "restart": True},
                                      "daemon": {"backoff_seconds": 0.5}}))
    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet")
    cli(env, "start", str(config))
    run_dir = tmp_path / "runs" / "stall"
    state = lambda: StateFile(run_dir).read()  # read here: a status process per poll is too slow
    wait_for(lambda: state().get("state") == "running" and (state().get("step") or 0) >= 40, 180,
             "training progress", interval=0.01)
    worker = psutil.Process(state()["pid"]).children()[0]
    worker.suspend()  # SIGSTOP
    assert logged_steps(run_dir) < state()["total_steps"], "the run ended before the stop; lengthen it"
    wait_for(lambda: status(env, "stall")["state"] == "finished", 300, "the run to finish")
    events = read_events(run_dir)
    assert any(e["kind"] == "alert" and e["data"].get("what") == "stalled" for e in events)
    assert any(e["kind"] == "crash" and "stall watchdog" in e["message"] for e in events)
    assert not worker.is_running()
    assert_bit_identical(run_dir, tmp_path / "reference")


# ---------------------------------------------------------------------- the kill, decided late
class FakeSupervisor:
    def __init__(self, pid: int, group: bool = False):
        self.pid, self.group, self.killed = pid, group, None

    def kill_stalled(self, why: str) -> None:
        self.killed = why


def stalled_watch(monkeypatch, state: str = "running"):
    from types import SimpleNamespace

    from trainer.config import AlertsConfig, WatchdogConfig
    from trainer.daemon import watch as watch_module

    monkeypatch.setattr(watch_module, "STACKS_WAIT", 0.2)
    monkeypatch.setattr(watch_module.os, "kill", lambda pid, sig: None)  # no process to ask for stacks
    cfg = SimpleNamespace(watchdog=WatchdogConfig(stall_seconds=1.0, restart=True), alerts=AlertsConfig(),
                          daemon=SimpleNamespace(system_interval=0.5))
    supervisor, emitted, tasks = FakeSupervisor(os.getpid()), [], []
    states = {"now": state}
    watch = watch_module.RunWatch(cfg, lambda *event: emitted.append(event), supervisor, lambda: states["now"],
                                  lambda coro: tasks.append(asyncio.ensure_future(coro)))
    return watch, supervisor, emitted, tasks, states


@pytest.mark.parametrize("then, killed", [("nothing", True), ("progress", False), ("pause", False)])
def test_the_kill_waits_for_the_stacks_and_spares_a_trainer_that_recovered(monkeypatch, then, killed):
    async def scenario():
        watch, supervisor, emitted, tasks, states = stalled_watch(monkeypatch)
        watch.worker_started()
        watch.progress({"step": 1}, True)
        watch.stalls.last_life -= 5.0  # 5 s without progress
        watch._stalled(watch.stalls.check("running", time.monotonic()))
        assert emitted[-1][2].startswith("stalled") and supervisor.killed is None
        if then == "progress":
            watch.progress({"step": 2}, True)
        elif then == "pause":
            states["now"] = "paused"
        await asyncio.gather(*tasks)
        return supervisor.killed

    result = asyncio.run(scenario())
    assert (result is not None) == killed


AGENT = """
import subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
ranks = [subprocess.Popen(sleep + ["-m", "trainer.worker"]) for _ in range(2)]
loader = subprocess.Popen(sleep)
print(*[p.pid for p in ranks + [loader]], flush=True)
time.sleep(120)
"""


def test_a_stalled_group_asks_its_ranks_for_stacks_never_torchruns_agent(monkeypatch):
    """In a data-parallel run the worker is torchrun's agent, which dies of the stacks signal: the
    ranks (its children running trainer.worker) are asked, and the stopped one is named."""
    from trainer.daemon import watch as watch_module
    from trainer.watchdog import STACKS_SIGNAL

    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        *ranks, loader = map(int, agent.stdout.readline().split())
        os.kill(ranks[1], signal.SIGSTOP)
        wait_for(lambda: psutil.Process(ranks[1]).status() == psutil.STATUS_STOPPED, 10, "the rank to stop")

        async def scenario():
            watch, supervisor, emitted, tasks, _ = stalled_watch(monkeypatch)
            supervisor.pid, supervisor.group = agent.pid, True
            signalled = []
            monkeypatch.setattr(watch_module.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
            watch.worker_started()
            watch.progress({"step": 3}, True)
            watch.stalls.last_life -= 5.0
            watch._stalled(watch.stalls.check("running", time.monotonic()))
            await asyncio.gather(*tasks)
            return signalled, emitted[-1], supervisor.killed

        signalled, alert, killed = asyncio.run(scenario())
        assert sorted(signalled) == sorted((rank, STACKS_SIGNAL) for rank in ranks)  # not the agent, not a loader
        assert alert[3]["pid"] == ranks[1] and alert[3]["process"] == psutil.STATUS_STOPPED
        assert f"kill -CONT {ranks[1]}" in alert[2]
        assert killed is not None  # the supervisor kills the agent, whose ranks die with it
    finally:
        os.killpg(agent.pid, signal.SIGKILL)


def test_a_stall_limit_shorter_than_an_evaluation_report_is_warned_about():
    from trainer.config import RunConfig, config_warnings

    short = dict(config_warnings(RunConfig.model_validate({"watchdog": {"stall_seconds": 5}})))
    assert "validation batch" in short["watchdog.stall_seconds"]
    assert "watchdog.stall_seconds" not in dict(config_warnings(RunConfig.model_validate({})))
    assert "watchdog.stall_seconds" not in dict(config_warnings(RunConfig.model_validate(
        {"watchdog": {"stall_seconds": 600}})))
