"""The stall watchdog: a trainer that stops making progress (a deadlock, a stuck file system, a
process stopped by mistake) is noticed, although its process is alive and the daemon otherwise
reacts only to its exit.

`StallWatch` is the pure decision (no I/O): the daemon feeds it the worker's life (each step in a
progress frame, each sign of work that is not a step: an evaluation's keep-alive progress, a
`preparing` frame, a `setup` event) and asks it, at each system sample, whether the trainer is
stalled. The limit is `watchdog.stall_seconds`, or else STEP_TIMES times the median of the recent
step times with a floor of FLOOR seconds; before a worker's first step it is
`watchdog.setup_seconds`. Paused, stopping and ended runs are never stalled. What a stall does
(the alert, the stacks in train.log, the kill and restart) is the daemon's (`trainer_pids` says
which processes to ask for their stacks, `describe_trainers` helps its message).
"""
from __future__ import annotations

import signal
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Optional

import psutil

from trainer.proctable import is_rank

FLOOR = 300.0
"""Seconds: the smallest default limit. A step of a small model takes well under a second, but a
checkpoint write on a slow disk or a garbage-collection pause must not raise an alarm."""
STEP_TIMES = 20
"""The default limit in median step times."""
RECENT_STEPS = 50
"""Step times the median is taken over."""
WATCHED_STATES = ("starting", "running")
STACKS_SIGNAL = signal.SIGUSR1
"""The worker writes every thread's Python stack to its stderr (train.log) on this signal."""


@dataclass
class Stall:
    """The trainer has shown no progress for `seconds` (limit `limit`); `first_step` False: it
    never reached its first step (set-up)."""

    seconds: float
    limit: float
    step: Optional[int]
    first_step: bool


class StallWatch:
    """Is the trainer stalled? One per daemon; `worker_started` at each (re)start of the worker."""

    def __init__(self, stall_seconds: Optional[float], setup_seconds: float):
        self.stall_seconds = stall_seconds
        self.setup_seconds = setup_seconds
        self.step_times: deque[float] = deque(maxlen=RECENT_STEPS)
        self.last_life = 0.0
        self.last_step: Optional[int] = None
        self.last_step_time: Optional[float] = None
        self.stepped = False  # this worker made a step
        self.stalled: Optional[Stall] = None  # reported, and this worker has shown no life since
        self.quiet_since: Optional[float] = None  # when the reported stall began, until it ends
        self.quiet_in_setup = False  # the reported stall came before a first step
        self.long_work: Optional[str] = None  # a compile may come: until which event the set-up limit holds

    def worker_started(self, now: float) -> None:
        # the step times stay: the new worker trains the same model on the same box; a stall
        # reported of the old one ends with the new one's first progress
        self.last_life, self.stepped, self.last_step_time, self.stalled = now, False, None, None

    def progress(self, step: int, now: float) -> Optional[float]:
        """A progress frame. Returns the seconds a stall lasted when this ends one, else None."""
        if step != self.last_step:
            if self.last_step_time is not None and self.last_step is not None and step > self.last_step:
                self.step_times.append((now - self.last_step_time) / (step - self.last_step))
            self.last_step, self.last_step_time, self.stepped = step, now, True
            if self.long_work == "step":
                self.long_work = None
        return self._life(now, ends_stall=True)

    def event(self, kind: str, data: dict, now: float) -> Optional[float]:
        """A worker event. A new phase may compile the model in its first step, and a compile
        trial (`model.compile: auto`) compiles in the middle of its steps: minutes with no
        frame, so until its first step (the trial: its decision) the set-up limit holds.
        Returns the seconds a stall lasted when a `setup` event ends one."""
        if kind == "phase" and self.long_work is None:
            self.long_work = "step"
        elif kind == "compile" and data.get("what") == "trial":
            self.long_work = "decided"
        elif kind == "compile" and data.get("what") == "decided":
            self.long_work = None
        return self.alive(now) if kind == "setup" else None

    def alive(self, now: float) -> Optional[float]:
        """Work that is not a step or an evaluation (preparing, set-up). It ends only a stall
        that came before a first step: a restarted trainer's set-up is not yet progress."""
        return self._life(now, ends_stall=self.quiet_in_setup)

    def _life(self, now: float, ends_stall: bool) -> Optional[float]:
        """Returns the seconds a reported stall lasted when this ends it, else None."""
        self.last_life, self.stalled = now, None
        if self.quiet_since is None or not ends_stall:
            return None
        lasted, self.quiet_since = now - self.quiet_since, None
        return lasted

    def limit(self) -> float:
        if not self.stepped or self.long_work is not None:
            return self.setup_seconds
        if self.stall_seconds is not None:
            return self.stall_seconds
        if not self.step_times:
            return FLOOR
        return max(FLOOR, STEP_TIMES * statistics.median(self.step_times))

    def check(self, state: Optional[str], now: float) -> Optional[Stall]:
        """A new stall (once per stall; None while none, or already reported)."""
        if state not in WATCHED_STATES:
            self.last_life = now  # a pause is not a stall, and its end starts the clock again
            return None
        quiet, limit = now - self.last_life, self.limit()
        if self.stalled is not None or quiet < limit:
            return None
        self.stalled = Stall(quiet, limit, self.last_step, self.stepped)
        if self.quiet_since is None:
            self.quiet_since, self.quiet_in_setup = self.last_life, not self.stepped
        return self.stalled


def trainer_pids(pid: Optional[int], group: bool) -> list[int]:
    """The processes that train: the worker `pid`, or in a data-parallel run (`group`: `pid` is
    torchrun's agent, which STACKS_SIGNAL would kill, since it does not handle it) the agent's
    ranks."""
    if pid is None or not group:
        return [] if pid is None else [pid]
    try:
        return [child.pid for child in psutil.Process(pid).children() if is_rank(child.pid)]
    except psutil.Error:
        return []


_EXPLAINS_FIRST = {psutil.STATUS_STOPPED: 0, psutil.STATUS_TRACING_STOP: 0, psutil.STATUS_DISK_SLEEP: 1, "gone": 3}


def describe_trainers(pids: list[int]) -> tuple[Optional[int], str, str]:
    """(pid, psutil status, a sentence for the user) of the trainer process that best explains a
    stall: one stopped, else one waiting on a disk, else any that is alive."""
    described = [(pid, *describe_process(pid)) for pid in pids] or [(None, *describe_process(None))]
    return min(described, key=lambda row: _EXPLAINS_FIRST.get(row[1], 2))


def describe_process(pid: Optional[int]) -> tuple[str, str]:
    """(psutil status, a sentence for the user) of the trainer process."""
    if pid is None:
        return "gone", "the trainer has no process"
    try:
        status = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone", f"the trainer (pid {pid}) is gone"
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return status, (f"the trainer (pid {pid}) is stopped (SIGSTOP, Ctrl-Z or a debugger): `kill -CONT {pid}` "
                        "lets it go on (a stopped process writes its Python stacks to train.log only then)")
    if status == psutil.STATUS_DISK_SLEEP:
        return status, (f"the trainer (pid {pid}) waits on a disk or network file system that does not answer; "
                        "its Python stacks are in train.log")
    return status, f"the trainer (pid {pid}) is {status}; its Python stacks are in train.log"
