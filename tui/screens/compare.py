"""The comparison screen (`c` in the run list, over the runs marked with Space): one metric of
every run overlaid in one chart, by step, by training time (pauses excluded) or by wall-clock
time since each run's first step (pauses included), over a compact table of `longhaul compare`'s
fields.

The runs' files are read once, in a worker thread (the history through its cached summary,
the same the offline dashboard reads); nothing polls. `g` reads them again (a live run moved on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from trainer.fmt import duration
from trainer.history.series import WALL_KEY
from trainer.monitor import Monitor
from trainer.run.compare import column_names, compare_runs, table_rows
from trainer.run.errors import RunError
from trainer.run.rundir import RunDir
from trainer.run.status import plan_summary
from tui.model import Series
from tui.widgets.charts import step_label
from tui.widgets.footer import KeyFooter
from tui.widgets.overlay_chart import OverlayChart

AXES = ("step", "time", "wall")
#: What the chart's title calls each axis.
AXIS_NAMES = {"step": "step", "time": "training time", "wall": "wall time"}
#: Series a comparison starts with when every run has them, before the others (by name).
FIRST_METRICS = ("val_loss", "train_loss_smooth")
#: Series that are not a metric to compare (the time axes themselves).
NOT_METRICS = ("elapsed", WALL_KEY)


@dataclass
class Comparison:
    """What the screen shows, read off the UI thread."""

    table: dict = field(default_factory=dict)
    """compare_runs' object."""
    names: list = field(default_factory=list)
    series: list = field(default_factory=list)
    """Per run: {series name: wire series} of the history's cached summary."""
    metrics: list = field(default_factory=list)
    """The series every run has, the first run's monitor first."""
    error: Optional[str] = None


def load_comparison(run_dirs: list[Path]) -> Comparison:
    """The comparison of `run_dirs` from their files (a worker thread calls this)."""
    from trainer.history import load_summary

    try:
        table = compare_runs(run_dirs)
    except (RunError, OSError, ValueError) as exc:
        return Comparison(error=str(exc))
    series = []
    for run in table["runs"]:
        _, summary = plan_summary(Path(run["dir"]))
        try:
            series.append(load_summary(RunDir(run["dir"]).history, Monitor.of_summary(summary)).series)
        except (OSError, ValueError):
            series.append({})
    monitors = [(r.get("best") or {}).get("metric") for r in table["runs"]]
    return Comparison(table, column_names(table["runs"]), series, common_metrics(series, monitors))


def common_metrics(series: list[dict], monitors: list[Optional[str]]) -> list[str]:
    """The series every run has: the runs' monitors first, then FIRST_METRICS, then by name."""
    common = set.intersection(*(set(s) for s in series)) - set(NOT_METRICS) if series else set()
    first = [m for m in [*monitors, *FIRST_METRICS] if m in common]
    first = list(dict.fromkeys(first))
    return first + sorted(common - set(first))


def by_time(wire: dict, elapsed: Optional[dict]) -> Optional[Series]:
    """A series with its steps mapped to training seconds through the run's `elapsed` series
    (it never goes down: a bucket's max is its value at its last step); None without one."""
    if not elapsed or not elapsed.get("step"):
        return None
    at = np.r_[0.0, np.asarray(elapsed["step"], dtype=np.float64)]
    seconds = np.r_[0.0, np.asarray(elapsed["max"], dtype=np.float64)]
    x = np.interp(np.asarray(wire["step"], dtype=np.float64), at, seconds)
    return Series(x.tolist(), wire["value"], wire.get("min"), wire.get("max"))


def by_wall(wire: dict, wall: Optional[dict]) -> Optional[Series]:
    """A series with its steps mapped to wall-clock seconds since the run's first train record
    through its `time` series (WALL_KEY: a pause, and the time between a stop and its resume,
    stretch it); None without one."""
    if not wall or not wall.get("step"):
        return None
    clock = np.asarray(wall["max"], dtype=np.float64) - float(wall["min"][0])
    x = np.interp(np.asarray(wire["step"], dtype=np.float64), np.asarray(wall["step"], dtype=np.float64), clock)
    return Series(x.tolist(), wire["value"], wire.get("min"), wire.get("max"))


