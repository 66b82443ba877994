"""The torch thread count that follows the load of the box (issue 14, work in progress).

On a 2-core box no OpenMP wait setting of 2 threads is both fast when the box is quiet and fair
beside a busy process (`bench/omp_wait.py`: 2 threads keep 28% of their quiet speed beside one
busy loop, passive waiting 37% and 1.8x slower when quiet), while 1 thread beside it keeps 61%.
So the trainer runs its configured threads while the box is quiet and fewer while other
processes keep cores busy, judged at step boundaries over windows of a few seconds.

`ThreadChoice` is the decision alone (no I/O, no torch); `OthersLoad` measures how many cores
processes other than the trainer (and its children) keep busy, from /proc via psutil.
Numerics depend on the thread count: a run is bit-identical to another only while both used the
same count at the same steps, so every change is an event and `threads_follow_load: false` pins it.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import psutil


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
