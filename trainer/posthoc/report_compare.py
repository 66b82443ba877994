"""`longhaul report --compare RUN RUN... [--out FILE]`: several runs in one self-contained HTML page.

Sections: the comparison table of `longhaul compare` (the best of a row in bold) and the config
keys that differ; the training curves overlaid, one colour per run (smoothed train loss,
validation loss and the monitored metric, by step and by training time); the confusion matrices
side by side (each run's best validation evaluation, and its test evaluation when it has one).

Everything comes from the run layer (`trainer.run.compare`, `read_evaluation`) and the history's
cached summary (`load_summary`: the series the dashboards draw), so a long run costs a cache read.
Torch-free: numpy, and matplotlib through report_figures.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from trainer.history import load_summary
from trainer.monitor import Monitor
from trainer.posthoc.report import STYLE, _Html, fmt_time, note, say_written, table
from trainer.posthoc.report_figures import ANNOTATE_CLASSES, ReportError, embed, figure, require_matplotlib
from trainer.run.compare import column_names, compare_runs, table_rows
from trainer.run.evaluation import headline_result, read_evaluation
from trainer.run.status import plan_summary
from trainer.run.rundir import RunDir, atomic_write_bytes

#: (panel title, series) drawn for every run; the monitored metric is added (compare_panels).
CURVES = (("train loss (smoothed)", "train_loss_smooth"), ("validation loss", "val_loss"))
AXES = ("step", "time")


def main(args, run_dirs: list[Path]) -> int:
    """`longhaul report --compare`: write the page, print where (and anything left out)."""
    problems: list[str] = []
    return say_written(write_compare_report(run_dirs, getattr(args, "out", None), problems), problems)


def default_name(names: Sequence[str]) -> str:
    """compare-a-b.html (past four runs: compare-a-b-c-d-and-2-more.html), in the working folder."""
    shown = "-".join(names[:4]) + (f"-and-{len(names) - 4}-more" if len(names) > 4 else "")
    return f"compare-{shown}.html"


def write_compare_report(run_dirs: list[Path], out=None, problems: Optional[list] = None) -> Path:
    """Write the comparison page of `run_dirs` to `out` (default ./compare-NAMES.html)
    atomically; return the path. Problems with a run's files are written into the page."""
    require_matplotlib()
    comparison = compare_runs(run_dirs)
    names = column_names(comparison["runs"])
    path = Path(out) if out else Path(default_name(names))
    if path.is_dir():
        raise ReportError(f"cannot write the report to {path}: it is a directory (give a file name)")
    if not path.parent.is_dir():
        raise ReportError(f"cannot write the report to {path}: the folder {path.parent} does not exist")
    curves = [load_curves(Path(r["dir"]), name) for r, name in zip(comparison["runs"], names)]
    page = render_compare(comparison, curves)
    try:
        atomic_write_bytes(path, page.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    if problems is not None:
        problems.extend(p for c in curves for p in c.problems)
    return path


# ----------------------------------------------------------------------------- each run's curves
@dataclass
class RunCurves:
    """What the figures show of one run: its downsampled series, best evaluation and headline
    (test) result."""

    name: str
    monitor: str
    series: dict
    best_eval: Optional[dict]
    result: Optional[dict]
    problems: list


def load_curves(run_dir: Path, name: str) -> RunCurves:
    _, summary = plan_summary(run_dir)
    monitor = Monitor.of_summary(summary)
    problems: list[str] = []
    try:
        history = load_summary(RunDir(run_dir).history, monitor)
        series, best = history.series, history.best_eval
    except (OSError, ValueError) as exc:
        series, best = {}, None
        problems.append(f"{name}: the history cannot be read ({exc})")
    try:
        result = headline_result(read_evaluation(run_dir))
    except (OSError, ValueError) as exc:
        result = None
        problems.append(f"{name}: {exc}")
    return RunCurves(name, monitor.metric, series, best, result, problems)


def compare_panels(curves: list[RunCurves]) -> list[tuple[str, str]]:
    """(title, series) of each panel: CURVES, then each run's monitored metric once."""
    panels = list(CURVES)
    for run in curves:
        if all(key != run.monitor for _, key in panels):
            panels.append((run.monitor, run.monitor))
    return panels


def curve(run: RunCurves, key: str, axis: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(x, y) of one run's series: x in steps, or in training seconds (`time`: the steps mapped
    through the run's `elapsed` series); None when the run lacks the series (or, by time, its
    elapsed series)."""
    data = run.series.get(key)
    if not data or not data.get("step"):
        return None
    steps, values = np.asarray(data["step"], dtype=np.float64), np.asarray(data["value"], dtype=np.float64)
    if axis == "step":
        return steps, values
    elapsed = run.series.get("elapsed")
    if not elapsed or not elapsed.get("step"):
        return None
    at = np.r_[0.0, np.asarray(elapsed["step"], dtype=np.float64)]
    seconds = np.r_[0.0, np.asarray(elapsed["max"], dtype=np.float64)]  # it never goes down: a bucket's max is its end
    return np.interp(steps, at, seconds), values


# ----------------------------------------------------------------------------- figures
def _time_unit(curves: list[RunCurves]) -> tuple[str, float]:
    longest = max((float(max(c.series.get("elapsed", {}).get("max") or [0.0])) for c in curves), default=0.0)
    return next((u, s) for u, s in (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))
                if longest >= 2 * s or s == 1)


def curves_figure(curves: list[RunCurves]):
    """The overlaid curves as a matplotlib Figure: one row per panel, by step (left) and by
    training time (right), run i in colour C{i}; None when no run has any of the series."""
    panels = [(title, key) for title, key in compare_panels(curves)
              if any(curve(run, key, "step") is not None for run in curves)]
    if not panels:
        return None
    unit, scale = _time_unit(curves)
    fig, axes = figure(11, 2.8 * len(panels), len(panels), 2)
    for row, (title, key) in enumerate(panels):
        for col, axis in enumerate(AXES):
            ax = axes[row, col]
            for i, run in enumerate(curves):
                xy = curve(run, key, axis)
                if xy is not None:
                    x = xy[0] if axis == "step" else xy[0] / scale
                    marker = "o" if key.startswith("val_") and len(x) <= 60 else None
                    ax.plot(x, xy[1], color=f"C{i % 10}", marker=marker, markersize=3, linewidth=1.2, label=run.name)
            ax.set_title(f"{title} by {'step' if axis == 'step' else 'training time'}", loc="left", fontsize=10)
            ax.set_xlabel("step" if axis == "step" else f"training time ({unit})")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, loc="best")
    return fig


def _confusion(result: Optional[dict]) -> Optional[tuple[np.ndarray, list[str]]]:
    """(counts, classes) of an evaluation with a square matrix of its classes; None otherwise."""
    if not isinstance(result, dict):
        return None
    counts, classes = result.get("confusion"), result.get("classes")
    if not counts or not classes or len(counts) != len(classes) or any(len(r) != len(classes) for r in counts):
        return None
    return np.asarray(counts, dtype=np.float64), [str(c) for c in classes]


def confusion_grid_figure(curves: list[RunCurves]):
    """Each run's confusion matrices in a column (row-normalised colours, counts written in):
    its best validation evaluation, then its test evaluation when any run has one; None
    when no run has a matrix."""
    rows = [("best validation", [c.best_eval for c in curves])]
    if any(_confusion(c.result) is not None for c in curves):
        rows.append(("test", [c.result for c in curves]))
    if not any(_confusion(r) is not None for _, results in rows for r in results):
        return None
    classes = max((len(m[1]) for _, results in rows for m in map(_confusion, results) if m), default=2)
    size = min(max(3.2, 0.4 * classes + 2.0), 9.0)
    fig, axes = figure(size * len(curves), size * len(rows), len(rows), len(curves))
    for r, (what, results) in enumerate(rows):
        for c, (run, result) in enumerate(zip(curves, results)):
            _draw_confusion(axes[r, c], _confusion(result), f"{run.name}: {what}")
    return fig


def _draw_confusion(ax, matrix: Optional[tuple[np.ndarray, list[str]]], title: str) -> None:
    ax.set_title(title, fontsize=9)
    if matrix is None:
        ax.text(0.5, 0.5, "no evaluation", ha="center", va="center", transform=ax.transAxes, color="dimgrey")
        ax.set_axis_off()
        return
    counts, classes = matrix
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(ticks, classes, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    if len(classes) <= ANNOTATE_CLASSES:
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")


# ----------------------------------------------------------------------------- the page
def _comparison_table(comparison: dict, names: list[str]) -> str:
    rows = [[label, *[_Html(f"<b>{html.escape(cell)}</b>" if i == best else html.escape(cell))
                      for i, cell in enumerate(cells)]]
            for label, cells, best in table_rows(comparison)]
    return table(["", *names], rows, cls="compare")


def _config_table(comparison: dict, names: list[str]) -> str:
    diff = comparison["config_diff"]
    if not diff:
        return "<p>The runs' configs do not differ.</p>"
    rows = [[key, *["–" if v is None else str(v) for v in values]] for key, values in diff.items()]
    return "<p>The config keys whose values differ (– : the run has no such key):</p>" + table(["key", *names], rows)


def render_compare(comparison: dict, curves: list[RunCurves]) -> str:
    """The whole page (the figures drawn here)."""
    names = [c.name for c in curves]
    title = "longhaul comparison: " + ", ".join(names)
    runs = "".join(f"<li><b>{html.escape(n)}</b> {html.escape(r['dir'])}</li>" for n, r in zip(names, comparison["runs"]))
    problems = "".join(note(p) for c in curves for p in c.problems)
    lines = curves_figure(curves)
    grid = confusion_grid_figure(curves)
    parts = [
        ("summary", "Summary", _comparison_table(comparison, names)
         + "<p>Bold: the best of a row. Times are training time (pauses excluded) per phase.</p>"),
        ("config", "Config differences", _config_table(comparison, names)),
        ("curves", "Training curves", embed(lines, "overlaid training curves: " + ", ".join(names)) if lines
         else note("No run has a training history yet.")),
        ("confusion", "Confusion matrices", embed(grid, "confusion matrices: " + ", ".join(names)) if grid
         else note("No run has an evaluation with a confusion matrix yet.")),
    ]
    body = "\n".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>\n{b}\n</section>' for a, h, b in parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<ul class=\"meta\">{runs}</ul>\n"
            f'<p class="meta">written {fmt_time(time.time())}</p>\n{problems}\n{body}\n</body></html>\n')

