"""The detail chart's x axis: what its labels say (step, epoch or training time) and which part
of the run it shows (zoom and pan). Pure, Textual-free helpers.

The chart's x positions are always steps; the epoch and time modes only label them. Epochs come
from the plan's phases (each has its own steps per epoch), training time from `ElapsedMap`, a
few (step, elapsed) samples of the progress frames (elapsed excludes pauses, so it is close to
linear in the step and interpolating between samples is accurate enough for axis labels).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from trainer.fmt import duration

X_MODES = ("step", "epoch", "time")


class ElapsedMap:
    """Training seconds at a step, from (step, elapsed) samples; bounded: every other sample is
    dropped when it is full, so it keeps the whole run at a coarser grain."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self.steps: list[float] = [0.0]
        self.elapsed: list[float] = [0.0]

    @classmethod
    def of_series(cls, series) -> "ElapsedMap":
        """The map of a run's `elapsed` history series (training seconds logged with each train
        record): the whole run's time axis, pauses and restarts included, from the first paint;
        empty (filled by progress frames) for a history written before it was logged."""
        mapping = cls()
        if series is not None:
            for step, seconds in zip(series.steps, series.values):
                mapping.add(step, seconds)
        return mapping

    def add(self, step, elapsed) -> None:
        """Note that `elapsed` training seconds had passed at `step` (older steps are ignored)."""
        if not isinstance(step, (int, float)) or not isinstance(elapsed, (int, float)) or step <= self.steps[-1]:
            return
        self.steps.append(float(step))
        self.elapsed.append(float(elapsed))
        if len(self.steps) > self.capacity:
            self.steps = self.steps[::2] + ([self.steps[-1]] if len(self.steps) % 2 == 0 else [])
            self.elapsed = self.elapsed[::2] + ([self.elapsed[-1]] if len(self.elapsed) % 2 == 0 else [])

    def at(self, step: float) -> Optional[float]:
        """Training seconds at `step` (interpolated; None when no sample after step 0 is known)."""
        if len(self.steps) < 2:
            return None
        i = min(max(bisect.bisect_left(self.steps, step), 1), len(self.steps) - 1)
        s0, s1, e0, e1 = self.steps[i - 1], self.steps[i], self.elapsed[i - 1], self.elapsed[i]
        return max(0.0, e0 + (e1 - e0) * (step - s0) / ((s1 - s0) or 1.0))


def epochs_at(step: float, phases: Sequence[dict]) -> Optional[float]:
    """Epochs completed at `step` (a fraction within an epoch), from the plan's phases; None
    without a plan."""
    done = 0.0
    for phase in phases:
        per_epoch, start, epochs = phase.get("steps_per_epoch"), phase.get("start_step"), phase.get("epochs")
        if not per_epoch or start is None or epochs is None:
            return None
        if step < start + per_epoch * epochs:
            return done + max(0.0, step - start) / per_epoch
        done += epochs
    return done if phases else None


def label_format(mode: str, phases: Sequence[dict], elapsed: ElapsedMap,
                 step_label: Callable[[float], str]) -> Callable[[float], str]:
    """How a step is written on the axis in `mode` (step labels where the mode has no data)."""
    def epoch_label(step: float) -> str:
        epochs = epochs_at(step, phases)
        return step_label(step) if epochs is None else f"ep{epochs:.3g}"

    def time_label(step: float) -> str:
        seconds = elapsed.at(step)
        return step_label(step) if seconds is None else duration(seconds)

    return {"epoch": epoch_label, "time": time_label}.get(mode, step_label)


@dataclass
class ZoomWindow:
    """The part of the x range shown: 2**level times narrower than all of it, its right edge
    `offset` before the newest step (0: it follows new data)."""

    level: int = 0
    offset: float = 0.0
    MAX_LEVEL = 16
    MIN_SPAN = 8.0  # steps: zooming in stops here

    def window(self, first: float, last: float) -> tuple[float, float]:
        """(start, end) of the window inside [first, last], clamped to the data."""
        full = max(last - first, 0.0)
        span = max(full / 2 ** self.level, min(self.MIN_SPAN, full))
        end = min(last, max(first + span, last - self.offset))
        return end - span, end

    def zoom(self, first: float, last: float, steps: int) -> None:
        """Zoom in (`steps` > 0) or out, keeping the window's right edge where it is."""
        full = last - first
        level = min(max(self.level + steps, 0), self.MAX_LEVEL)
        while level > self.level and full / 2 ** level < self.MIN_SPAN:
            level -= 1
        self.level = level
        if level == 0:
            self.offset = 0.0

    def pan(self, first: float, last: float, fraction: float) -> None:
        """Move by `fraction` of the window's width (negative: back in time)."""
        start, end = self.window(first, last)
        span = end - start
        self.offset = min(max(self.offset - fraction * span, 0.0), max(last - first - span, 0.0))

    def reset(self) -> None:
        self.level, self.offset = 0, 0.0

    def label(self, compact: bool = False) -> str:
        """`4×`, and whether the window was panned back from the newest step."""
        if not self.offset:
            return f"{2 ** self.level}×"
        return f"{2 ** self.level}×" + ("◂" if compact else " (panned)")
