"""Notifications: a run's events sent to the user's own commands (ntfy, a webhook through curl,
mail, a script), so that someone who is not attached hears of a finished, failed or stalled run.

Rules come from the per-user file (`~/.config/longhaul/notify.yaml`, `$XDG_CONFIG_HOME`, or
`$LONGHAUL_NOTIFY_FILE`) and the run config's `notify:` section, in that order; both have the
same form (`notify: [{on: [...], command: "..."}]`). The daemon offers every event it emits to a
`Notifier`, which names it (`event_names`), runs the matching rules' commands with the event as
JSON on stdin and in LONGHAUL_* variables, at low priority, each killed at its timeout. A failure
is an `alert` `notify_failed` (said once until the rule works again); training never waits for a
command. A rule sends at most one message per event name every `min_interval_seconds`: the ones
held back are counted and the count goes out with the next message, at the latest when the
interval is over. A run's end (finished, failed, stopped) is never held back.

No torch and no textual: the daemon and the CLI's `notify --test` import this.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from trainer.config import ConfigError, NotifyRule, _pydantic_problems, read_yaml
from trainer.fmt import best_text

log = logging.getLogger(__name__)

FILE_ENV = "LONGHAUL_NOTIFY_FILE"
FINAL = ("finished", "failed", "stopped")
"""Event names never held back: the one message a user waits days for."""
QUIET_WHATS = ("notify_failed", "notify_config")
"""Alerts about notifying itself are not notified: a broken command would feed itself."""
QUEUE = 20
"""Messages a rule may have waiting behind a command that is slow to finish; more are dropped
(logged; a run's end never is): a command hanging to its timeout must not pile up without end."""
OUTPUT_TAIL = 2000
ENV_TEXT = 4000
"""Characters of a message an environment variable carries (the whole event is on stdin)."""


def user_file() -> Path:
    """The per-user notify file: $LONGHAUL_NOTIFY_FILE, else $XDG_CONFIG_HOME/longhaul/notify.yaml."""
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "longhaul" / "notify.yaml"


@dataclass(frozen=True)
class Rule:
    """One notify rule and where it was written (for messages)."""

    on: frozenset
    command: str
    timeout: float
    min_interval: float
    source: str

    @classmethod
    def of(cls, rule: NotifyRule, source: str) -> "Rule":
        return cls(frozenset(rule.on), rule.command, rule.timeout_seconds, rule.min_interval_seconds, source)

    def matches(self, names: Iterable[str]) -> Optional[str]:
        """The first of `names` this rule is on (`*`: any), or None."""
        for name in names:
            if name in self.on or "*" in self.on:
                return name
        return None


class _NotifyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notify: list[NotifyRule] = []


def load_user_rules(path: Optional[Path] = None) -> list[Rule]:
    """The rules of the per-user file ([] when there is none). Raises ConfigError naming the file,
    the key (`notify.0.on`) and what was expected."""
    path = path or user_file()
    if not path.exists():
        return []
    raw = read_yaml(path, empty_ok=True)  # every rule commented out: notifications off
    try:
        parsed = _NotifyFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), _pydantic_problems(exc)) from None
    return [Rule.of(rule, f"{path} notify[{i}]") for i, rule in enumerate(parsed.notify)]


IGNORE_FILE_ENV = "LONGHAUL_IGNORE_NOTIFY_FILE"
"""Set (to 1) by `start`/`resume --ignore-notify-file`: the daemon trains without the user's rules."""


def user_rules_for_daemon(alert: Callable[[str, str, dict], Any]) -> list[Rule]:
    """The per-user rules a daemon uses. `start` refused a broken file unless told to ignore it;
    a file broken since (or at boot, `resume --all`) is an `alert` `notify_config`, and the run
    trains without those rules rather than not at all."""
    if os.environ.get(IGNORE_FILE_ENV) == "1":
        return []
    try:
        return load_user_rules()
    except ConfigError as exc:
        alert("warning", f"notifications of {user_file()} are off: {exc}", {"what": "notify_config"})
        return []


def run_rules(cfg) -> list[Rule]:
    """The rules of a run's config (`notify:`)."""
    return [Rule.of(rule, f"config notify[{i}]") for i, rule in enumerate(cfg.notify)]


