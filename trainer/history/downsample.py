"""Downsampler: a bounded, incremental summary (mean, min, max per bucket) of one metric series."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import numpy as np
# numpy is imported where it is used: a client attached to a daemon feeds points one by one and
# never pays its import time; only the bulk path (from_arrays) needs it.

DEFAULT_MAX_POINTS = 1000


class Downsampler:
    """A bounded, incremental summary of one metric series.

    Points go into buckets of ``width`` consecutive points (all buckets but the last are full).
    When a point would make more than ``max_points`` buckets, neighbouring buckets are merged
    in pairs and ``width`` doubles, so appending is amortised O(1) and the summary never exceeds
    ``max_points`` buckets. Each bucket keeps its last step, the sum and count of its values, and
    their min and max: :meth:`to_dict` reports the bucket *mean* as ``value`` (a noisy loss reads
    better averaged; min/max show the spread) at the bucket's last step (so the newest point is
    always at the newest step). The global min and max of the raw series survive every merge.

    Points must come in increasing step order: a point whose step is not after the last one is
    ignored (a resumed run repeats steps it already logged). NaN/inf values are ignored.
    """

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS):
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        self.max_points = max_points
        self.width = 1
        self.last_step: Optional[int] = None
        self.count = 0  # raw points accepted
        self._step: list[int] = []
        self._sum: list[float] = []
        self._n: list[int] = []
        self._min: list[float] = []
        self._max: list[float] = []

    def __len__(self) -> int:
        return len(self._step)

    def append(self, step: int, value: float) -> bool:
        """Add one point; return whether it was kept (see the class docstring for what is not)."""
        value = float(value)
        if not math.isfinite(value) or (self.last_step is not None and step <= self.last_step):
            return False
        self.last_step = step
        self.count += 1
        if self._n and self._n[-1] < self.width:
            self._step[-1] = step
            self._sum[-1] += value
            self._n[-1] += 1
            if value < self._min[-1]:
                self._min[-1] = value
            if value > self._max[-1]:
                self._max[-1] = value
            return True
        self._step.append(step)
        self._sum.append(value)
        self._n.append(1)
        self._min.append(value)
        self._max.append(value)
        if len(self._step) > self.max_points:
            self._halve()
        return True

    def _halve(self) -> None:
        """Merge buckets (0,1), (2,3), ...; an odd last bucket stays alone and keeps filling."""
        pairs = range(0, len(self._step), 2)
        self._step = [self._step[min(i + 1, len(self._step) - 1)] for i in pairs]
        self._sum = [sum(self._sum[i:i + 2]) for i in pairs]
        self._n = [sum(self._n[i:i + 2]) for i in pairs]
        self._min = [min(self._min[i:i + 2]) for i in pairs]
        self._max = [max(self._max[i:i + 2]) for i in pairs]
        self.width *= 2

    @classmethod
    def from_arrays(cls, steps: Any, values: Any, max_points: int = DEFAULT_MAX_POINTS) -> "Downsampler":
        """The Downsampler that appending these points one by one would give, built with numpy."""
        import numpy as np

        ds = cls(max_points)
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            steps, values = steps[finite], values[finite]
        keep = increasing(steps)
        if keep is not None:
            steps, values = steps[keep], values[keep]
        n = len(steps)
        if n == 0:
            return ds
        while -(-n // ds.width) > max_points:
            ds.width *= 2
        starts = np.arange(0, n, ds.width)
        ds._step = steps[np.minimum(starts + ds.width, n) - 1].tolist()
        ds._sum = np.add.reduceat(values, starts).tolist()
        ds._n = np.diff(np.append(starts, n)).tolist()
        ds._min = np.minimum.reduceat(values, starts).tolist()
        ds._max = np.maximum.reduceat(values, starts).tolist()
        ds.last_step = int(steps[-1])
        ds.count = n
        return ds

    @classmethod
    def from_buckets(cls, steps: list, values: list, mins: list, maxs: list,
                     max_points: int = DEFAULT_MAX_POINTS) -> "Downsampler":
        """A Downsampler holding buckets that were summarised elsewhere (the lists of
        :meth:`to_dict`, e.g. a snapshot's series), each counted as one point, so that points
        appended after them extend the same summary."""
        ds = cls(max_points)
        ds._step, ds._sum, ds._min, ds._max = list(steps), list(values), list(mins), list(maxs)
        ds._n = [1] * len(ds._step)
        ds.last_step = ds._step[-1] if ds._step else None
        ds.count = len(ds._step)
        return ds

    def to_dict(self) -> dict[str, list]:
        """``{"step": [...], "value": [...], "min": [...], "max": [...]}``, one entry per bucket."""
        return {
            "step": list(self._step),
            "value": [s / n for s, n in zip(self._sum, self._n)],
            "min": list(self._min),
            "max": list(self._max),
        }


def increasing(steps: np.ndarray, after: Optional[int] = None) -> Optional[np.ndarray]:
    """Mask of the steps greater than every step before them (and than ``after``); None if all are."""
    import numpy as np

    if len(steps) == 0 or (
        (after is None or steps[0] > after) and bool(np.all(steps[1:] > steps[:-1]))
    ):
        return None  # the usual case, checked without building a mask
    before = np.empty_like(steps)
    before[0] = np.iinfo(np.int64).min if after is None else after
    np.maximum.accumulate(steps[:-1], out=before[1:])
    np.maximum(before[1:], before[0], out=before[1:])
    return steps > before
