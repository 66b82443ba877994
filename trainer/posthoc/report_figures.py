"""The report's figures (`longhaul report`): matplotlib images drawn with the Agg canvas and
embedded as base64 PNG, and the numpy curves behind them (ROC, PR, reliability bins, softmax).

Torch-free: numpy and matplotlib (the `report` extra), imported when a figure is drawn, so that
importing this module never fails and a missing extra is one clear `ReportError`.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Optional, Sequence

import numpy as np

from trainer.posthoc import calibration
from trainer.run.errors import RunError

#: Bins of the reliability diagram and of its ECE: 15 equal-width bins of the top probability.
RELIABILITY_BINS = calibration.ECE_BINS
#: Cells of a confusion matrix are annotated with their numbers up to this many classes.
ANNOTATE_CLASSES = 15
#: Past this many classes the ROC and PR curves get no legend entry each (the mean area instead).
LEGEND_CLASSES = 12


class ReportError(RunError):
    """The report cannot be written (missing extra, an output path that cannot be written)."""


def require_matplotlib():
    """The matplotlib `Figure` class, or a ReportError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("the report draws its figures with matplotlib, a dependency of longhaul that is"
                          " not installed here: pip install matplotlib") from None
    return Figure


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **subplots):
    """A new (Figure, axes array) on the Agg canvas, laid out by matplotlib's constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = require_matplotlib()(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **subplots)
    return fig, axes


def embed(fig, alt: str) -> str:
    """The figure as an `<img>` with its PNG inline (base64 data URI): the page needs no other file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# ----------------------------------------------------------------------------- numpy curves
softmax = calibration.softmax  # the report draws what evaluate measured


def _ranked(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct score threshold, highest score first."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each tie group
    tps = np.cumsum(positive)[last].astype(np.float64)
    return tps, (last + 1) - tps


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rate, true positive rate, area under the curve) of one class against the
    rest; NaN area when the split has no positives or no negatives of it."""
    tps, fps = _ranked(positive, score)
    p, n = tps[-1], fps[-1]
    if p == 0 or n == 0:
        return np.zeros(1), np.zeros(1), float("nan")
    tpr, fpr = np.r_[0.0, tps / p], np.r_[0.0, fps / n]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision) of one class against the rest (average precision as
    scikit-learn defines it: precision summed over the recall steps); NaN without positives."""
    tps, fps = _ranked(positive, score)
    if tps[-1] == 0:
        return np.zeros(1), np.ones(1), float("nan")
    recall = np.r_[0.0, tps / tps[-1]]
    precision = np.r_[1.0, tps / (tps + fps)]
    return recall, precision, float(np.sum(np.diff(recall) * precision[1:]))


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = RELIABILITY_BINS) -> dict:
    """calibration.reliability's bins of the top probability as arrays (NaN where a bin is empty)
    and their ECE: the same bins and ECE as `longhaul evaluate` stores."""
    table = calibration.reliability(probs, labels, bins)
    as_array = lambda values: np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # noqa: E731
    return {"count": np.asarray(table["count"], dtype=np.float64), "confidence": as_array(table["confidence"]),
            "accuracy": as_array(table["accuracy"]), "ece": calibration.expected_error(table)}


# ----------------------------------------------------------------------------- figures
TRAINING_PANELS = (
    ("Loss", ("train_loss", "train_loss_smooth", "val_loss")),
    ("Accuracy", ("train_accuracy", "val_accuracy")),
    ("F1", ("val_f1_macro", "val_f1_weighted")),
    ("Learning rate", ("lr",)),
)


def training_figure(series: dict[str, dict], phases: Sequence[tuple[int, str]],
                    lr_plan: Sequence[Sequence[float]] = ()) -> Optional[str]:
    """The training curves, one panel per TRAINING_PANELS entry that has data, phase boundaries
    (`phases`: (start step, name)) as dotted lines; None when no series has a point."""
    panels = [(title, [n for n in names if series.get(n, {}).get("step")]) for title, names in TRAINING_PANELS]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return None
    fig, axes = figure(11, 2.6 * len(panels), len(panels), 1, sharex=True)
    for ax, (title, names) in zip(axes[:, 0], panels):
        for name in names:
            _plot_series(ax, name, series[name])
        if title == "Learning rate" and len(lr_plan):
            plan = np.asarray(lr_plan, dtype=np.float64)  # [step index, lr]: the LR of step index + 1
            ax.plot(plan[:, 0] + 1, plan[:, 1], linestyle="--", color="grey", linewidth=1, label="planned")
        _mark_phases(ax, phases, label=ax is axes[0, 0])
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("step")
    return embed(fig, "training curves")


def _plot_series(ax, name: str, data: dict) -> None:
    step, value = np.asarray(data["step"]), np.asarray(data["value"], dtype=np.float64)
    marker = "o" if len(step) <= 60 and name.startswith("val_") else None
    if name == "train_loss":
        ax.fill_between(step, data["min"], data["max"], alpha=0.15, linewidth=0, label="train_loss min-max")
        ax.plot(step, value, linewidth=0.6, alpha=0.6, label=name)
    else:
        ax.plot(step, value, marker=marker, markersize=3, linewidth=1.2, label=name)


