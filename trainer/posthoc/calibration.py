"""Calibration: temperature scaling and the errors it is judged by.

    T = fit_temperature(val_logits, val_labels)          # minimises NLL on the validation split
    calibration_errors(softmax(test_logits / T), test_labels)   # ece, mce, brier, nll

Temperature scaling divides the logits by one scalar T > 0 before the softmax; the predicted
class never changes, only how confident the probabilities are. T is fitted by minimising the
mean negative log-likelihood of the validation split over log T (a bounded scalar minimiser,
scipy's Brent method on log T in [-4, 4], i.e. T in [0.018, 55]). On a validation split the
model classifies without a single error the NLL falls without end as T -> 0 (every probability
pushed to 0 or 1). There T is chosen instead so that the mean top-class confidence equals the
accuracy such a split supports, Laplace's (n + 1) / (n + 2): 300 of 300 right -> 0.9967. (A model
trained with label smoothing and mixup is under-confident: on the speech bench, ECE 0.213 with
T = 1, which a perfect validation split must still be able to correct.)

ECE (expected calibration error): the top-class confidences are put in 15 equal-width bins over
[0, 1]; ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|, MCE
(maximum calibration error) the largest of those gaps over non-empty bins. Brier score: the mean
over examples of sum_k (p_k - onehot_k)^2 (0 best, 2 worst). NLL: the mean -log p(true class).

Only numpy and scipy: the logits come in as arrays.
"""
from __future__ import annotations

import json
import math
import time
from typing import Optional

import numpy as np

from trainer.run.rundir import RunDir, atomic_write_json

ECE_BINS = 15
LOG_T_BOUNDS = (-4.0, 4.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises nll(logits / T) (see the module docstring)."""
    from scipy.optimize import minimize_scalar

    logits, labels = _checked(logits, labels)
    if (logits.argmax(axis=1) == labels).all():
        return _match_confidence(logits, (len(labels) + 1) / (len(labels) + 2))
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-5})
    best = float(math.exp(result.x))
    # the minimiser never returns worse than no scaling at all
    return best if nll(logits, labels, best) <= nll(logits, labels, 1.0) else 1.0


def _match_confidence(logits: np.ndarray, target: float) -> float:
    """The T whose mean top-class confidence is `target` (it falls as T grows); a bound of
    LOG_T_BOUNDS when even that one cannot reach it."""
    from scipy.optimize import brentq

    gap = lambda log_t: float(softmax(logits, math.exp(log_t)).max(axis=1).mean()) - target  # noqa: E731
    low, high = LOG_T_BOUNDS
    if gap(low) <= 0:
        return math.exp(low)
    if gap(high) >= 0:
        return math.exp(high)
    return float(math.exp(brentq(gap, low, high, xtol=1e-6)))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """The reliability diagram's bins: `edges` (bins + 1), and per bin `count`, `confidence`
    (mean top-class probability) and `accuracy` (None for an empty bin)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes into the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    mean = lambda s: [float(a / c) if c else None for a, c in zip(s, count)]  # noqa: E731
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean(conf_sum), "accuracy": mean(acc_sum)}


def calibration_errors(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """{ece, mce, brier, nll} of probabilities `probs` (N, K) against integer `labels` (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    table = reliability(probs, labels, bins)
    n = len(labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1.0
    true_prob = np.clip(probs[np.arange(n), labels], 1e-12, 1.0)
    return {
        "ece": expected_error(table),
        "mce": float(max(abs(a - f) for c, a, f in zip(table["count"], table["accuracy"], table["confidence"]) if c)),
        "brier": float(np.mean(((probs - onehot) ** 2).sum(axis=1))),
        "nll": float(np.mean(-np.log(true_prob))),
    }


def expected_error(table: dict) -> float:
    """ECE of a `reliability` table: the bins' gaps between accuracy and confidence, weighted by size."""
    n = sum(table["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(table["count"], table["accuracy"], table["confidence"]) if c))


def _checked(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no examples to fit a temperature on")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    return logits, labels.astype(np.int64)


# ----------------------------------------------------------------------------- calibration.json
def fit_record(logits: np.ndarray, labels: np.ndarray, step: Optional[int], split: str = "val") -> dict:
    """The calibration.json entry of one weights file: the fitted temperature, the step of the
    weights it applies to, the split and its NLL before and after."""
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "step": step, "split": split, "n": int(len(labels)), "time": time.time(),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature)}


def saved_fit(files: RunDir, weights: str, step: Optional[int]) -> Optional[dict]:
    """The calibration.json entry for `weights` when it was fitted at `step`, else None."""
    entry = _read(files).get("weights", {}).get(weights)
    if isinstance(entry, dict) and entry.get("step") == step and isinstance(entry.get("temperature"), (int, float)) \
            and entry["temperature"] > 0:
        return entry
    return None


def save_fit(files: RunDir, weights: str, record: dict) -> None:
    """Put `record` into calibration.json under `weights` (atomically; other entries kept)."""
    doc = _read(files)
    doc.setdefault("weights", {})[weights] = record
    atomic_write_json(files.calibration, doc)


def _read(files: RunDir) -> dict:
    try:
        doc = json.loads(files.calibration.read_text())
    except (OSError, ValueError):
        return {"weights": {}}
    if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
        return {"weights": {}}
    return doc
