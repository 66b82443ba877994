"""What was found in the data: counts, bad files, statistics, warnings; and the error it raises.

Every problem is collected (never the first one only) so that one `longhaul check-data` or one
failed start tells the user everything to fix. A problem is *skippable* when it concerns
individual items (a corrupt file, a bad JSON item, an unknown label): `data.skip_bad_files`
drops those. Problems that leave nothing to train on (an empty split, a wrong setting) are not.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import numpy as np

from .balance import expected_draws

# Longest list of bad items printed by to_text(); the rest are counted. The full list stays in
# DataReport.errors.
MAX_LISTED = 100
# A clip shorter than this share of data.duration is mostly padding (a 1-sample WAV is all of
# it): accepted, but named in a warning. At most SHORT_LISTED of them are named per split.
SHORT_CLIP_SHARE = 0.1
SHORT_LISTED = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where (file path, folder, or config key) and what."""

    path: str
    reason: str
    skippable: bool = True


class DataError(Exception):
    """The data cannot be used as configured; str(error) is the full report.

    `report` is the DataReport behind the message (None for an error found after the build, such
    as a file that became unreadable during training).
    """

    def __init__(self, report: Union["DataReport", str]):
        self.report = report if isinstance(report, DataReport) else None
        super().__init__(report.to_text() if isinstance(report, DataReport) else report)


@dataclass
class SplitStats:
    """Per-split measurements of the source data before padding/resizing."""

    durations: list[float] = field(default_factory=list)
    """Audio: original duration of each example in seconds."""
    sample_rates: dict[int, int] = field(default_factory=dict)
    """Audio: how many examples had each original sample rate."""
    sizes: list[tuple[int, int]] = field(default_factory=list)
    """Images: original (width, height) of each example."""
    padded: int = 0
    """Audio: examples shorter than data.duration (zeros appended)."""
    trimmed: int = 0
    """Audio: examples longer than data.duration (the end cut off)."""
    short: list[tuple[str, float]] = field(default_factory=list)
    """Audio: (name, seconds) of clips far shorter than data.duration (see SHORT_CLIP_SHARE)."""

    def count(self, name: str, duration: Optional[float], rate: Optional[int],
              size: Optional[tuple[int, int]], sample_rate: int, n_samples: int) -> None:
        """One usable example as it was before padding/resizing (a fresh decode or the index).
        `sample_rate`, `n_samples`: what every example becomes (the Decoder's)."""
        if duration is not None:
            self.durations.append(duration)
            samples = round(duration * sample_rate)
            self.padded += samples < n_samples
            self.trimmed += samples > n_samples
            if duration < SHORT_CLIP_SHARE * n_samples / sample_rate:
                self.short.append((name, duration))
            self.sample_rates[rate] = self.sample_rates.get(rate, 0) + 1
        if size is not None:
            self.sizes.append(tuple(size))


