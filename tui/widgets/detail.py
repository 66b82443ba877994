"""The detail view: pick a metric on the left, see it large on the right; or, below the metrics,
a stored evaluation (evaluation.json), to see its per-class table instead of a chart."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from tui import fmt
from tui.model import RunModel, Series
from tui.widgets.charts import LineChart, step_label
from tui.xaxis import X_MODES, ZoomWindow, label_format
from tui.widgets.evaluation import OPTION_PREFIX, fill_per_class_table, result_title

# Metrics listed first, in this order; any other series follows alphabetically.
PREFERRED_ORDER = ("train_loss_smooth", "train_loss", "val_loss", "val_accuracy", "val_f1_macro",
                   "val_f1_weighted", "val_auc_roc", "val_auc_pr", "lr", "samples_per_s", "grad_norm",
                   "data_share")


LOSS_PAIR = "loss (train + val)"
"""The list entry drawing the train loss (braille line) and the validation loss (×) on one chart."""
LOSS_PAIR_PARTS = (("train_loss_smooth", "train_loss"), ("val_loss",))
"""Series of the pair's line (the first one the run has) and of its × points."""
MARK = "▶ "
"""Before the highlighted entry of the list, so it shows without colour."""


def metric_order(names) -> list[str]:
    """Series names in display order (the train + val loss pair first when the run has both)."""
    names = set(names)
    first = [n for n in PREFERRED_ORDER if n in names]
    pair = [LOSS_PAIR] if "val_loss" in names and names & set(LOSS_PAIR_PARTS[0]) else []
    return pair + first + sorted(names - set(first))


def loss_pair(series: dict[str, Series]) -> tuple[Optional[Series], Optional[Series]]:
    """(train loss, validation loss) of the pair entry."""
    train = next((series[name] for name in LOSS_PAIR_PARTS[0] if name in series), None)
    return train, series.get(LOSS_PAIR_PARTS[1][0])


