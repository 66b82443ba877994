"""Notifications: which events a rule is on, the command's stdin and environment, its timeout,
the rate limit, failures as alerts, the per-user file's errors, `start`'s refusal and
`notify --test`, and a daemon that tells a rule of a crash, a restart and the run's end."""
import asyncio
import json
import os
import re
import time
from pathlib import Path

import psutil
import pytest

from tests.daemon_helpers import make_run, read_events, wait_exit, wait_for
from tests.longhaul_cli import cli, cli_env, status
from trainer import notify
from trainer.config import ALERT_WHATS, ConfigError, NotifyRule
from trainer.notify import Notifier, Rule, event_names, load_user_rules, run_command
from trainer.run.state import StateFile

ROOT = Path(__file__).resolve().parent.parent


def rule(command: str, on=("*",), timeout: float = 10.0, min_interval: float = 0.0) -> Rule:
    return Rule(frozenset(on), command, timeout, min_interval, "test rule")


def event(kind: str, level: str = "info", message: str = "m", **data) -> dict:
    return {"kind": kind, "level": level, "message": message, "data": data, "time": time.time(), "seq": 1}


# ---------------------------------------------------------------------- naming events
@pytest.mark.parametrize("body, names", [
    (event("state", state="finished"), ["finished"]),
    (event("state", "error", state="failed"), ["failed"]),
    (event("state", state="running"), []),
    (event("crash", "error"), ["crash"]),
    (event("restart", "warning"), ["restart"]),
    (event("eval", improved=True), ["new_best"]),
    (event("eval", improved=False), []),
    (event("alert", "error", what="stalled"), ["stalled", "alert"]),
    (event("alert", "info", what="stalled"), ["resolved"]),
    (event("contention", "warning", alert="oversubscribed"), ["oversubscribed", "alert"]),
    (event("alert", "warning", what="notify_failed"), []),
    (event("evaluation", what="evaluation"), ["evaluation"]),
    (event("evaluation", what="evaluation_started"), []),
    (event("checkpoint"), []),
])
def test_event_names(body, names):
    assert event_names(body) == names


def test_every_alert_in_the_protocol_is_a_name_a_rule_may_use():
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    table = text[text.index("| `what` | level | from |"):]
    table = table[:table.index("\n\n")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)) - {"what"}
    assert documented and documented <= set(ALERT_WHATS), documented - set(ALERT_WHATS)
    assert set(ALERT_WHATS) <= documented, set(ALERT_WHATS) - documented


def test_a_misspelt_event_name_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'finished'"):
        NotifyRule(on=["finshed"], command="true")


