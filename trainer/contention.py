"""Oversubscription: is the trainer slowed down because other processes take its cores?

Pure decision logic (no I/O, no torch): the daemon feeds it the trainer's samples/s from
progress frames and each `system` sample, and emits the `contention` events it returns. The
alert starts when, for `confirm` system samples in a row, the 1-minute load is above the core
count, other processes are busy, and samples/s is below `drop` times its recent best. It ends
after `confirm` samples in a row where samples/s is back above `recover` times that best or the
other processes went quiet (the load average lags by a minute, so it is no sign of the end).

Samples/s of single steps is noisy (on a busy 2-core box one step read 28 between steps at 4-10,
and the steps after a checkpoint read 100-170), so each system sample is judged on the median of
the last RATES rates (or of those received since the previous sample, when there are more); a
sample with no new rate (paused, evaluating, checkpointing) is skipped. The best is the highest
such median over the last `window` seconds of the current phase (a new phase may legitimately run
at another speed), and it is frozen while the alert is on: otherwise a long contention would
become the new normal and end the alert.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

ALERT = "oversubscribed"
OTHERS_BUSY = 50.0
"""% of one core that processes other than the trainer, its loaders and the daemon must use
together before they count as competition."""
NAMED = 3
"""Other processes named in the message."""
NAMED_CPU = 10.0
"""% of one core a process must use to be named (a real run named processes at 1% beside one at 58%)."""
RATES = 5
"""Progress rates a judged rate is the median of: one odd step must not decide."""


@dataclass
class Decision:
    """A `contention` event to emit: the alert starts (warning) or ends (info)."""

    level: str
    message: str
    data: dict = field(default_factory=dict)

    @property
    def starts(self) -> bool:
        return "alert" in self.data


class ContentionWatch:
    """Decides when the `oversubscribed` alert starts and ends for one run.

    Args:
        threads: the run's configured torch threads (`threads:` in the config).
        follows_load: the trainer gives threads up by itself while the box is busy
            (`threads_follow_load`): the fix then names no smaller `threads:`.
        window: seconds of rates the recent best is taken from.
        drop, recover: fractions of the recent best below which samples/s counts as fallen,
            and at or above which it counts as recovered.
        confirm: consecutive system samples needed to start or end the alert.
    """

    def __init__(self, threads: int, window: float = 300.0, drop: float = 0.6, recover: float = 0.8,
                 confirm: int = 3, follows_load: bool = False) -> None:
        if not 0 < drop < recover:
            raise ValueError(f"contention thresholds: need 0 < drop < recover, got drop={drop}, recover={recover}")
        self.threads = threads
        self.follows_load = follows_load
        self.window, self.drop, self.recover, self.confirm = window, drop, recover, confirm
        self.active = False
        self._fresh: list[float] = []  # rates since the previous system sample
        self._recent: deque[float] = deque(maxlen=RATES)
        self._best: deque[tuple[float, float]] = deque()  # (time, median), medians decreasing
        self._phase: Optional[int] = None
        self._streak = 0  # consecutive samples pointing to the other state

    def progress(self, samples_per_s: Optional[float], phase: Optional[int] = None) -> None:
        """One progress frame's rate (None or <= 0: not a training step, ignored)."""
        if phase != self._phase:
            self._phase = phase
            self._recent.clear()
            if not self.active:
                self._best.clear()
        if samples_per_s is not None and samples_per_s > 0:
            self._fresh.append(float(samples_per_s))
            self._recent.append(float(samples_per_s))

    def system(self, sample: dict) -> Optional[Decision]:
        """Judge one `system` body; returns the event to emit when the alert starts or ends."""
        fresh, self._fresh = self._fresh, []
        if not fresh or len(self._recent) < RATES:
            return None
        rate = statistics.median(fresh if len(fresh) > RATES else self._recent)
        best = self._best[0][1] if self.active else self._remember(float(sample.get("time") or 0.0), rate)
        if best is None:
            return None
        others = _others(sample)
        busy = sum(p["cpu"] for p in others)
        if self.active:
            turned = rate >= self.recover * best or busy < OTHERS_BUSY
        else:
            cores = cores_of(sample)
            load = (sample.get("load") or [0.0])[0]
            turned = load > cores and busy >= OTHERS_BUSY and rate < self.drop * best
        self._streak = self._streak + 1 if turned else 0
        if self._streak < self.confirm:
            return None
        self._streak = 0
        self.active = not self.active
        return self._started(sample, rate, best, others) if self.active else _ended(rate, best, busy)

    def reset(self, why: str) -> Optional[Decision]:
        """The trainer exited: forget its rates; ends the alert if it was on."""
        was_active = self.active
        self.active, self._streak, self._fresh, self._phase = False, 0, [], None
        self._best.clear()
        self._recent.clear()
        if not was_active:
            return None
        return Decision("info", f"contention over: {why}", {"resolves": ALERT})

    def _remember(self, now: float, rate: float) -> Optional[float]:
        """Add a judged rate to the window; returns the best before it (None: nothing yet)."""
        while self._best and self._best[0][0] < now - self.window:
            self._best.popleft()
        best = self._best[0][1] if self._best else None
        while self._best and self._best[-1][1] <= rate:
            self._best.pop()
        self._best.append((now, rate))
        return best

    def _started(self, sample: dict, rate: float, best: float, others: list[dict]) -> Decision:
        cores = cores_of(sample)
        load = (sample.get("load") or [0.0])[0]
        busy = sum(p["cpu"] for p in others)
        free = max(1, int(cores - busy / 100.0 + 0.5))
        named = [p for p in others if p["cpu"] >= NAMED_CPU][:NAMED] or others[:1]
        names = ", ".join(f"{p['name']} (pid {p['pid']}, {p['cpu']:.0f}% CPU)" for p in named)
        culprit = named[0]["name"] if named else "the other processes"
        fewer_threads = self.threads > free and not self.follows_load
        if fewer_threads:
            # resume refuses an edited config.yaml (its hash is in every checkpoint), so the
            # thread count can only change for a new run
            fix = f"stop {culprit}, or start the next run with `threads: {free}` in its config"
        else:
            fix = f"stop {culprit} or lower its priority (renice)"
        message = (f"oversubscribed: load {load:.1f} on {cores} cores and samples/s fell to {rate:.0f} "
                   f"(best {best:.0f}); busiest other processes: {names}. Fix: {fix}")
        data = {"alert": ALERT, "load": load, "cores": cores, "samples_per_s": rate, "best_samples_per_s": best,
                "threads": self.threads, "free_cores": free,
                "others": [{"pid": p["pid"], "name": p["name"], "cpu": p["cpu"]} for p in named]}
        if fewer_threads:
            data["suggested_threads"] = free
        return Decision("warning", message, data)


def _ended(rate: float, best: float, busy: float) -> Decision:
    why = (f"samples/s back to {rate:.0f} (best {best:.0f})" if busy >= OTHERS_BUSY
           else f"other processes quiet ({busy:.0f}% CPU), samples/s {rate:.0f}")
    return Decision("info", f"contention over: {why}", {"resolves": ALERT, "samples_per_s": rate})


def _others(sample: dict) -> list[dict]:
    """Processes competing with the trainer, busiest first."""
    rows = [p for p in sample.get("processes") or () if p.get("role") == "other"]
    return sorted(rows, key=lambda p: -p["cpu"])


def cores_of(sample: dict) -> int:
    """The machine's cores as a `system` sample gives them (older daemons send no `cores`)."""
    return int(sample.get("cores") or len(sample.get("cpu_percent") or ()) or 1)
