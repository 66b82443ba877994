"""SeriesSet: every scalar metric of a run as a Downsampler, plus its last and best evaluation."""

from __future__ import annotations

import math
from typing import Optional

from trainer.history.downsample import DEFAULT_MAX_POINTS, Downsampler
from trainer.history.records import EVAL, META_KEYS, TRAIN, check_record, eval_series_name, is_number
from trainer.history.smoothing import DEFAULT_SMOOTHING, LossSmoother
from trainer.monitor import Monitor

SMOOTH_KEY = "train_loss_smooth"
"""Series computed by :class:`SeriesSet`: the EMA of ``train_loss`` (see :class:`LossSmoother`)."""
WALL_KEY = "time"
"""The train records' ``time`` (Unix seconds) as a series: not a metric, but the wall-clock axis of
the comparison (a run's pauses and the hours between its restarts included, unlike ``elapsed``)."""


def is_train_series(key: str) -> bool:
    """Whether a train record's numeric field ``key`` is kept as a series."""
    return (key not in META_KEYS or key == WALL_KEY) and key != SMOOTH_KEY


class SeriesSet:
    """Every scalar metric of a run as a :class:`Downsampler`, plus the last and best evaluation.

    Train records give one series per numeric field (``train_loss``, ``lr``, ``grad_norm``, ...,
    and ``time``: see WALL_KEY) and ``train_loss_smooth`` (see :class:`LossSmoother`); eval
    records give one series per numeric field, named with a ``val_`` prefix (see
    :func:`eval_series_name`). Lists and maps
    (per_class, confusion, classes) are not series. A record whose step is not after the last
    record of its kind is ignored, like a Downsampler point.
    """

    def __init__(self, monitor: Monitor = Monitor(), max_points: int = DEFAULT_MAX_POINTS,
                 smoothing: float = DEFAULT_SMOOTHING):
        self.monitor = monitor
        self.max_points = max_points
        self.series: dict[str, Downsampler] = {}
        self.smoother = LossSmoother(smoothing)
        self.last_eval: Optional[dict] = None
        self.best_eval: Optional[dict] = None
        self.last_step: dict[str, int] = {}
        """Step of the last record accepted, per kind."""
        self.valid_length = 0
        """Bytes of the history file this set reflects (set by load_series)."""

    def feed(self, record: dict) -> bool:
        """Take one history record; return False if it was ignored (unknown kind, old step)."""
        check_record(record)
        kind, step = record["kind"], record["step"]
        if kind not in (TRAIN, EVAL) or not self._accept(kind, step):
            return False
        if kind == TRAIN:
            for key, value in record.items():
                if is_train_series(key) and is_number(value):
                    self._point(key, step, value)
            loss = record.get("train_loss")
            if is_number(loss) and math.isfinite(loss):
                self._point(SMOOTH_KEY, step, self.smoother.update(loss))
        else:
            self._note_eval(record)
            for key, value in record.items():
                if key not in META_KEYS and is_number(value):
                    self._point(eval_series_name(key), step, value)
        return True

    def _accept(self, kind: str, step: int) -> bool:
        last = self.last_step.get(kind)
        if last is not None and step <= last:
            return False
        self.last_step[kind] = step
        return True

    def _point(self, name: str, step: int, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Downsampler(self.max_points)
        series.append(step, value)

    def _note_eval(self, record: dict) -> None:
        self.last_eval = record
        if self.monitor.better(self.monitor.value(record), self.monitor.value(self.best_eval)):
            self.best_eval = record

    def snapshot_series(self) -> dict[str, dict[str, list]]:
        """``{name: Downsampler.to_dict()}`` for the protocol snapshot, names sorted."""
        return {name: self.series[name].to_dict() for name in sorted(self.series)}

    def eval_summary(self) -> dict[str, Optional[dict]]:
        """``{"last": eval record | None, "best": eval record | None}`` (the snapshot's ``eval``)."""
        return {"last": self.last_eval, "best": self.best_eval}
