"""Plain-text formatting shared by the TUI widgets: durations, sizes, numbers, clock times.

Durations come from `trainer.fmt`: the CLI and the console print them the same way. Everything
here is a pure function of its arguments (the current time is passed in), so the snapshot tests
can freeze what the screen shows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Callable, Optional

from trainer.fmt import MISSING, duration


def size(num_bytes: Optional[float]) -> str:
    """Binary size in at most 4 digits: `512 B`, `3.2 MiB`, `61 GiB`, `1.5 TiB`."""
    if num_bytes is None:
        return MISSING
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1000 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or abs(value) >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate(bytes_per_s: Optional[float]) -> str:
    """Transfer rate such as `3.1 MiB/s`."""
    return MISSING if bytes_per_s is None else f"{size(bytes_per_s)}/s"


def count(value: Optional[int]) -> str:
    """Integer with thousands separators."""
    return MISSING if value is None else f"{int(value):,}"


def count_short(value: Optional[int]) -> str:
    """Integer in at most 5 characters: 950, 6.0k, 12.3k, 240k, 1.25M."""
    if value is None:
        return MISSING
    value = int(value)
    if abs(value) < 1_000:
        return str(value)
    if abs(value) < 99_950:
        return f"{value / 1e3:.1f}k"
    if abs(value) < 999_500:
        return f"{value / 1e3:.0f}k"
    return f"{value / 1e6:.2f}M"


def metric(value: Optional[float]) -> str:
    """A metric value in at most ~7 characters: 0.4321, 12.35, 1.2e-04, 1234."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 1e-3 or magnitude >= 1e5:
        return f"{value:.1e}"
    if magnitude < 1:
        return f"{value:.4f}"
    if magnitude < 100:
        return f"{value:.2f}"
    return f"{value:.0f}"


def score(value: Optional[float]) -> str:
    """A score in [0, 1] (accuracy, F1, AUC, ECE, ...) with a fixed 3 decimals, so a column of
    them lines up: `0.912`, `1.000`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return f"{value:.3f}" if math.isfinite(value) else str(value)


def interval(bounds) -> str:
    """A confidence interval `[lo, hi]` as `0.889–0.934`; MISSING when there is none."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or MISSING in map(score, bounds):
        return MISSING
    return f"{score(bounds[0])}–{score(bounds[1])}"


def percent(fraction: Optional[float]) -> str:
    """`0.123` -> `12.3%`."""
    return MISSING if fraction is None else f"{100 * fraction:.1f}%"


def step_time(seconds: Optional[float]) -> str:
    """The wall time of one training step in at most 6 characters: `412ms`, `1.53s`, `12.4s`,
    then `duration` (`2m05s`): a step of a few hundred ms reads `0s` as a duration."""
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return MISSING
    if seconds < 0.9995:
        return f"{max(0.0, seconds) * 1000:.0f}ms"
    if seconds < 9.995:
        return f"{seconds:.2f}s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    return duration(seconds)


@dataclass(frozen=True)
class Clock:
    """The time source of the UI; tests pass a frozen one so screenshots never change."""

    now: Callable[[], float] = time.time
    tz: Optional[tzinfo] = None  # None: the machine's local zone

    def local(self, timestamp: float) -> datetime:
        """`timestamp` (unix seconds) as an aware datetime in the clock's zone."""
        return datetime.fromtimestamp(timestamp, tz=self.tz or timezone.utc).astimezone(self.tz)

    def at(self, timestamp: Optional[float]) -> str:
        """Wall-clock time of day, `14:05:09`."""
        return MISSING if timestamp is None else self.local(timestamp).strftime("%H:%M:%S")

    def eta_time(self, seconds_left: Optional[float]) -> str:
        """When something `seconds_left` from now happens: `16:40`, `Wed 14:05` or `3 Mar 14:05`."""
        if seconds_left is None or not math.isfinite(seconds_left):
            return MISSING
        now = self.local(self.now())
        then = self.local(self.now() + seconds_left)
        if then.date() == now.date():
            return then.strftime("%H:%M")
        if (then.date() - now.date()).days < 7:
            return then.strftime("%a %H:%M")
        return then.strftime("%-d %b %H:%M")

    def age(self, timestamp: Optional[float]) -> str:
        """How long ago `timestamp` was, `3m05s ago`."""
        if timestamp is None:
            return MISSING
        return f"{duration(self.now() - timestamp)} ago"


def frozen_clock(timestamp: float) -> Clock:
    """A clock stuck at `timestamp`, in UTC (used by tests and screenshot scripts)."""
    return Clock(now=lambda: timestamp, tz=timezone.utc)


def bar(fraction: float, width: int, full: str = "█", empty: str = "░") -> str:
    """A text progress bar; full and empty cells use different glyphs so it reads without colour."""
    fraction = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
    filled = int(round(fraction * width))
    return full * filled + empty * (width - filled)


def clip(text: str, width: int) -> str:
    """`text` in at most `width` columns, an ellipsis marking a cut."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"