@dataclass
class DataReport:
    """Result of checking a data source (check_data) or of building datasets from it."""

    source: str
    location: str
    classes: list[str] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)
    """Usable examples per split, in class order (bad items are not counted)."""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, SplitStats] = field(default_factory=dict)
    target: str = ""
    """What every example is turned into, e.g. '1.00 s at 16000 Hz' or '224x224 RGB'."""
    skip_bad_files: bool = False
    derived: list[str] = field(default_factory=list)
    """What `auto` settings became and the numbers behind them (data.sample_rate/duration)."""
    before_cap: Optional[list[int]] = None
    """Training examples found per class before data.max_per_class (None: no cap)."""
    balanced_sampler: bool = False
    """data.balanced_sampler: the report shows each class's expected draws per epoch."""
    index: str = ""
    """Where the files' outcomes came from when data.store is set (the index, and how many
    files it knew against how many were decoded)."""

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Every problem as (path, reason)."""
        return [(p.path, p.reason) for p in self.problems]

    @property
    def ok(self) -> bool:
        """True when nothing at all is wrong with the data."""
        return not self.problems

    @property
    def usable(self) -> bool:
        """True when training can start: no problems, or only skippable ones with skip_bad_files."""
        if any(not p.skippable for p in self.problems):
            return False
        return not self.problems or self.skip_bad_files

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of the items that skip_bad_files leaves out."""
        if not self.skip_bad_files:
            return []
        return [(p.path, p.reason) for p in self.problems if p.skippable]

    def imbalance(self, split: str = "train") -> Optional[float]:
        """max/min class count of `split` (inf when a class has none; None when no data)."""
        counts = self.counts.get(split)
        if not counts or max(counts) == 0:
            return None
        return float("inf") if min(counts) == 0 else max(counts) / min(counts)

    # ------------------------------------------------------------------------- text
    def to_text(self) -> str:
        """A human-readable report: counts, statistics, warnings, bad files and the verdict."""
        lines = [f"Data: {self.source} ({self.location})"]
        if self.index:
            lines.append(f"Index: {self.index}")
        if self.target:
            lines.append(f"Every example becomes: {self.target}")
        lines += [f"  {line}" for line in self.derived]
        lines += self._count_lines()
        lines += self._stat_lines()
        if self.warnings:
            lines.append(f"Warnings ({len(self.warnings)}):")
            lines += [f"  - {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"Errors ({len(self.problems)}):")
            lines += [f"  {p.path}: {p.reason}" for p in self.problems[:MAX_LISTED]]
            if len(self.problems) > MAX_LISTED:
                lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        lines.append(self._verdict())
        return "\n".join(lines)

    def _count_lines(self) -> list[str]:
        if not self.classes:
            return ["Classes: none found"]
        columns = self._count_columns()
        width = max(12, max(len(c) for c in self.classes) + 2)
        lines = [f"Classes ({len(self.classes)}), usable examples per split:",
                 "  " + "class".ljust(width) + "".join(head.rjust(max(8, len(head) + 2)) for head in columns)]
        for i, name in enumerate(self.classes + ["total"]):
            lines.append("  " + name.ljust(width) + "".join(
                values[i].rjust(max(8, len(head) + 2)) for head, values in columns.items()))
        lines += self._balance_notes()
        ratio = self.imbalance("train")
        if ratio is not None:
            text = "inf (a class has no training examples)" if ratio == float("inf") else f"{ratio:.2f}"
            lines.append(f"Imbalance (largest / smallest training class): {text}")
        return lines

    def _count_columns(self) -> dict[str, list[str]]:
        """Column heading -> one cell per class and the total: the splits, then what the cap
        found before it cut, then the balanced sampler's draws per epoch."""
        columns = {split: [str(c) for c in counts] + [str(sum(counts))] for split, counts in self.counts.items()}
        if self.before_cap is not None:
            columns["before cap"] = [str(c) for c in self.before_cap] + [str(sum(self.before_cap))]
        train = self.counts.get("train")
        if self.balanced_sampler and train:
            draws = expected_draws(train, sum(train))
            columns["drawn/epoch"] = [f"{d:.1f}" if d else "0" for d in draws] + [str(sum(train))]
        return columns

    def _balance_notes(self) -> list[str]:
        notes = []
        if self.before_cap is not None and "train" in self.counts:
            notes.append(f"data.max_per_class: {sum(self.before_cap)} training examples found, "
                         f"{sum(self.counts['train'])} kept ('before cap': found per class; validation "
                         "and test are never cut)")
        if self.balanced_sampler and self.counts.get("train"):
            notes.append("data.balanced_sampler: each epoch draws as many examples as the training "
                         "split holds, the same number from every class ('drawn/epoch'); a class "
                         "smaller than that repeats its examples")
        return notes

    def _stat_lines(self) -> list[str]:
        lines = []
        for split, st in self.stats.items():
            if st.durations:
                d = np.asarray(st.durations)
                rates = ", ".join(f"{r} Hz x{n}" for r, n in sorted(st.sample_rates.items()))
                lines.append(f"Duration {split}: min {d.min():.3f} s, mean {d.mean():.3f} s, "
                             f"max {d.max():.3f} s; {st.padded} padded, {st.trimmed} trimmed; "
                             f"sample rates: {rates}")
            if st.sizes:
                w = np.asarray([s[0] for s in st.sizes])
                h = np.asarray([s[1] for s in st.sizes])
                lines.append(f"Image size {split}: width min {w.min()} mean {w.mean():.1f} max {w.max()}, "
                             f"height min {h.min()} mean {h.mean():.1f} max {h.max()}")
        return lines

    def _verdict(self) -> str:
        if self.ok:
            return "Result: OK"
        fatal = sum(not p.skippable for p in self.problems)
        bad = len(self.problems) - fatal
        if fatal:
            return f"Result: FAILED: {fatal} problem(s) leave no usable data" + (
                f", and {bad} bad item(s)" if bad else "")
        if self.skip_bad_files:
            return f"Result: usable; {bad} bad item(s) will be skipped (data.skip_bad_files: true)"
        return (f"Result: FAILED: {bad} bad item(s); fix them, or set data.skip_bad_files: true "
                "to train without them")


# ----------------------------------------------------------------------------- progress
class DecodeProgress:
    """Counts the files of the up-front decode pass (check_data, build_datasets) for whoever
    watches: `longhaul check-data` and `longhaul train` print "checking data: N/M files" with it
    (console.DecodeProgressLine). The data layer only counts; callers decide what to print."""

    def __init__(self) -> None:
        self.watchers: list[Callable[[int, int], None]] = []
        self.done = 0
        self.total = 0

    def start(self, total: int) -> None:
        """A pass over `total` files begins (every split together)."""
        self.done, self.total = 0, total

    def step(self) -> None:
        """One file decoded (or found bad)."""
        self.done += 1
        for watcher in list(self.watchers):
            watcher(self.done, self.total)

    @contextmanager
    def watch(self, callback: Callable[[int, int], None]) -> Iterator[None]:
        """callback(done, total) after each file decoded inside the with block."""
        self.watchers.append(callback)
        try:
            yield
        finally:
            self.watchers.remove(callback)


DECODING = DecodeProgress()
"""The one counter of the process (the decode pass runs in the main thread)."""