def event_names(event: dict) -> list[str]:
    """What a notify rule calls this event (most specific first); [] for events nobody is told of."""
    kind, level, data = event.get("kind"), event.get("level"), event.get("data") or {}
    if kind == "state":
        return [data["state"]] if data.get("state") in FINAL else []
    if kind in ("crash", "restart", "report"):
        return [kind]
    if kind == "eval":
        return ["new_best"] if data.get("improved") else []
    if kind == "evaluation":
        return ["evaluation"] if data.get("what") == "evaluation" else []
    what = data.get("what") if kind == "alert" else data.get("alert")
    if kind not in ("alert", "contention") or what in QUIET_WHATS:
        return []
    if level in ("warning", "error"):
        return [what, "alert"] if what else ["alert"]
    return ["resolved"]


def message_of(run: str, host: str, name: str, event: dict, held: int = 0, interval: float = 0.0,
               status: Optional[dict] = None) -> dict:
    """The JSON a command gets on stdin (`status`: the run's `longhaul status --json`, given
    with a run's end so the message can say where it got)."""
    text = str(event.get("message") or name)
    if status:
        text += f" at step {status.get('step')}/{status.get('total_steps')}, best {best_text(status.get('best'))}"
    if held:
        text += f" ({held} more '{name}' event(s) in the last {interval:.0f} s were held back)"
    return {"event": name, "run": run, "host": host, "title": f"longhaul {run}@{host}: {name}",
            "message": text, "kind": event.get("kind"), "level": event.get("level"), "time": event.get("time"),
            "seq": event.get("seq"), "data": event.get("data") or {}, "held_back": held,
            **({"status": status} if status else {})}


@dataclass
class Outcome:
    """What one command did."""

    ok: bool
    seconds: float
    returncode: Optional[int] = None
    timed_out: bool = False
    output: str = ""
    error: str = ""

    def describe(self, timeout: float) -> str:
        if self.timed_out:
            return f"timed out after {timeout:.0f} s and was killed"
        if self.error:
            return self.error
        tail = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return f"exit status {self.returncode}" + (f": {tail[0]}" if tail else "")


def command_env(body: dict, run_dir: Optional[Path]) -> dict:
    env = dict(os.environ)
    env.update({"LONGHAUL_EVENT": body["event"], "LONGHAUL_RUN": body["run"], "LONGHAUL_HOST": body["host"],
                "LONGHAUL_LEVEL": str(body.get("level") or "info"), "LONGHAUL_TITLE": body["title"],
                "LONGHAUL_MESSAGE": body["message"][:ENV_TEXT].replace("\0", ""),
                "LONGHAUL_RUN_DIR": str(run_dir or "")})
    return env


