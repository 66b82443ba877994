"""Classification metrics for evaluation records, computed with scikit-learn.

Every value returned is a plain Python int/float/None or a list of them, so the dict goes
straight into msgpack history records and protocol frames.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# which metrics an evaluation produces lives in trainer.monitor: the config check reads it without numpy
from trainer.monitor import ALWAYS, BINARY_ONLY, TRAIN_MONITOR, monitor_metrics, monitor_problem  # noqa: F401


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


# ----------------------------------------------------------------------------- any number of classes
#: The metrics of `longhaul evaluate` that get bootstrap intervals.
CI_METRICS = ("accuracy", "f1_macro", "auc_roc_macro")


def evaluation_metrics(y_true, probs, classes: Sequence[str]) -> dict:
    """The metric set of `longhaul evaluate` for any number K >= 2 of classes.

    Returns ``n``, ``classes``, ``accuracy``, ``f1_macro``, ``f1_weighted``, ``auc_roc_macro``,
    ``auc_pr_macro``, ``per_class`` ({class: {precision, recall, f1, sensitivity, specificity,
    ppv, npv, auc_roc, auc_pr, support}}) and ``confusion`` (rows = true class).

    Each class is read one-vs-rest: sensitivity = TP/(TP+FN) (its recall), specificity =
    TN/(TN+FP), PPV = TP/(TP+FP) (its precision), NPV = TN/(TN+FN); a zero denominator gives
    0.0. auc_roc is roc_auc_score and auc_pr average_precision_score of ``probs[:, k]`` against
    ``y_true == k``; both are None for a class absent from ``y_true`` (or the only one present).
    The macro AUCs are the mean over the classes that have one (None when none has).
    f1_macro/f1_weighted follow scikit-learn, as the engine's val_f1_macro does: over the
    classes that occur in ``y_true`` or in the predictions.
    """
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    y_true, probs, classes = _checked(y_true, probs, classes)
    y_pred = probs.argmax(axis=1)
    k = len(classes)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    per_class, roc, pr = {}, [], []
    for c, name in enumerate(classes):
        positive = y_true == c
        ranked = 0 < positive.sum() < len(y_true)
        auc_roc = float(roc_auc_score(positive, probs[:, c])) if ranked else None
        auc_pr = float(average_precision_score(positive, probs[:, c])) if ranked else None
        if ranked:
            roc.append(auc_roc)
            pr.append(auc_pr)
        per_class[name] = {**_one_vs_rest(confusion, c), "auc_roc": auc_roc, "auc_pr": auc_pr}
    return {
        "n": int(len(y_true)),
        "classes": classes,
        "accuracy": float((y_pred == y_true).mean()),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0.0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0.0)),
        "auc_roc_macro": float(np.mean(roc)) if roc else None,
        "auc_pr_macro": float(np.mean(pr)) if pr else None,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _one_vs_rest(confusion: np.ndarray, c: int) -> dict:
    """Precision, recall, F1 and the clinical rates of class `c` from the confusion matrix."""
    tp = int(confusion[c, c])
    fn = int(confusion[c].sum()) - tp
    fp = int(confusion[:, c].sum()) - tp
    tn = int(confusion.sum()) - tp - fn - fp
    ratio = lambda a, b: float(a / b) if b else 0.0  # noqa: E731
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": ratio(2 * precision * recall, precision + recall),
            "sensitivity": recall, "specificity": ratio(tn, tn + fp), "ppv": precision, "npv": ratio(tn, tn + fn),
            "support": tp + fn}


def bootstrap_intervals(y_true, probs, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals {metric: [lo, hi]} of CI_METRICS (None where a metric is
    undefined on the data).

    Stratified: each resample draws, within every class, as many examples (with replacement) as
    that class has, so every resample has the class counts of the data and the one-vs-rest AUCs
    are defined in each of them. Seeded (`seed`), so the same predictions give the same
    intervals. The metrics are computed vectorised over the resamples, by the definitions of
    `evaluation_metrics` (AUC by the Mann-Whitney rank statistic with ties averaged).
    """
    y_true, probs, classes = _checked(y_true, probs, list(range(np.asarray(probs).shape[1])))
    rng = np.random.default_rng(seed)
    index = np.empty((n_boot, len(y_true)), dtype=np.int64)
    start = 0
    for c in np.unique(y_true):
        members = np.flatnonzero(y_true == c)
        index[:, start:start + len(members)] = members[rng.integers(0, len(members), (n_boot, len(members)))]
        start += len(members)
    values = {name: [] for name in CI_METRICS}
    for first in range(0, n_boot, BOOT_CHUNK):  # bounded memory: (chunk, N, K) at a time
        rows = index[first:first + BOOT_CHUNK]
        y, p = y_true[rows], probs[rows]
        pred = p.argmax(axis=2)
        values["accuracy"].append((pred == y).mean(axis=1))
        values["f1_macro"].append(_f1_macro(y, pred, len(classes)))
        values["auc_roc_macro"].append(_auc_macro(y, p))
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, chunks in values.items():
        vals = np.concatenate(chunks)
        vals = vals[np.isfinite(vals)]
        out[name] = [float(np.quantile(vals, alpha)), float(np.quantile(vals, 1.0 - alpha))] if vals.size else None
    return out


#: Bootstrap resamples computed at once.
BOOT_CHUNK = 50


def _f1_macro(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """scikit-learn's f1_score(average="macro") of each row of (B, N) labels and predictions:
    over the classes in that row's y or pred."""
    b = y.shape[0]
    flat = (np.arange(b)[:, None] * k * k + y * k + pred).ravel()
    confusion = np.bincount(flat, minlength=b * k * k).reshape(b, k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    denom = (confusion.sum(axis=2) + confusion.sum(axis=1)).astype(np.float64)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    return f1.sum(axis=1) / present.sum(axis=1)


def _auc_macro(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Mean one-vs-rest AUC-ROC of each row of (B, N) labels and (B, N, K) scores, over the
    classes with positives and negatives in that row (NaN when none has)."""
    from scipy.stats import rankdata

    total = np.zeros(y.shape[0])
    count = np.zeros(y.shape[0])
    for c in range(probs.shape[2]):
        positive = y == c
        n_pos = positive.sum(axis=1).astype(np.float64)
        n_neg = y.shape[1] - n_pos
        ranks = rankdata(probs[:, :, c], axis=1)
        ok = (n_pos > 0) & (n_neg > 0)
        auc = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / np.where(ok, n_pos * n_neg, 1.0)
        total += np.where(ok, auc, 0.0)
        count += ok
    return np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
