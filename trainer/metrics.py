"""Classification metrics for evaluation records, computed with scikit-learn.

Every value returned is a plain Python int/float/None or a list of them, so the dict goes
straight into msgpack history records and protocol frames.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: Scalar metrics of every evaluation, and those only a two-class problem has. One list, read by
#: the config check of eval.monitor (which must not import scikit-learn) and by the engine.
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


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    loss: Optional[float] = None,
) -> dict:
    """Metrics of the predictions ``argmax(probs)`` against ``y_true``.

    Args:
        y_true: (N,) integer class indices in ``range(K)``.
        probs: (N, K) class probabilities (or any scores whose argmax is the prediction; the
            binary ranking metrics use column 1 as the positive-class score).
        classes: the K class names, in index order.
        loss: mean validation loss, reported as ``val_loss`` when given.

    Returns a dict with ``val_accuracy``, ``val_f1_macro``, ``val_f1_weighted``,
    ``val_precision_macro``, ``val_recall_macro``, ``per_class`` (precision, recall, f1, support:
    lists in class order), ``confusion`` (rows = true class, columns = predicted class) and
    ``classes``. Macro/weighted averages follow scikit-learn: over the classes that occur in
    ``y_true`` or in the predictions; ``per_class`` lists every class. A ratio with a zero
    denominator is 0.0. For K == 2 (positive class = index 1) it adds ``val_auc_roc``,
    ``val_auc_pr`` (average precision), ``val_sensitivity``, ``val_specificity``, ``val_ppv`` and
    ``val_npv``; the two AUCs are None when ``y_true`` holds a single class.
    """
    # imported here, not at the top: config loading imports this module for monitor_metrics
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                                 precision_score, recall_score)

    y_true, probs, classes = _checked(y_true, probs, classes)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))

    out: dict = {}
    if loss is not None:
        out["val_loss"] = float(loss)
    out["val_accuracy"] = float(accuracy_score(y_true, y_pred))
    out["val_f1_macro"] = float(f1_score(y_true, y_pred, average="macro", zero_division=0.0))
    out["val_f1_weighted"] = float(f1_score(y_true, y_pred, average="weighted", zero_division=0.0))
    out["val_precision_macro"] = float(precision_score(y_true, y_pred, average="macro", zero_division=0.0))
    out["val_recall_macro"] = float(recall_score(y_true, y_pred, average="macro", zero_division=0.0))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0.0
    )
    if len(classes) == 2:
        out.update(_binary_metrics(y_true, probs[:, 1], precision, recall))
    out["per_class"] = {
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "f1": [float(v) for v in f1],
        "support": [int(v) for v in support],
    }
    out["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    out["classes"] = classes
    return out


def _binary_metrics(y_true: np.ndarray, positive_score: np.ndarray, precision, recall) -> dict:
    """Binary extras; the clinical names are the per-class scores of sklearn read per class.

    sensitivity = recall of class 1, specificity = recall of class 0,
    PPV = precision of class 1, NPV = precision of class 0.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    both_classes = len(np.unique(y_true)) == 2  # ranking metrics need a positive and a negative
    return {
        "val_auc_roc": float(roc_auc_score(y_true, positive_score)) if both_classes else None,
        "val_auc_pr": float(average_precision_score(y_true, positive_score)) if both_classes else None,
        "val_sensitivity": float(recall[1]),
        "val_specificity": float(recall[0]),
        "val_ppv": float(precision[1]),
        "val_npv": float(precision[0]),
    }


def _checked(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated copies of the inputs; ValueError naming the argument and the problem."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,), got shape {y_true.shape}")
    if y_true.size == 0:
        raise ValueError("y_true is empty: no samples to evaluate")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(f"probs must have shape (N, K) = ({y_true.shape[0]}, K), got {probs.shape}")
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} classes")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes, got {classes}")
    if not np.isfinite(probs).all():
        raise ValueError("probs contains NaN or infinite values")
    bad = y_true[(y_true < 0) | (y_true >= len(classes))]
    if bad.size:
        raise ValueError(f"y_true holds class index {int(bad[0])}, outside 0..{len(classes) - 1}")
    return y_true, probs, classes
