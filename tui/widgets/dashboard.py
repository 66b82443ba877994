"""The dashboard view: phase timeline, metric tiles, system panel, planned LR, newest events and log."""
from __future__ import annotations

import math
from typing import Optional

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from tui import fmt
from tui.model import ACTIVE_STATES, RunModel, Series
from tui.widgets.charts import LineChart, MetricTile
from tui.widgets.feeds import FeedTail
from tui.widgets.ranks import RANK_ROWS_SHORT, RANK_ROWS_TALL, RanksPanel
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
TALL_ROWS = 36  # the app's -tall breakpoint
WIDE_COLUMNS = 120  # the app's -wide breakpoint


def tile_height(width: int, height: int) -> int:
    """Rows of every metric tile at this terminal size: one line each on a short terminal, a
    head line over a sparkline (two rows of it when wide) on a tall one."""
    if height < TALL_ROWS:
        return 1
    return 3 if width >= WIDE_COLUMNS else 2


def tiles_right_edge(step: float) -> float:
    """The tiles' common right edge: `step` rounded up to a power of two near 1/64 of it (under a
    column of a tile's sparkline). The evaluation tiles, whose points move only with this edge,
    repaint every ~1.5% of the run instead of at every progress frame: idle cost."""
    grain = 2.0 ** max(0, math.floor(math.log2(max(step, 1.0) / 64)))
    return float(math.ceil(step / grain) * grain)


class Dashboard(Vertical):
    """The run screen's first view; `show` pushes a `RunModel` into its widgets (each repaints
    only what changed)."""

    def __init__(self, clock: fmt.Clock, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self._plan_key: object = None
        self._lr_series: Optional[Series] = None
        self._smooth_cache: tuple[tuple, Optional[Series]] = ((), None)
        self.log_metrics: set[str] = set()
        """Metrics drawn on a log scale (toggled with `l` in the detail view, which shares this set)."""

    def compose(self) -> ComposeResult:
        yield PhaseTimeline(self.clock, id="timeline")
        with Horizontal(id="dash-middle"):
            with Vertical(id="dash-metrics"):
                for label, key, _, value_format in TILES:
                    yield MetricTile(label, key, value_format=value_format, id=f"tile-{key}")
            with Vertical(id="dash-side"):
                yield SystemPanel(id="system")
                yield RanksPanel(id="ranks")
                yield LineChart(id="lr-chart", value_format=fmt.metric)
        with Horizontal(id="dash-bottom"):
            yield FeedTail("events", self.clock, id="dash-events")
            yield FeedTail("logs", self.clock, id="dash-log")

    def on_mount(self) -> None:
        self.query_one("#lr-chart", LineChart).envelope = False
        self._size_tiles()

    def on_resize(self) -> None:
        self._size_tiles()

    def _size_tiles(self) -> None:
        """Every tile the same height, from the terminal size alone. (Heights from CSS rules on
        the screen's breakpoint classes were applied to some tiles and not others after a
        resize or on opening a finished run: issue 13.)"""
        rows = tile_height(*self.app.size)
        # Explicit grid rows too: `grid-rows: auto` kept some rows at an old height after a resize.
        self.query_one("#dash-metrics").styles.grid_rows = str(rows)
        for tile in self.query(MetricTile):
            if tile.styles.height is None or tile.styles.height.value != rows:
                tile.styles.height = rows

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
        # No current value in the title: the lr tile shows it, and a title that changed at every
        # step repainted the whole chart at every refresh.
        lr_chart.title = "planned LR"
        tall = self.screen.has_class("-tall")
        system = self.query_one(SystemPanel)
        system.max_rows = 10 if tall else 5
        system.live = live
        system.system = model.system
        self._show_ranks(model, lr_chart, tall)
        # One step range for all tiles, so their points line up and a few points stay few marks.
        end = max([model.step, 1] + [s.last_step for s in model.series.values() if s.last_step is not None])
        x_range = (0.0, tiles_right_edge(end))
        for tile in self.query(MetricTile):
            tile.x_range = x_range
            tile.log_scale = tile.key in self.log_metrics
            self._refresh_tile(model, tile)
        self.query_one("#dash-events", FeedTail).sync(model)
        self.query_one("#dash-log", FeedTail).sync(model)

    def _show_ranks(self, model: RunModel, lr_chart: LineChart, tall: bool) -> None:
        """The ranks of a data-parallel run under the system panel (hidden for one process). On
        a short terminal they take the planned LR chart's rows (the LR tile keeps the value)."""
        ranks = self.query_one(RanksPanel)
        ranks.max_rows = RANK_ROWS_TALL if tall else RANK_ROWS_SHORT
        ranks.world = model.world
        show_lr = tall or model.world is None
        if lr_chart.display != show_lr:
            lr_chart.display = show_lr

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