async def run_command(rule: Rule, body: dict, run_dir: Optional[Path] = None) -> Outcome:
    """Run one rule's command for one message: `nice`d, in its own session, killed with its
    whole process group at the rule's timeout."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            "nice", "-n", "10", "/bin/sh", "-c", rule.command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=command_env(body, run_dir),
            start_new_session=True)
    except OSError as exc:
        return Outcome(False, time.monotonic() - started, error=f"cannot run it: {exc}")
    try:
        output, _ = await asyncio.wait_for(proc.communicate(json.dumps(body).encode()), rule.timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return Outcome(False, time.monotonic() - started, proc.returncode, timed_out=True)
    except asyncio.CancelledError:  # the daemon is going away: no command outlives it
        _kill_group(proc.pid)
        await proc.wait()
        raise
    text = output.decode(errors="replace")[-OUTPUT_TAIL:]
    return Outcome(proc.returncode == 0, time.monotonic() - started, proc.returncode, output=text)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class _Held:
    """Messages of one (rule, event name) held back by the rate limit."""

    event: dict
    count: int
    timer: Optional[asyncio.TimerHandle] = None


@dataclass
class Notifier:
    """Sends a run's events through its rules (the daemon's side; needs a running event loop).

    `alert(level, message, data)` reports a failing command (the daemon's `emit` of an `alert`).
    """

    rules: list[Rule]
    run: str
    run_dir: Path
    alert: Callable[[str, str, dict], Any]
    status: Callable[[], Optional[dict]] = lambda: None
    """The run's status (trainer.run.status), read for the message of a run's end."""
    host: str = field(default_factory=socket.gethostname)
    _last_sent: dict = field(default_factory=dict)
    _held: dict = field(default_factory=dict)
    _failing: set = field(default_factory=set)
    _tasks: set = field(default_factory=set)
    _waiting: dict = field(default_factory=dict)  # rule index -> messages sent or waiting to be
    _turns: dict = field(default_factory=dict)  # rule index -> asyncio.Lock: one command at a time, in order

    def offer(self, event: dict) -> None:
        """An event was emitted: send it through every rule it matches (never blocks)."""
        names = event_names(event)
        if not names:
            return
        for index, rule in enumerate(self.rules):
            name = rule.matches(names)
            if name is not None:
                self._offer(index, rule, name, event)

    def _offer(self, index: int, rule: Rule, name: str, event: dict) -> None:
        key = (index, name)
        if name in FINAL:  # what the rule holds back goes out before the run's end
            self._flush_rule(index)
        now = time.monotonic()
        last = self._last_sent.get(key)
        if name in FINAL or last is None or now - last >= rule.min_interval:
            held = self._held.pop(key, None)
            if held is not None and held.timer is not None:
                held.timer.cancel()
            self._send(key, rule, name, event, held.count if held else 0)
            return
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(event, 0)
            delay = last + rule.min_interval - now
            held.timer = asyncio.get_running_loop().call_later(delay, self._flush, key, rule, name)
        held.event, held.count = event, held.count + 1

    def _flush(self, key: tuple, rule: Rule, name: str) -> None:
        """The interval is over: the newest held-back event goes out, with the count."""
        held = self._held.pop(key, None)
        if held is not None:
            self._send(key, rule, name, held.event, held.count - 1)

    def _flush_rule(self, index: int) -> None:
        for key in [k for k in self._held if k[0] == index]:
            held = self._held[key]
            if held.timer is not None:
                held.timer.cancel()
            self._flush(key, self.rules[index], key[1])

    def _status(self) -> Optional[dict]:
        try:
            return self.status()
        except Exception:  # a message without where the run got is better than none
            log.warning("no status for the notification", exc_info=True)
            return None

    def _send(self, key: tuple, rule: Rule, name: str, event: dict, held: int) -> None:
        self._last_sent[key] = time.monotonic()
        waiting = self._waiting.get(key[0], 0)
        if waiting >= QUEUE and name not in FINAL:
            log.warning("notify rule %s has %d messages waiting: %s dropped", rule.source, waiting, name)
            return
        self._waiting[key[0]] = waiting + 1
        status = self._status() if name in FINAL else None
        body = message_of(self.run, self.host, name, event, held, rule.min_interval, status)
        task = asyncio.get_running_loop().create_task(self._deliver(key[0], rule, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, index: int, rule: Rule, body: dict) -> None:
        # a rule's messages go out one at a time and in order: "crash" before "finished"
        try:
            async with self._turns.setdefault(index, asyncio.Lock()):
                outcome = await run_command(rule, body, self.run_dir)
        finally:
            self._waiting[index] -= 1
        if outcome.ok:
            log.info("notified (%s) of %s in %.1f s", rule.source, body["event"], outcome.seconds)
            if rule.source in self._failing:
                self._failing.discard(rule.source)
                self.alert("info", f"notify command of {rule.source} works again", {"what": "notify_failed",
                                                                                     "rule": rule.source})
            return
        why = outcome.describe(rule.timeout)
        log.warning("notify command of %s for %s failed: %s\n%s", rule.source, body["event"], why, outcome.output)
        if rule.source not in self._failing:  # once until it works again, not per event
            self._failing.add(rule.source)
            self.alert("warning", f"notify command of {rule.source} failed ({body['event']}): {why}",
                       {"what": "notify_failed", "rule": rule.source, "event": body["event"],
                        "returncode": outcome.returncode, "timed_out": outcome.timed_out})

    async def drain(self) -> None:
        """Send what is held back and wait for every command (each ends by its timeout): the
        daemon calls this before it exits, so the run's last message goes out."""
        for index in {key[0] for key in self._held}:
            self._flush_rule(index)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def send_test(rules: list[Rule], run: str, run_dir: Optional[Path] = None) -> list[tuple[Rule, Outcome]]:
    """`longhaul notify --test`: one test message through every rule, whatever its `on`."""
    event = {"kind": "test", "level": "info", "time": time.time(), "seq": None, "data": {},
             "message": f"test message from longhaul on {socket.gethostname()}: this rule works"}

    async def send_all() -> list[tuple[Rule, Outcome]]:
        bodies = [message_of(run, socket.gethostname(), "test", event) for _ in rules]
        outcomes = await asyncio.gather(*(run_command(rule, body, run_dir) for rule, body in zip(rules, bodies)))
        return list(zip(rules, outcomes))

    return asyncio.run(send_all())
