"""The dashboard view: phase timeline, metric tiles, system panel, planned LR, newest events and log."""
from __future__ import annotations

from typing import Optional

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from tui import fmt
from tui.model import ACTIVE_STATES, RunModel, Series
from tui.widgets.charts import LineChart, MetricTile
from tui.widgets.feeds import FeedTail
from tui.widgets.system import SystemPanel
from tui.widgets.timeline import PhaseTimeline, preparing_view, spans_from_plan

# (label, series name, where the current value comes from, value format)
TILES = (
    ("train loss", "train_loss_smooth", "progress", fmt.metric),
    ("val loss", "val_loss", "eval", fmt.metric),
    ("accuracy", "val_accuracy", "eval", fmt.metric),
    ("F1 macro", "val_f1_macro", "eval", fmt.metric),
    ("AUC", "val_auc_roc", "eval", fmt.metric),
    ("LR", "lr", "progress", fmt.metric),
    ("samples/s", "samples_per_s", "progress", fmt.metric),
    ("grad norm", "grad_norm", "progress", fmt.metric),
    ("data wait", "data_share", "progress", fmt.percent),
)
OPTIONAL_TILES = {"val_auc_roc"}  # shown only when the run reports them


class Dashboard(Vertical):
    """The run screen's first view; `show` pushes a `RunModel` into its widgets (each repaints
    only what changed)."""

    def __init__(self, clock: fmt.Clock, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._plan_key: object = None
        self._lr_series: Optional[Series] = None
        self._smooth_cache: tuple[tuple, Optional[Series]] = ((), None)

    def compose(self) -> ComposeResult:
        yield PhaseTimeline(self.clock, id="timeline")
        with Horizontal(id="dash-middle"):
            with Vertical(id="dash-metrics"):
                for label, key, _, value_format in TILES:
                    yield MetricTile(label, key, value_format=value_format, id=f"tile-{key}")
            with Vertical(id="dash-side"):
                yield SystemPanel(id="system")
                yield LineChart(id="lr-chart", value_format=fmt.metric)
        with Horizontal(id="dash-bottom"):
            yield FeedTail("events", self.clock, id="dash-events")
            yield FeedTail("logs", self.clock, id="dash-log")

    def on_mount(self) -> None:
        self.query_one("#lr-chart", LineChart).envelope = False

    def show(self, model: RunModel, live: bool) -> None:
        """Show `model`; `live`: the screen is connected to the daemon (phase ETAs are current)."""
        timeline = self.query_one(PhaseTimeline)
        if self._plan_key is not model.plan:
            self._plan_key = model.plan
            timeline.spans = spans_from_plan(model.plan)
            curve = (model.plan or {}).get("lr_curve") or []
            self._lr_series = Series([p[0] for p in curve], [p[1] for p in curve]) if curve else None
        timeline.step = model.step
        timeline.total_steps = model.total_steps
        timeline.preparing = preparing_view(model.preparing)
        timeline.setup = model.setup.status(model.state, model.state in ACTIVE_STATES)
        timeline.eta_labels, timeline.eta_times = self._phase_etas(model, timeline, live)
        lr_chart = self.query_one("#lr-chart", LineChart)
        lr_chart.set_series(self._lr_series)
        lr_chart.x_range = (0.0, float(max(model.total_steps - 1, 1)))
        lr_chart.marker = float(model.step)
        lr_now = ((model.progress or {}).get("metrics") or {}).get("lr")
        if lr_now is None and "lr" in model.series:
            lr_now = model.series["lr"].last
        lr_chart.title = "planned LR" + (f", now {fmt.metric(lr_now)}" if lr_now is not None else "")
        system = self.query_one(SystemPanel)
        system.max_rows = 10 if self.screen.has_class("-tall") else 5
        system.system = model.system
        for tile in self.query(MetricTile):
            self._refresh_tile(model, tile)
        self.query_one("#dash-events", FeedTail).sync(model)
        self.query_one("#dash-log", FeedTail).sync(model)

    def _refresh_tile(self, model: RunModel, tile: MetricTile) -> None:
        series = model.series.get(tile.key)
        if tile.key == "train_loss_smooth" and series is None and "train_loss" in model.series:
            series = self._smoothed(model.series["train_loss"])
        source = next(src for _, key, src, _ in TILES if key == tile.key)
        if source == "progress":
            metrics = (model.progress or {}).get("metrics") or {}
            value = metrics.get(tile.key, series.last if series is not None else None)
        else:
            value = (model.eval_last or {}).get(tile.key, series.last if series is not None else None)
            best = (model.eval_best or {}).get(tile.key)
            tile.note = f"best {fmt.metric(best)}" if tile.key == model.monitor and best is not None else ""
        tile.display = tile.key not in OPTIONAL_TILES or series is not None or value is not None
        tile.value = value
        tile.trend = series.trend() if series is not None else 0
        tile.set_series(series)

    def _smoothed(self, series: Series) -> Series:
        key = (id(series), len(series), series.last_step)
        if self._smooth_cache[0] != key:
            self._smooth_cache = (key, series.smoothed())
        return self._smooth_cache[1]

    def _phase_etas(self, model: RunModel, timeline: PhaseTimeline,
                    live: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        progress = model.progress or {}
        etas = progress.get("phase_etas") or []
        live = model.state in ACTIVE_STATES and live
        labels, times = [], []
        for i, span in enumerate(timeline.spans):
            eta = etas[i] if i < len(etas) else None
            if model.step >= span.end_step or (eta == 0 and model.step >= span.start_step):
                labels.append("done")
                times.append("")
            elif eta is None or not live:
                labels.append("")
                times.append("")
            else:
                labels.append(fmt.duration(eta))
                times.append(self.clock.eta_time(eta))
        return tuple(labels), tuple(times)