class DetailView(Horizontal):
    """Metric list + large braille chart + a line of statistics and one of the chart options.

    Its keys work while the focus is inside it (the metric list): smoothing, per-metric log
    scale (the dashboard tile of that metric follows: the set is shared), envelope, x axis
    (step, epoch, training time), zoom, pan and reset.
    """

    DEFAULT_CSS = """
    DetailView { height: 1fr; }
    DetailView > OptionList, DetailView > OptionList:focus { width: 24; height: 1fr; border: none; padding: 0; }
    DetailView > Vertical { width: 1fr; height: 1fr; }
    DetailView .detail-info { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    DetailView.-compact > OptionList { width: 18; }
    DetailView #detail-table { height: 1fr; display: none; }
    DetailView.-table #detail-table { display: block; }
    DetailView.-table #detail-chart { display: none; }
    """
    # Not in the footer (it would crowd out the screen's keys): the options line above the chart
    # shows them, and the help lists them.
    BINDINGS = [
        Binding("m", "toggle('smooth')", "Smooth", show=False),
        Binding("l", "log_scale", "Log scale", show=False, tooltip="Log scale for this metric (its dashboard tile too)"),
        Binding("e", "toggle('envelope')", "Envelope", show=False),
        Binding("x", "x_axis", "X axis", show=False, tooltip="X axis: step → epoch → training time"),
        Binding("i", "zoom(1)", "Zoom in", show=False, tooltip="Zoom in (around the newest point)"),
        Binding("o", "zoom(-1)", "Zoom out", show=False),
        # Priority: the metric list (a scrollable) would take left/right for itself.
        Binding("left", "pan(-0.25)", "Pan left", priority=True, show=False),
        Binding("right", "pan(0.25)", "Pan right", priority=True, show=False),
        Binding("0", "reset_zoom", "Reset zoom", show=False),
    ]
    LIST_WIDTH = 24  # columns of the metric list (DEFAULT_CSS)

    metric: reactive[Optional[str]] = reactive(None)
    """Id of the option shown: a series name, `LOSS_PAIR`, or `eval:…` for a per-class table
    (None until the first series is known)."""

    def __init__(self, *args, log_metrics: Optional[set[str]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._table_shown: Optional[tuple[str, Optional[dict]]] = None
        """(option, result) of the per-class table on screen."""
        self.log_metrics: set[str] = log_metrics if log_metrics is not None else set()
        """Metrics on a log scale (shared with the dashboard, whose tiles follow it)."""
        self.zoom = ZoomWindow()
        self.x_mode = X_MODES[0]
        self._model: Optional[RunModel] = None
        self._marked: Optional[str] = None  # the option whose prompt carries MARK

    def compose(self) -> ComposeResult:
        yield OptionList(id="metric-list")
        with Vertical():
            yield Static(id="detail-stats", classes="detail-info")
            yield Static(id="detail-options", classes="detail-info")
            yield LineChart(id="detail-chart")
            yield DataTable(id="detail-table", cursor_type="none", zebra_stripes=True)

    @property
    def chart(self) -> LineChart:
        return self.query_one("#detail-chart", LineChart)

    def set_names(self, names: list[str], evaluations: list[tuple[str, str]] = ()) -> None:
        """Offer these series, then these (option id, label) per-class tables, in the list
        (keeps the highlighted one)."""
        option_list = self.query_one("#metric-list", OptionList)
        ordered = metric_order(names) + [option_id for option_id, _ in evaluations]
        current = [option_list.get_option_at_index(i).id for i in range(option_list.option_count)]
        if ordered == current:
            return
        option_list.clear_options()
        self._marked = None
        labels = dict(evaluations)
        option_list.add_options([Option("  " + labels.get(option_id, option_id), id=option_id)
                                 for option_id in ordered])
        if self.metric not in ordered and ordered:
            self.metric = ordered[0]
        if self.metric in ordered:
            option_list.highlighted = ordered.index(self.metric)
        self._mark(self.metric)

    def select(self, option_id: str) -> None:
        """Highlight (and show) the option `option_id` when the list has it."""
        option_list = self.query_one("#metric-list", OptionList)
        ids = [option_list.get_option_at_index(i).id for i in range(option_list.option_count)]
        if option_id in ids:
            self.metric = option_id
            option_list.highlighted = ids.index(option_id)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        # Not stopped: the run screen repaints the chart when it sees the event.
        self.metric = event.option.id
        self._mark(self.metric)

    def _mark(self, option_id: Optional[str]) -> None:
        """Move MARK to `option_id`'s prompt (two prompts rewritten, not the list)."""
        option_list = self.query_one("#metric-list", OptionList)
        for target, prefix in ((self._marked, "  "), (option_id, MARK)):
            if target is None:
                continue
            try:
                prompt = str(option_list.get_option(target).prompt)
            except Exception:  # OptionDoesNotExist: the list was just rebuilt without it
                continue
            option_list.replace_option_prompt(target, prefix + prompt[2:])
        self._marked = option_id

    @property
    def shows_evaluation(self) -> bool:
        """Whether the highlighted option is a per-class table rather than a series."""
        return bool(self.metric) and self.metric.startswith(OPTION_PREFIX)

    def show_per_class(self, result: Optional[dict], tta: bool, clock: Optional[fmt.Clock] = None) -> None:
        """Show the per-class table of `result` (its TTA table when `tta`) instead of a chart."""
        self.set_class(True, "-table")
        if self._table_shown is not None and self._table_shown[0] == self.metric and self._table_shown[1] is result:
            return  # the same result object as the last paint (the file was not read again)
        self._table_shown = (self.metric, result)
        table = self.query_one("#detail-table", DataTable)
        source = (result or {}).get("tta") if tta else result
        fill_per_class_table(table, (source or {}).get("per_class") or {}, (result or {}).get("classes"))
        if result is None:
            stats = Text("this evaluation is no longer in evaluation.json", style="dim")
        else:
            stats = Text.assemble(("per class" + (" with TTA" if tta else ""), "bold"), "  ",
                                  result_title(result, clock))
        info = Text("sens. = recall; spec., PPV, NPV and AUC one class against the rest", style="dim")
        self.query_one("#detail-stats", Static).update(stats)
        self.query_one("#detail-options", Static).update(info)

    def show_run(self, model: RunModel) -> None:
        """Draw the metric named by `metric` from `model` (the pair: both losses), its statistics
        and the chart options."""
        self._model = model
        self.set_class(False, "-table")
        self._table_shown = None
        chart = self.chart
        if self.metric == LOSS_PAIR:
            series, overlay = loss_pair(model.series)
        else:
            series, overlay = (model.series.get(self.metric) if self.metric else None), None
        chart.set_series(series, overlay)
        chart.title = "⣀ train  × val" if overlay is not None else ""  # the info line names the metric
        chart.log_scale = self.metric in self.log_metrics
        chart.x_format = label_format(self.x_mode, model.phases, model.elapsed, step_label)
        chart.x_mode = self.x_mode
        bounds = chart.data_bounds()
        chart.x_range = self.zoom.window(*bounds) if bounds and self.zoom.level else None
        # Room for the info lines: the view less the metric list and the lines' padding.
        room = (self.size.width or self.app.size.width) - self.LIST_WIDTH - 2
        for static_id, make in (("#detail-stats", lambda c: self._stats(series, overlay, c)),
                                ("#detail-options", self._options)):
            text = make(False)
            self.query_one(static_id, Static).update(text if text.cell_len <= room else make(True))

    # ------------------------------------------------------------------ keys
    def _repaint(self) -> None:
        if self._model is not None and not self.shows_evaluation:
            self.show_run(self._model)

    def action_toggle(self, option: str) -> None:
        setattr(self.chart, option, not getattr(self.chart, option))
        self._repaint()

    def action_log_scale(self) -> None:
        if not self.metric or self.shows_evaluation:
            return
        # The pair and its two losses go together, so their tiles and entries agree.
        names = {self.metric} | ({LOSS_PAIR, *LOSS_PAIR_PARTS[0], *LOSS_PAIR_PARTS[1]} if self.metric == LOSS_PAIR else set())
        if self.metric in self.log_metrics:
            self.log_metrics.difference_update(names)
        else:
            self.log_metrics.update(names)
        self._repaint()

    def action_x_axis(self) -> None:
        self.x_mode = X_MODES[(X_MODES.index(self.x_mode) + 1) % len(X_MODES)]
        self._repaint()

    def action_zoom(self, steps: int) -> None:
        bounds = self.chart.data_bounds()
        if bounds:
            self.zoom.zoom(*bounds, steps)
            self._repaint()

    def action_pan(self, fraction: float) -> None:
        bounds = self.chart.data_bounds()
        if bounds:
            self.zoom.pan(*bounds, fraction)
            self._repaint()

    def action_reset_zoom(self) -> None:
        self.zoom.reset()
        self._repaint()

    # ------------------------------------------------------------------ info lines
    def _stats(self, series: Optional[Series], overlay: Optional[Series], compact: bool) -> Text:
        """The metric's last value, range and steps (short forms when `compact`)."""
        if series is None or not len(series):
            return Text(f"{self.metric or 'no metric'}: no data yet", style="dim")
        count = fmt.count_short if compact else fmt.count
        steps = f"steps {count(int(series.steps[0]))}–{count(int(series.steps[-1]))}"
        if not compact:
            steps += f" in {len(series)} points"
        if overlay is not None:
            best = min(overlay.values) if len(overlay) else None
            text = Text.assemble(("loss", "bold"), f"  train {fmt.metric(series.last)}  val {fmt.metric(overlay.last)}"
                                 f"  best val {fmt.metric(best)}")
            return text if compact else text.append(f"  {steps}")
        lo, hi = min(series.mins), max(series.maxs)
        values = f"  min {fmt.metric(lo)}  max {fmt.metric(hi)}  {steps}"
        if compact:  # the ▶ in the list names the metric
            return Text.assemble(("last ", "dim"), (fmt.metric(series.last), "bold"), values)
        return Text.assemble((f"{self.metric}", "bold"), f"  last {fmt.metric(series.last)}", values)

    def _options(self, compact: bool) -> Text:
        """The chart options with their keys; short names when `compact`."""
        chart = self.chart
        onoff = lambda flag: "on" if flag else "off"  # noqa: E731
        items = [("m", "smooth", onoff(chart.smooth)), ("l", "log", onoff(self.metric in self.log_metrics)),
                 ("e", "envelope ░" if not compact else "env", onoff(chart.envelope)),
                 ("x", "axis" if not compact else "", self.x_mode), ("i/o", "zoom", self.zoom.label(compact))]
        if not compact:
            items.append(("←/→ 0", "pan, reset", ""))
        text = Text()
        for key, name, value in items:
            text.append(f"{' ' if text else ''}{key}", style="bold")
            text.append(f" {name}" if name else "", style="dim")
            text.append(" " if value else "")
            text.append(value)
        return text