def on_axis(axis: str, wire: dict, series: dict) -> Optional[Series]:
    """One run's series `wire` on the x `axis` (AXES); `series`: every series of the run."""
    if axis == "time":
        return by_time(wire, series.get("elapsed"))
    if axis == "wall":
        return by_wall(wire, series.get(WALL_KEY))
    return Series.from_wire(wire)


def compare_table(comparison: Comparison) -> Table:
    """The compact table: rows that hold a value for some run (best marked *), the config diff."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    table.add_column("")
    for name in comparison.names:
        table.add_column(name, justify="right")
    for label, cells, best in table_rows(comparison.table):
        if any(cell != "–" for cell in cells):
            table.add_row(label, *[Text(c + "*", style="bold") if i == best else c for i, c in enumerate(cells)])
    for key, values in comparison.table["config_diff"].items():
        table.add_row(Text(f"config {key}", style="dim"), *["–" if v is None else str(v) for v in values])
    return table


class CompareScreen(Screen):
    """Several runs' curves in one chart (see the module docstring)."""

    DEFAULT_CSS = """
    CompareScreen #compare-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    CompareScreen #compare-chart { height: 1fr; min-height: 8; }
    CompareScreen #compare-table-box { height: auto; max-height: 45%; }
    CompareScreen #compare-table { padding: 0 1; }
    """
    BINDINGS = [
        Binding("m", "next_metric", "Metric", tooltip="Show the next metric all these runs have"),
        Binding("x", "toggle_axis", "Step/time", tooltip="x axis: step, training time (pauses excluded) or wall "
                                                        "time (pauses included)"),
        Binding("g", "reload", "Reload", tooltip="Read the runs' files again (a live run moved on)"),
        Binding("escape", "back", "Back", tooltip="Back to the run list"),
    ]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = [Path(d) for d in run_dirs]
        self.comparison: Optional[Comparison] = None
        self.metric: Optional[str] = None
        self.axis = AXES[0]

    def compose(self) -> ComposeResult:
        yield Static(f"comparing {len(self.run_dirs)} runs: reading their files…", id="compare-title")
        yield OverlayChart(id="compare-chart")
        with VerticalScroll(id="compare-table-box"):
            yield Static("", id="compare-table")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="compare", name="compare")
    def load(self) -> None:
        comparison = load_comparison(self.run_dirs)
        self.app.call_from_thread(self.show, comparison)

    def show(self, comparison: Comparison) -> None:
        self.comparison = comparison
        if comparison.error:
            self.query_one("#compare-title", Static).update(f"cannot compare: {comparison.error}")
            return
        if self.metric not in comparison.metrics:
            self.metric = comparison.metrics[0] if comparison.metrics else None
        self.query_one("#compare-table", Static).update(compare_table(comparison))
        self.draw_chart()

    def draw_chart(self) -> None:
        comparison = self.comparison
        if comparison is None or comparison.error:
            return
        chart = self.query_one("#compare-chart", OverlayChart)
        title = self.query_one("#compare-title", Static)
        names = ", ".join(comparison.names)
        if self.metric is None:
            title.update(f"{names}: no metric all of them have")
            chart.set_lines([])
            return
        lines = [(name, on_axis(self.axis, series[self.metric], series))
                 for name, series in zip(comparison.names, comparison.series)]
        chart.x_format = step_label if self.axis == "step" else duration
        chart.x_mode = self.axis
        chart.title = f"{self.metric} by {AXIS_NAMES[self.axis]}"
        chart.set_lines(lines)
        place = f"{comparison.metrics.index(self.metric) + 1}/{len(comparison.metrics)}"
        title.update(f"compare {names}   metric {self.metric} ({place}, m: next)   x: {self.axis}")

    def action_next_metric(self) -> None:
        metrics = self.comparison.metrics if self.comparison else []
        if metrics:
            self.metric = metrics[(metrics.index(self.metric) + 1) % len(metrics)] if self.metric in metrics else metrics[0]
            self.draw_chart()

    def action_toggle_axis(self) -> None:
        self.axis = AXES[(AXES.index(self.axis) + 1) % len(AXES)]
        self.draw_chart()

    def action_reload(self) -> None:
        self.load()

    def action_back(self) -> None:
        self.app.pop_screen()
