"""`data.sample_rate: auto` and `data.duration: auto`: values chosen from the training data.

    cfg, auto = resolve(cfg, found, frozen=RunDir(run_dir).data_auto)

- sample rate: the most common native rate of the training examples (ties: the higher rate);
- duration: the DURATION_PERCENTILE-th percentile of the training clips' lengths, rounded up to
  DURATION_STEP seconds.

Only headers are read (soundfile.info), so this costs a fraction of the decode pass that follows.
A run keeps what was chosen: with `frozen` (the engine passes its run directory's file) the first
build writes the values there and every later build (a resume, a restart) reads them back instead
of measuring again, so files added to the data later cannot change the input shape of a run.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile

from .decode import AudioFile, InlineWaveform

AUTO = "auto"
DURATION_PERCENTILE = 95
DURATION_STEP = 0.1
# Without measurable audio (synthetic data, images, every file unreadable): the config defaults.
FALLBACK_RATE = 16000
FALLBACK_DURATION = 1.0


@dataclass
class AutoValues:
    """What `auto` became, and the lines that say where the numbers came from."""

    sample_rate: Optional[int] = None
    duration: Optional[float] = None
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def wanted(cfg) -> bool:
    return cfg.data.sample_rate == AUTO or cfg.data.duration == AUTO


def provisional(cfg):
    """A copy of cfg whose `auto` values are stand-ins, good enough to scan (not decode) with."""
    return _with_values(cfg, FALLBACK_RATE if cfg.data.sample_rate == AUTO else None,
                        FALLBACK_DURATION if cfg.data.duration == AUTO else None)


def resolve(cfg, train_items, frozen: Optional[Path] = None):
    """(cfg with concrete data.sample_rate/duration, AutoValues or None when nothing was auto)."""
    if not wanted(cfg):
        return cfg, None
    values = _read_frozen(frozen) if frozen is not None else None
    if values is None:
        values = measure(cfg, train_items)
        if frozen is not None:
            _write_frozen(frozen, values)
    else:
        values.lines = [line + f" (kept from {frozen.name})" for line in values.lines]
    cfg = _with_values(cfg, values.sample_rate, values.duration)
    return _fit_f_max(cfg, values), values


def apply_frozen(cfg, frozen: Path):
    """`cfg` with the `auto` values a run kept in `frozen` (its RunDir.data_auto), without looking
    at the data again: how a finished run's preprocessing is rebuilt for evaluation, prediction
    and export. ValueError when the run has `auto` settings and the file is missing or damaged."""
    if not wanted(cfg):
        return cfg
    values = _read_frozen(frozen)
    if values is None:
        raise ValueError(f"{frozen}: missing or damaged, so the sample rate / clip length that `auto` chose for "
                         "this run is unknown (it is written when the run first builds its data)")
    return _fit_f_max(_with_values(cfg, values.sample_rate, values.duration), values)


def _fit_f_max(cfg, values: AutoValues):
    """An auto rate can put features.f_max above Nyquist, which no one could foresee in the
    config: cut it to sample_rate/2 and say so (a fixed rate keeps it a config error)."""
    f_max, nyquist = cfg.features.f_max, cfg.data.sample_rate / 2
    if values.sample_rate is None or f_max is None or f_max <= nyquist:
        return cfg
    values.lines.append(f"features.f_max {f_max:g} Hz -> {nyquist:g} Hz (half of the auto sample rate)")
    return cfg.model_copy(update={"features": cfg.features.model_copy(update={"f_max": nyquist})})


def measure(cfg, train_items) -> AutoValues:
    """Choose the auto values from the training examples' headers."""
    rates, lengths = _headers(train_items)
    values = AutoValues()
    if cfg.data.sample_rate == AUTO:
        if rates:
            rate, count = most_common_rate(Counter(rates))
            share = "all" if count == len(rates) else f"{count} of"
            values.sample_rate = rate
            values.lines.append(f"data.sample_rate auto -> {rate} Hz ({share} {len(rates)} train files)")
        else:
            values.sample_rate = FALLBACK_RATE
            values.lines.append(f"data.sample_rate auto -> {FALLBACK_RATE} Hz (no audio files to measure: default)")
    if cfg.data.duration == AUTO:
        if lengths:
            high = float(np.percentile(lengths, DURATION_PERCENTILE))
            values.duration = round_up(high)
            values.lines.append(f"data.duration auto -> {values.duration:g} s (p{DURATION_PERCENTILE} of "
                                f"{len(lengths)} clips = {high:.3f} s, rounded up; max {max(lengths):.3f} s)")
        else:
            values.duration = FALLBACK_DURATION
            values.lines.append(f"data.duration auto -> {FALLBACK_DURATION:g} s (no audio files to measure: default)")
    return values


def most_common_rate(counts: dict[int, int]) -> tuple[int, int]:
    """(rate, how many files have it) of {rate: files}; a tie goes to the higher rate."""
    return max(counts.items(), key=lambda rc: (rc[1], rc[0]))


def round_up(seconds: float) -> float:
    """Up to the next DURATION_STEP (never 0); 0.9000000001 stays 0.9."""
    steps = max(1, math.ceil(round(seconds / DURATION_STEP, 6)))
    return round(steps * DURATION_STEP, 6)


def _headers(items) -> tuple[list[int], list[float]]:
    rates, lengths = [], []
    for item in items:
        if isinstance(item, AudioFile):
            try:
                info = soundfile.info(item.where)
            except (RuntimeError, OSError, ValueError, TypeError):
                continue  # the decode pass reports it
            if info.samplerate > 0 and info.frames > 0:
                rates.append(int(info.samplerate))
                lengths.append(info.frames / info.samplerate)
        elif isinstance(item, InlineWaveform) and item.rate > 0 and len(item.samples):
            rates.append(int(item.rate))
            lengths.append(len(item.samples) / item.rate)
    return rates, lengths


def _with_values(cfg, rate: Optional[int], duration: Optional[float]):
    update = {}
    if rate is not None:
        update["sample_rate"] = rate
    if duration is not None:
        update["duration"] = duration
    if not update:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def _read_frozen(path: Path) -> Optional[AutoValues]:
    try:
        doc = json.loads(path.read_text())
        return AutoValues(sample_rate=doc.get("sample_rate"), duration=doc.get("duration"),
                          lines=list(doc.get("lines", [])))
    except (OSError, ValueError, AttributeError):
        return None  # absent or damaged (cut by a power loss before its rename): measure again


def _write_frozen(path: Path, values: AutoValues) -> None:
    from trainer.run.rundir import atomic_write_bytes  # torch-free; fsyncs file and directory

    atomic_write_bytes(path, values.to_json().encode())
