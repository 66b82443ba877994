"""The torch thread count that follows the load of the box (`threads_follow_load`, issue 14).

On a 2-core box no OpenMP wait setting of 2 threads is both fast when the box is quiet and fair
beside a busy process (`bench/omp_wait.py`: 2 threads keep 28% of their quiet speed beside one
busy loop, passive waiting 37% and 1.8x slower when quiet), while 1 thread beside it keeps 61%.
So the trainer runs its configured threads while the box is quiet and fewer while other
processes keep cores busy, judged at step boundaries over windows of a few seconds: the
quickstart beside one busy process keeps 62% of its quiet speed instead of 28%
(`bench/threads_load.py`).

`ThreadChoice` is the decision alone (no I/O, no torch); `OthersLoad` measures how many cores
processes other than the trainer (and its children) keep busy, from /proc via psutil.
Numerics depend on the thread count: a run is bit-identical to another only while both used the
same count at the same steps, so every change is an event and `threads_follow_load: false` pins it.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional

import psutil


WINDOW = 5.0
"""Seconds between two looks at the load (a change needs two windows in a row: 10 s)."""


class ThreadChoice:
    """Chooses the thread count from the cores other processes keep busy.

    Wanted threads: the configured count, less the cores the others take (rounded up from a
    quarter core, so a process at 30% of a core does not cost a thread), at least 1. A change is
    made only after `confirm` windows in a row want the same new count (no flapping on a burst).
    """

    def __init__(self, configured: int, cores: int, confirm: int = 2) -> None:
        self.configured = max(1, configured)
        self.cores = max(1, cores)
        self.confirm = confirm
        self.current = self.configured
        self._pending: Optional[int] = None
        self._streak = 0

    def wanted(self, others_cores: float) -> int:
        free = self.cores - math.ceil(max(0.0, others_cores) - 0.25)
        return max(1, min(self.configured, free))

    def observe(self, others_cores: float) -> Optional[int]:
        """One window's measurement; returns the new thread count when it changes, else None."""
        wanted = self.wanted(others_cores)
        if wanted == self.current:
            self._pending, self._streak = None, 0
            return None
        self._streak = self._streak + 1 if wanted == self._pending else 1
        self._pending = wanted
        if self._streak < self.confirm:
            return None
        self.current, self._pending, self._streak = wanted, None, 0
        return wanted


class OthersLoad:
    """Cores kept busy by processes other than this one and its children, over each window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.process = psutil.Process()
        self._last: Optional[tuple[float, float, float]] = None

    def _own_seconds(self) -> float:
        total = 0.0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def sample(self) -> Optional[float]:
        """Cores the others used since the previous call (None on the first call)."""
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.nice + cpu.system + getattr(cpu, "irq", 0.0) + getattr(cpu, "softirq", 0.0)
        now, own = self.clock(), self._own_seconds()
        last, self._last = self._last, (now, busy, own)
        if last is None or now <= last[0]:
            return None
        return max(0.0, ((busy - last[1]) - (own - last[2])) / (now - last[0]))


class ThreadsFollowLoad:
    """At step boundaries, once every `window` seconds: measure the other processes and change
    the thread count when `ThreadChoice` says so (`set_threads`, then `announce(old, new, others)`)."""

    def __init__(self, configured: int, set_threads: Callable[[int], None],
                 announce: Callable[[int, int, float], None], *, window: float = WINDOW,
                 cores: Optional[int] = None, load: Optional[OthersLoad] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.choice = ThreadChoice(configured, cores or available_cores())
        self.set_threads, self.announce = set_threads, announce
        self.window, self.clock = window, clock
        self.load = load or OthersLoad(clock)
        self._due = clock()

    @property
    def threads(self) -> int:
        return self.choice.current

    def tick(self) -> None:
        now = self.clock()
        if now < self._due:
            return
        self._due = now + self.window
        others = self.load.sample()
        if others is None:
            return
        old = self.choice.current
        new = self.choice.observe(others)
        if new is not None:
            self.set_threads(new)
            self.announce(old, new, others)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def follow_load(configured: int, enabled: bool, set_threads: Callable[[int], None],
                event: Callable[..., None]) -> Optional[ThreadsFollowLoad]:
    """The engine's follower (None when pinned or at one thread); each change is a `threads` event."""
    if not enabled or configured < 2:
        return None

    def announce(old: int, new: int, others: float) -> None:
        event("threads", "info", change_message(old, new, others), threads=new, configured=configured,
              others_cores=round(others, 2))

    return ThreadsFollowLoad(configured, set_threads, announce)


def change_message(old: int, new: int, others: float) -> str:
    if new < old:
        return (f"threads {old} -> {new}: other processes keep {others:.1f} cores busy "
                "(pin the count with threads_follow_load: false)")
    return f"threads {old} -> {new}: other processes use {others:.1f} cores now"