# ---------------------------------------------------------------------- the command
def test_the_command_gets_the_event_on_stdin_and_in_the_environment(tmp_path):
    out = tmp_path / "out"
    body = notify.message_of("birds", "box", "finished", event("state", message="finished", state="finished"))
    cmd = f'cat > {out}.json; echo "$LONGHAUL_EVENT|$LONGHAUL_RUN|$LONGHAUL_TITLE|$LONGHAUL_MESSAGE" > {out}.env'
    outcome = asyncio.run(run_command(rule(cmd), body, tmp_path))
    assert outcome.ok and outcome.returncode == 0
    sent = json.loads(Path(f"{out}.json").read_text())
    assert sent["event"] == "finished" and sent["run"] == "birds" and sent["data"] == {"state": "finished"}
    assert Path(f"{out}.env").read_text().strip() == "finished|birds|longhaul birds@box: finished|finished"


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    body = notify.message_of("r", "h", "test", event("test"))
    started = time.monotonic()
    outcome = asyncio.run(run_command(rule(f"sleep 300 & echo $! > {pids}; sleep 300", timeout=1.0), body))
    assert outcome.timed_out and not outcome.ok
    assert time.monotonic() - started < 5.0
    assert "timed out after 1 s" in outcome.describe(1.0)
    child = int(pids.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_failing_command_says_its_exit_status_and_last_line():
    body = notify.message_of("r", "h", "test", event("test"))
    outcome = asyncio.run(run_command(rule("echo 'curl: (6) Could not resolve host' >&2; exit 6"), body))
    assert not outcome.ok and outcome.describe(10) == "exit status 6: curl: (6) Could not resolve host"


# ---------------------------------------------------------------------- the notifier
class Recorder:
    """A Notifier whose rule appends each message to a file, and the alerts it raised."""

    def __init__(self, tmp_path: Path, on=("*",), min_interval: float = 0.0, command: str = ""):
        self.sent = tmp_path / "sent.jsonl"
        self.alerts: list[tuple] = []
        command = command or f"cat >> {self.sent}; echo >> {self.sent}"
        self.notifier = Notifier([rule(command, on, min_interval=min_interval)], "run", tmp_path,
                                 lambda *a: self.alerts.append(a), host="box")

    def messages(self) -> list[dict]:
        return [json.loads(line) for line in self.sent.read_text().splitlines()] if self.sent.exists() else []


def test_a_flapping_alert_sends_one_message_and_then_the_count_of_those_held_back(tmp_path):
    rec = Recorder(tmp_path, on=("swap",), min_interval=3.0)

    async def flap():
        for i in range(10):
            rec.notifier.offer(event("alert", "warning", f"swap {i}", what="swap"))
            rec.notifier.offer(event("alert", "info", f"swap ok {i}", what="swap"))  # not on the rule
            await asyncio.sleep(0.02)
        rec.notifier.offer(event("state", state="finished"))  # not on this rule either
        await asyncio.sleep(3.5)  # the interval is over: the held-back count goes out by itself
        assert len(rec.messages()) == 2
        await rec.notifier.drain()

    asyncio.run(flap())
    messages = rec.messages()
    assert [m["message"].split(" (")[0] for m in messages] == ["swap 0", "swap 9"]
    assert messages[0]["held_back"] == 0 and messages[1]["held_back"] == 8
    assert "8 more 'swap' event(s)" in messages[1]["message"]


def test_the_end_of_a_run_is_never_held_back_and_drain_sends_what_is_held(tmp_path):
    rec = Recorder(tmp_path, on=("finished", "crash"), min_interval=3600)

    async def run():
        rec.notifier.offer(event("crash", "error", "crash 1"))
        rec.notifier.offer(event("crash", "error", "crash 2"))
        rec.notifier.offer(event("state", message="done", state="finished"))
        await rec.notifier.drain()

    asyncio.run(run())
    assert [m["message"] for m in rec.messages()] == ["crash 1", "crash 2", "done"]  # in order, one at a time


def test_a_command_is_killed_with_its_children_when_the_daemon_goes_away(tmp_path):
    pids = tmp_path / "pids"
    rec = Recorder(tmp_path, command=f"sleep 300 & echo $! > {pids}; sleep 300")

    async def run():
        rec.notifier.offer(event("crash", "error"))
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.05)
        for task in list(rec.notifier._tasks):
            task.cancel()
        await asyncio.gather(*rec.notifier._tasks, return_exceptions=True)

    asyncio.run(run())
    child = int(pids.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_slow_command_does_not_pile_up_messages_without_end(tmp_path, monkeypatch):
    monkeypatch.setattr(notify, "QUEUE", 3)
    gate = tmp_path / "gate"
    rec = Recorder(tmp_path, command=f"while [ ! -e {gate} ]; do sleep 0.05; done; cat >> {tmp_path}/sent.jsonl; "
                                     f"echo >> {tmp_path}/sent.jsonl")

    async def run():
        for i in range(10):
            rec.notifier.offer(event("crash", "error", f"crash {i}"))
        rec.notifier.offer(event("state", message="done", state="finished"))
        gate.touch()
        await rec.notifier.drain()

    asyncio.run(run())
    assert [m["message"].split(" at step")[0] for m in rec.messages()] == ["crash 0", "crash 1", "crash 2", "done"]


def test_a_failing_rule_is_alerted_once_and_its_recovery_too(tmp_path):
    flag = tmp_path / "works"
    rec = Recorder(tmp_path, command=f"test -e {flag}")

    async def run():
        for i in range(3):
            rec.notifier.offer(event("crash", "error", f"crash {i}"))
            await rec.notifier.drain()
        flag.touch()
        rec.notifier.offer(event("crash", "error", "crash 4"))
        await rec.notifier.drain()

    asyncio.run(run())
    assert [(level, data["what"]) for level, _, data in rec.alerts] == [("warning", "notify_failed"),
                                                                          ("info", "notify_failed")]
    assert "exit status 1" in rec.alerts[0][1]


# ---------------------------------------------------------------------- the per-user file
def test_the_user_file_errors_name_the_file_the_key_and_what_was_expected(tmp_path):
    path = tmp_path / "notify.yaml"
    path.write_text("notify:\n  - on: [finished]\n    command: curl x\n  - on: crash\n    command: 3\n    timeout: 5\n")
    with pytest.raises(ConfigError) as err:
        load_user_rules(path)
    text = str(err.value)
    assert str(path) in text and "notify.1.on" in text and "valid list" in text
    assert "notify.1.timeout: unknown key" in text
    path.write_text("notify:\n  - on: [finished, stalled]\n    command: curl x\n")
    assert [sorted(r.on) for r in load_user_rules(path)] == [["finished", "stalled"]]
    assert load_user_rules(tmp_path / "absent.yaml") == []
    path.write_text("# notify:\n#   - on: [finished]\n#     command: curl x\n")  # every rule commented out
    assert load_user_rules(path) == []


def test_start_refuses_a_broken_notify_file_unless_told_to_ignore_it(tmp_path, runtime_dir):
    notify_file = tmp_path / "notify.yaml"
    notify_file.write_text("notify:\n  - on: [finshed]\n    command: curl x\n")
    env = cli_env(tmp_path / "runs", runtime_dir, LONGHAUL_NOTIFY_FILE=str(notify_file))
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"name": "tiny", "max_steps": 1, "data": {"source": "synthetic"}}))
    refused = cli(env, "start", str(config), check=False)
    assert refused.returncode != 0
    assert str(notify_file) in refused.stderr and "notify.0.on" in refused.stderr and "'finished'" in refused.stderr
    assert "--ignore-notify-file" in refused.stderr
    assert not (tmp_path / "runs" / "tiny").exists()  # nothing half-made
    tested = cli(env, "notify", "--test", check=False)
    assert tested.returncode != 0 and str(notify_file) in tested.stderr
    started = cli(env, "start", str(config), "--ignore-notify-file", check=False)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(env, "tiny")["state"] == "finished", 120, "the run to finish")
    events = read_events(tmp_path / "runs" / "tiny")
    assert not [e for e in events if e["data"].get("what") == "notify_config"]  # told to train without the file
    StateFile(tmp_path / "runs" / "tiny").update(state="interrupted")  # as a power cut leaves it
    refused = cli(env, "resume", "tiny", check=False)
    assert refused.returncode != 0 and "notify.0.on" in refused.stderr and "--ignore-notify-file" in refused.stderr


