"""What "better" means for the monitored metric.

One definition for every place that picks a best evaluation: the engine (best.pt, early stopping,
plateau, raw vs EMA weights), the history's best evaluation (status, the snapshot), the TUI and
checkpoint retention. With `min_delta > 0` an evaluation that improves by less than `min_delta`
is not a new best anywhere. Torch-free and numpy-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional

MODES = ("max", "min")


#: Scalar metrics of every evaluation, and those only a two-class problem has. One list, read by
#: the engine and by the config check of eval.monitor (without numpy: `longhaul start` runs it).
ALWAYS = ("val_loss", "val_accuracy", "val_f1_macro", "val_f1_weighted", "val_precision_macro",
          "val_recall_macro")
BINARY_ONLY = ("val_auc_roc", "val_auc_pr", "val_sensitivity", "val_specificity", "val_ppv", "val_npv")
#: Not an evaluation metric, but a monitor the engine supports: the smoothed training loss.
TRAIN_MONITOR = "train_loss"


def monitor_metrics(num_classes: int) -> set[str]:
    """Every value eval.monitor may name for a problem with `num_classes` classes."""
    names = set(ALWAYS) | {TRAIN_MONITOR}
    return names | set(BINARY_ONLY) if num_classes == 2 else names


def monitor_problem(monitor: str, num_classes: int) -> Optional[str]:
    """None when evaluation produces `monitor` for `num_classes` classes, else why not (naming
    the metrics that do exist), for a ConfigError on eval.monitor."""
    names = monitor_metrics(num_classes)
    if monitor in names:
        return None
    why = " (it exists only for 2 classes)" if monitor in BINARY_ONLY else ""
    return (f"{monitor!r} is never produced for this data's {num_classes} classes{why}; "
            f"metrics that exist: {', '.join(sorted(names))}")


def direction_of(metric: str) -> str:
    """'min' for losses, 'max' for every other metric (accuracy, F1, AUC, ...)."""
    return "min" if metric.endswith("_loss") else "max"


def usable(value: Any) -> bool:
    """A finite number (not a bool): the only values that can be a best."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Monitor:
    metric: str = "val_f1_macro"
    mode: str = "max"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta!r}")

    @classmethod
    def of(cls, metric: str, mode: Optional[str] = None, min_delta: float = 0.0) -> "Monitor":
        """The monitor of `metric`; `mode` None follows the metric (see direction_of)."""
        return cls(metric, mode or direction_of(metric), min_delta)

    @classmethod
    def of_summary(cls, config: dict) -> "Monitor":
        """The monitor of a config summary (RunConfig.summary(), the snapshot's `config`); runs
        whose summary has no `mode` or `min_delta` get the metric's direction and no delta."""
        mode = config.get("mode")
        return cls.of(config.get("monitor") or "val_f1_macro", mode if mode in MODES else None,
                      config.get("min_delta") or 0.0)

    def exact(self) -> "Monitor":
        """The same monitor without min_delta: any strict improvement counts."""
        return replace(self, min_delta=0.0)

    def better(self, value: Any, than: Optional[float]) -> bool:
        """Whether `value` is a new best over `than` (None: nothing yet): finite, and better by
        more than min_delta."""
        if not usable(value):
            return False
        if than is None:
            return True
        return value > than + self.min_delta if self.mode == "max" else value < than - self.min_delta

    def value(self, record: Optional[dict]) -> Optional[float]:
        """The monitored value of an evaluation record, when it is usable."""
        value = (record or {}).get(self.metric)
        return value if usable(value) else None

    def best(self, records: Iterable[Optional[dict]]) -> Optional[dict]:
        """The best record in order of arrival (the earliest wins a tie), or None."""
        best = None
        for record in records:
            if self.better(self.value(record), self.value(best)):
                best = record
        return best
