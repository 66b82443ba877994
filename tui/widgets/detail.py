"""The detail view: pick a metric on the left, see it large on the right; or, below the metrics,
a stored evaluation (evaluation.json), to see its per-class table instead of a chart."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from tui import fmt
from tui.model import Series
from tui.widgets.charts import LineChart
from tui.widgets.evaluation import OPTION_PREFIX, fill_per_class_table, result_title

# Metrics listed first, in this order; any other series follows alphabetically.
PREFERRED_ORDER = ("train_loss_smooth", "train_loss", "val_loss", "val_accuracy", "val_f1_macro",
                   "val_f1_weighted", "val_auc_roc", "val_auc_pr", "lr", "samples_per_s", "grad_norm",
                   "data_share")


def metric_order(names) -> list[str]:
    """Series names in display order."""
    names = set(names)
    first = [n for n in PREFERRED_ORDER if n in names]
    return first + sorted(names - set(first))


class DetailView(Horizontal):
    """Metric list + large braille chart + one line of statistics and the chart options."""

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

    metric: reactive[Optional[str]] = reactive(None)
    """Id of the option shown: a series name, or `eval:…` for a per-class table (None until the
    first series is known)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._table_shown: Optional[tuple[str, Optional[dict]]] = None
        """(option, result) of the per-class table on screen."""

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
        option_list.add_options([Option(name, id=name) for name in metric_order(names)]
                                + [Option(label, id=option_id) for option_id, label in evaluations])
        if self.metric not in ordered and ordered:
            self.metric = ordered[0]
        if self.metric in ordered:
            option_list.highlighted = ordered.index(self.metric)

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

    def show(self, series: Optional[Series], marker_step: Optional[int]) -> None:
        """Draw `series` (the one named by `metric`) and its statistics."""
        self.set_class(False, "-table")
        self._table_shown = None
        chart = self.chart
        chart.set_series(series)
        chart.title = ""  # the info line above names the metric
        stats, options = self._info(series)
        self.query_one("#detail-stats", Static).update(stats)
        self.query_one("#detail-options", Static).update(options)

    def _info(self, series: Optional[Series]) -> tuple[Text, Text]:
        chart = self.chart
        if series is None or not len(series):
            stats = Text(f"{self.metric or 'no metric'}: no data yet", style="dim")
        else:
            lo, hi = min(series.mins), max(series.maxs)
            stats = Text.assemble((f"{self.metric}", "bold"), f"  last {fmt.metric(series.last)}  min {fmt.metric(lo)}"
                                  f"  max {fmt.metric(hi)}  steps {fmt.count(int(series.steps[0]))}"
                                  f"–{fmt.count(int(series.steps[-1]))} in {len(series)} points")
        options = Text.assemble(
            "[m] smoothing ", ("on" if chart.smooth else "off", "bold"),
            "  [l] log scale ", ("on" if chart.log_scale else "off", "bold"),
            "  [e] min/max envelope ░ ", ("on" if chart.envelope else "off", "bold"))
        return stats, options
