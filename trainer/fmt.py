"""Plain-text formatting shared by the CLI, the foreground console and the TUI.

Stdlib only: the TUI imports it, so it must never pull in torch.
"""
from __future__ import annotations

import math
from typing import Optional

MISSING = "–"
"""What a value that is not known (yet) reads as."""


def duration(seconds: Optional[float]) -> str:
    """Compact duration: `45s`, `12m05s`, `3h07m`, `2d04h`; `–` when unknown.

    Two units at most: an ETA of hours does not need its seconds, and the text fits the narrow
    columns of `longhaul ls` and of the dashboard.
    """
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def epoch_number(index: Optional[int], total: Optional[int]) -> Optional[int]:
    """The epoch a person reads (1-based) from the protocol's 0-based `epoch` index.

    The engine's index is already one past the last epoch when a run finishes, so the number is
    capped at `total`: a finished 8-epoch run reads `8/8`, never `9/8`. The one rule for the TUI
    header, `longhaul status` (text and --json) and `ls`.
    """
    if index is None:
        return None
    number = int(index) + 1
    return min(number, int(total)) if total else number


#: Short names of the metrics `eval.monitor` may name (trainer.metrics), for narrow columns.
METRIC_LABELS = {"val_loss": "loss", "val_accuracy": "acc", "val_f1_macro": "F1", "val_f1_weighted": "F1w",
                 "val_precision_macro": "prec", "val_recall_macro": "recall", "val_auc_roc": "AUC",
                 "val_auc_pr": "AUC-PR", "val_sensitivity": "sens", "val_specificity": "spec", "val_ppv": "PPV",
                 "val_npv": "NPV", "train_loss": "train loss"}


def metric_label(name: str) -> str:
    """`F1` for val_f1_macro, `acc` for val_accuracy...; an unknown metric without its `val_`."""
    return METRIC_LABELS.get(name) or name.removeprefix("val_")


def metric_value(value: Optional[float]) -> str:
    """A metric in a narrow column: `0.812`, `0.034`, `12.5`; `–` when unknown."""
    if value is None or not math.isfinite(value):
        return MISSING if value is None else str(value)
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.4g}"


def best_text(best: Optional[dict]) -> str:
    """The `best` of a run's status (trainer.run.status.best_metric) as `F1 0.812`; `–` before one."""
    if not best:
        return MISSING
    return f"{best.get('label') or best.get('metric')} {metric_value(best.get('value'))}"


def samples_rate(value: Optional[float]) -> str:
    """samples/s: `212`, `8.4`; `–` when unknown."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