def test_a_daemon_whose_notify_file_broke_since_start_alerts_and_keeps_the_runs_rules(tmp_path, runtime_dir,
                                                                                       launcher, monkeypatch):
    """`start` checked the file; one broken later (or at boot, `resume --all`) must not stop the
    run, and the run's own rules still go out (here the contract's `failed`)."""
    broken = tmp_path / "notify.yaml"
    broken.write_text("notify:\n  - on: [finshed]\n    command: curl x\n")
    monkeypatch.setenv("LONGHAUL_NOTIFY_FILE", str(broken))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    run_dir = make_run(tmp_path / "runs", "broken", fake={"steps": 20, "step_time": 0.01, "crash_at": 3,
                                                           "crash_runs": 99, "log_every": 0},
                       daemon_cfg={"max_restarts": 0},
                       sections={"notify": [{"on": ["failed"], "command": f"cat > {inbox}/$LONGHAUL_EVENT.json"}]})
    wait_exit(launcher.start(run_dir), 60)
    events = read_events(run_dir)
    off = [e for e in events if e["data"].get("what") == "notify_config"]
    assert len(off) == 1 and off[0]["level"] == "warning" and str(broken) in off[0]["message"]
    assert [e["data"]["state"] for e in events if e["kind"] == "state"][-1] == "failed"
    told = json.loads((inbox / "failed.json").read_text())
    assert told["event"] == "failed" and told["run"] == "broken"


# ---------------------------------------------------------------------- through a daemon
def test_a_daemon_tells_its_rules_of_a_crash_the_restart_and_the_end(tmp_path, runtime_dir, launcher, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    user_file = tmp_path / "notify.yaml"
    user_file.write_text(f"notify:\n  - on: [finished]\n    command: cat > {inbox}/user-$LONGHAUL_EVENT.json\n")
    monkeypatch.setenv("LONGHAUL_NOTIFY_FILE", str(user_file))
    hanging = {"on": ["restart"], "command": "sleep 60", "timeout_seconds": 1.0}
    run_dir = make_run(tmp_path / "runs", "told", fake={"steps": 40, "step_time": 0.01, "crash_at": 10,
                                                         "crash_runs": 1, "checkpoint_every": 5, "log_every": 0},
                       sections={"notify": [{"on": ["crash", "finished"],
                                             "command": f"cat > {inbox}/run-$LONGHAUL_EVENT.json"}, hanging]})
    pid = launcher.start(run_dir)
    wait_exit(pid, 60)
    got = {p.name: json.loads(p.read_text()) for p in inbox.iterdir()}
    assert sorted(got) == ["run-crash.json", "run-finished.json", "user-finished.json"]
    assert got["run-crash.json"]["level"] == "error" and "fake crash at step 10" in got["run-crash.json"]["message"]
    assert got["user-finished.json"]["run"] == "told" and got["user-finished.json"]["title"].endswith(": finished")
    assert got["run-finished.json"]["message"].startswith("finished at step 40/")  # where the run got
    assert got["run-finished.json"]["status"]["step"] == 40
    failed = [e for e in read_events(run_dir) if e["data"].get("what") == "notify_failed"]
    assert len(failed) == 1 and "timed out after 1 s" in failed[0]["message"]
    assert [e["data"]["state"] for e in read_events(run_dir) if e["kind"] == "state"][-1] == "finished"
    assert os.environ["LONGHAUL_NOTIFY_FILE"] == str(user_file)