def _mark_phases(ax, phases: Sequence[tuple[int, str]], label: bool) -> None:
    for start, name in phases:
        if start > 0:
            ax.axvline(start, color="black", linestyle=":", linewidth=1)
        if label:
            ax.annotate(name, xy=(start, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=8, color="dimgrey")


def confusion_figure(confusion: Sequence[Sequence[float]], classes: Sequence[str]) -> str:
    """The confusion matrix twice, side by side: counts, and each row normalised to 1 (recall on
    the diagonal). Rows are the true class, columns the predicted one."""
    counts = np.asarray(confusion, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    size = min(max(4.0, 0.45 * len(classes) + 2.5), 14.0)
    fig, axes = figure(2 * size + 1, size, 1, 2)
    for ax, matrix, title, fmt in ((axes[0, 0], counts, "counts", "{:.0f}"),
                                   (axes[0, 1], rows, "row-normalised", "{:.2f}")):
        image = ax.imshow(matrix, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, list(classes), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, list(classes), fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
        if len(classes) <= ANNOTATE_CLASSES:
            high = matrix.max() / 2 if matrix.size else 0
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                        color="white" if value > high else "black")
    return embed(fig, "confusion matrix")


def roc_pr_figure(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  tta: Optional[np.ndarray] = None) -> str:
    """ROC and precision-recall curves, one-vs-rest per class (a binary run: its positive class,
    the second), each curve's area in the legend; `tta` probabilities dashed beside them. Past
    LEGEND_CLASSES classes the curves are thin and the legend gives the mean area."""
    shown = [1] if len(classes) == 2 else list(range(len(classes)))
    many = len(shown) > LEGEND_CLASSES
    fig, axes = figure(11, 4.6, 1, 2)
    roc, pr = axes[0, 0], axes[0, 1]
    areas: dict[str, list[float]] = {"AUC": [], "AP": []}
    for k in shown:
        positive = labels == k
        for scores, suffix, style in ((probs, "", "-"), (tta, " TTA", "--")):
            if scores is None:
                continue
            fpr, tpr, auc = roc_curve(positive, scores[:, k])
            recall, precision, ap = pr_curve(positive, scores[:, k])
            if not suffix:
                areas["AUC"].append(auc)
                areas["AP"].append(ap)
            width, color = (0.6, "tab:blue" if not suffix else "tab:orange") if many else (1.3, f"C{k % 10}")
            roc.plot(fpr, tpr, style, color=color, linewidth=width, label=None if many else f"{classes[k]}{suffix} (AUC {_area(auc)})")
            pr.step(recall, precision, style, where="post", color=color, linewidth=width,
                    label=None if many else f"{classes[k]}{suffix} (AP {_area(ap)})")
    if len(classes) == 2:
        pr.axhline((labels == 1).mean(), color="grey", linestyle="--", linewidth=1, label="chance")
    roc.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    if many:
        for ax, key in ((roc, "AUC"), (pr, "AP")):
            ax.plot([], [], color="tab:blue", label=f"{len(shown)} classes, mean {key} {_area(float(np.nanmean(areas[key])))}")
    for ax, title, x, y in ((roc, "ROC", "false positive rate (1 - specificity)", "true positive rate (sensitivity)"),
                            (pr, "Precision-recall", "recall (sensitivity)", "precision (PPV)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left")
    return embed(fig, "ROC and precision-recall curves")


def _area(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def reliability_figure(labels: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float) -> str:
    """Reliability diagrams before and after temperature scaling: accuracy against mean top
    probability per bin, the diagonal is perfect calibration; bar width follows the bins, the
    bars' shade how many examples fall in each."""
    fig, axes = figure(11, 4.4, 1, 2)
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    for ax, probs, title in ((axes[0, 0], before, "before calibration (T = 1)"),
                             (axes[0, 1], after, f"after calibration (T = {temperature:.3g})")):
        bins = reliability(labels, probs)
        filled = bins["count"] > 0
        share = bins["count"] / max(bins["count"].sum(), 1)
        colors = [(0.12, 0.47, 0.71, 0.25 + 0.75 * s / max(share.max(), 1e-12)) for s in share]
        ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=1 / RELIABILITY_BINS, align="edge",
               color=[c for c, f in zip(colors, filled) if f], edgecolor="black", linewidth=0.5, label="accuracy")
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="darkorange", markersize=3,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set_title(f"{title}: ECE {bins['ece']:.4f}", fontsize=10)
        ax.set_xlabel("top probability")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return embed(fig, "reliability diagrams before and after calibration")


def phase_time_figure(rows: Sequence[dict]) -> Optional[str]:
    """Horizontal bars: training time per phase (interruptions left out), and interruptions."""
    if not rows:
        return None
    fig, axes = figure(9, 0.5 * len(rows) + 1.4)
    ax = axes[0, 0]
    names = [f"{row['index'] + 1}. {row['name']}" for row in rows][::-1]
    active = np.array([row["active_s"] for row in rows][::-1])
    gaps = np.array([row["gap_s"] for row in rows][::-1])
    longest = float((active + gaps).max())
    unit, scale = next((u, s) for u, s in (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))
                       if longest >= 2 * s or s == 1)
    ax.barh(names, active / scale, color="tab:blue", label="training")
    ax.barh(names, gaps / scale, left=active / scale, color="tab:red", alpha=0.4, label="interruptions")
    ax.set_xlabel(unit)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return embed(fig, "time per phase")
