"""Threshold alerts: CPU temperature, memory, swap, free disk, throughput and loss spikes, each
an `alert` event with its own `what` when it starts (warning) and when it is over (info, same
`what`, which ends it in the TUI).

Pure decisions (no I/O): the daemon feeds `ThresholdWatch` each `system` sample, each training
step's samples/s and each history record, and emits what it returns. Every threshold has
hysteresis: an alert starts after `alerts.confirm` readings in a row past its start level and ends
after as many back past a calmer end level, so a value hovering at the line does not flap.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from trainer.contention import Decision as Alert  # an `alert` event to emit: starts (warning) or is over (info)

GB = 1e9
PHASE_RATES = 1800
"""Judged samples/s kept per phase for its median (an hour of system samples at 2 s)."""
MIN_RATES = 30
"""Judged samples/s a phase needs before its median counts (a minute at 2 s)."""
LOSSES = 200
"""Training losses the loss median is taken over."""
MIN_LOSSES = 50


class Hysteresis:
    """On after `confirm` readings in a row that `start`, off after as many that `end`."""

    def __init__(self, confirm: int):
        self.confirm = confirm
        self.active = False
        self.streak = 0

    def feed(self, start: bool, end: bool) -> Optional[bool]:
        """One reading; True when the condition starts, False when it ends, else None."""
        turned = end if self.active else start
        self.streak = self.streak + 1 if turned else 0
        if self.streak < self.confirm:
            return None
        self.streak = 0
        self.active = not self.active
        return self.active


@dataclass
class Level:
    """One threshold on one reading: `what`, start and end tests and the words of its messages."""

    what: str
    start: Callable[[float], bool]
    end: Callable[[float], bool]
    describe: Callable[[float], str]
    limit_text: str
    gauge: Hysteresis


def _system_levels(cfg, confirm: int) -> list[tuple[Level, Callable[[dict], Optional[float]]]]:
    levels = []
    if cfg.cpu_temp_c is not None:
        t = cfg.cpu_temp_c
        levels.append((Level("cpu_temperature", lambda v: v >= t, lambda v: v < t - 5, lambda v: f"CPU at {v:.0f} °C",
                             f"{t:.0f} °C", Hysteresis(confirm)), lambda s: s.get("cpu_temp")))
    if cfg.mem_percent is not None:
        m = cfg.mem_percent
        levels.append((Level("memory", lambda v: v >= m, lambda v: v < m - 5, lambda v: f"{v:.0f}% of RAM in use",
                             f"{m:.0f}%", Hysteresis(confirm)), _mem_percent))
    if cfg.swap_percent is not None:
        w = cfg.swap_percent
        levels.append((Level("swap", lambda v: v >= w, lambda v: v < w - 5, lambda v: f"{v:.0f}% of swap in use",
                             f"{w:.0f}%", Hysteresis(confirm)), _swap_percent))
    if cfg.disk_free_gb is not None:
        d = cfg.disk_free_gb
        levels.append((Level("disk_space", lambda v: v < d, lambda v: v >= 1.2 * d,
                             lambda v: f"{v:.1f} GB free under the run directory", f"{d:g} GB", Hysteresis(confirm)),
                       _disk_free_gb))
    return levels


def _mem_percent(sample: dict) -> Optional[float]:
    total = sample.get("mem_total") or 0
    return 100.0 * sample["mem_used"] / total if total else None


def _swap_percent(sample: dict) -> Optional[float]:
    total = sample.get("swap_total") or 0
    return 100.0 * sample["swap_used"] / total if total else None


def _disk_free_gb(sample: dict) -> Optional[float]:
    free = sample.get("disk_free")
    return free / GB if free is not None else None


class ThresholdWatch:
    """The threshold alerts of one run (`cfg`: the config's `alerts` section)."""

    def __init__(self, cfg, system_interval: float = 2.0):
        self.cfg = cfg
        self.levels = _system_levels(cfg, cfg.confirm)
        self.rate_gauge = Hysteresis(max(cfg.confirm, math.ceil(cfg.throughput_seconds / system_interval)))
        self.loss_gauge = Hysteresis(cfg.confirm)
        self._fresh: list[float] = []
        self._phase: Optional[int] = None
        self._phase_rates: deque[float] = deque(maxlen=PHASE_RATES)
        self._losses: deque[float] = deque(maxlen=LOSSES)

    def system(self, sample: dict, explained: bool = False) -> list[Alert]:
        """Judge one `system` sample (and the throughput since the last one; `explained`: the
        `oversubscribed` alert is on, which already says why training is slow)."""
        alerts = []
        for level, read in self.levels:
            value = read(sample)
            if value is None:
                continue
            turned = level.gauge.feed(level.start(value), level.end(value))
            if turned is not None:
                alerts.append(_turned(level.what, turned, level.describe(value), level.limit_text,
                                      {"value": round(value, 2)}))
        alert = self._throughput(explained)
        return alerts + ([alert] if alert else [])

    def step_rate(self, samples_per_s: Optional[float], phase: Optional[int]) -> None:
        """A training step's samples/s (from a progress frame that advanced the step)."""
        if phase != self._phase:
            self._phase = phase
            self._phase_rates.clear()
            self._fresh = []
        if samples_per_s is not None and samples_per_s > 0:
            self._fresh.append(float(samples_per_s))

    def _throughput(self, explained: bool) -> Optional[Alert]:
        share = self.cfg.throughput_share
        fresh, self._fresh = self._fresh, []
        if share is None or not fresh:  # paused, evaluating, checkpointing: no judgement
            return None
        rate = statistics.median(fresh)
        if len(self._phase_rates) < MIN_RATES:
            self._phase_rates.append(rate)
            return None
        median = statistics.median(self._phase_rates)
        gauge = self.rate_gauge
        turned = gauge.feed(rate < share * median and not explained, rate >= (share + 1) / 2 * median)
        if not gauge.active:  # a slow spell must not become the phase's normal
            self._phase_rates.append(rate)
        if turned is None:
            return None
        text = f"samples/s {rate:.1f}, the phase's median {median:.1f}"
        return _turned("throughput", turned, text, f"{share:.0%} of the median",
                       {"samples_per_s": round(rate, 3), "median_samples_per_s": round(median, 3)})

    def record(self, record: dict) -> Optional[Alert]:
        """A history record: loss spikes (a non-finite loss is the trainer's own `nan_loss`)."""
        factor, loss = self.cfg.loss_spike_factor, record.get("train_loss")
        if factor is None or record.get("kind") != "train" or loss is None or not math.isfinite(loss):
            return None
        if len(self._losses) < MIN_LOSSES:
            self._losses.append(loss)
            return None
        median = statistics.median(self._losses)
        turned = self.loss_gauge.feed(loss > factor * median, loss <= (factor + 1) / 2 * median)
        if not self.loss_gauge.active:
            self._losses.append(loss)
        if turned is None:
            return None
        text = f"training loss {loss:.4g} at step {record.get('step')}, median of the last {len(self._losses)} {median:.4g}"
        return _turned("loss_spike", turned, text, f"{factor:g}x the median",
                       {"loss": loss, "median_loss": median, "step": record.get("step")})


def _turned(what: str, started: bool, text: str, limit: str, data: dict) -> Alert:
    if started:
        return Alert("warning", f"{what.replace('_', ' ')}: {text} (alert at {limit})", {"what": what, **data})
    return Alert("info", f"{what.replace('_', ' ')} back to normal: {text}", {"what": what, **data})
