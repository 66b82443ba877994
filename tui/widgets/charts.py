"""Chart widgets: the braille line chart of the detail view and the planned-LR panel, and one-line
metric tiles with a sparkline. The drawing itself is `tui.braille`."""
from __future__ import annotations

import itertools
import math
from typing import Callable, Optional

from rich.text import Text

from tui import braille, fmt
from tui.model import Series
from tui.widgets.drawn import DrawnWidget, drawn

ARROWS = {1: "↑", -1: "↓", 0: "→"}


def step_label(step: float) -> str:
    """Compact step count for axes: 950, 12k, 1.2M."""
    step = int(step)
    if step >= 1_000_000:
        return f"{step / 1e6:.1f}M"
    if step >= 10_000:
        return f"{step / 1e3:.0f}k"
    if step >= 1_000:
        return f"{step / 1e3:.1f}k"
    return str(step)


def series_signature(series: Optional[Series]) -> tuple:
    """Changes whenever the series is replaced or gains points (cheap to compute)."""
    if series is None:
        return (None,)
    return (id(series), len(series), series.last_step, series.last)


class SeriesView:
    """Mixin for widgets that draw one Series and repaint (bump `version`) only when it changed."""

    def set_series(self, series: Optional[Series]) -> None:
        """Show `series` (None: nothing); repaints only if it is another series or has new points."""
        signature = series_signature(series)
        if signature != self._signature:
            self.series, self._signature = series, signature
            self.version += 1


class LineChart(SeriesView, DrawnWidget):
    """A braille line chart of one `Series` (and optionally a second one marked ×, e.g. the
    validation loss over the train loss) with a y-axis gutter, an x-axis row and a marker.

    The series is set with `set_series`; reactives switch smoothing, log scale and the min/max
    envelope (drawn ░ wherever one plotted point stands for several logged ones). The y range is
    robust: far outliers are drawn at the edge and the y label there carries ↑ (or ↓).
    """

    DEFAULT_CSS = """
    LineChart {
        height: 1fr;
        min-height: 3;
    }
    LineChart > .chart--line { color: $accent; }
    LineChart > .chart--envelope { color: $accent 40%; }
    LineChart > .chart--marker { color: $warning; text-style: bold; }
    LineChart > .chart--axis { color: $text-muted; }
    LineChart > .chart--overlay { color: $success; text-style: bold; }
    """
    COMPONENT_CLASSES = {"chart--line", "chart--envelope", "chart--marker", "chart--axis", "chart--overlay"}
    GUTTER = 8  # columns of y-axis labels

    version: drawn[int] = drawn(0)
    """Bumped by `set_series` whenever the data changes (the series itself is not copied)."""
    smooth: drawn[bool] = drawn(False)
    """Draw an exponential moving average instead of the raw points."""
    log_scale: drawn[bool] = drawn(False)
    """Logarithmic y axis (falls back to linear, with a note, if a value is not positive)."""
    envelope: drawn[bool] = drawn(True)
    """Shade the min..max range of the points each plotted column stands for."""
    marker: drawn[Optional[float]] = drawn(None)
    """An x value (step) to mark with a vertical line, e.g. the current step (a repaint only when
    that moves the line to another column: `drawn`)."""
    x_range: drawn[Optional[tuple[float, float]]] = drawn(None)
    """Fixed x range (e.g. the whole run, or a zoomed window); default: the series' own range."""
    x_mode: drawn[str] = drawn("step")
    """What the x labels say (`x_format` writes them); a change repaints."""
    title: drawn[str] = drawn("")
    """Text in the top-left corner of the plot."""

    def __init__(self, *, value_format: Callable[[float], str] = fmt.metric, name: Optional[str] = None,
                 id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.series: Optional[Series] = None
        self.overlay: Optional[Series] = None
        self._signature: tuple = ()
        self.value_format = value_format
        self.x_format: Callable[[float], str] = step_label

    def set_series(self, series: Optional[Series], overlay: Optional[Series] = None) -> None:
        """Show `series` (and `overlay` marked ×); repaints only when either changed."""
        signature = (series_signature(series), series_signature(overlay))
        if signature != self._signature:
            self.series, self.overlay, self._signature = series, overlay, signature
            self.version += 1

    def data_bounds(self) -> Optional[tuple[float, float]]:
        """The first and last step of the data shown (both series), None without data."""
        ends = [(s.steps[0], s.steps[-1]) for s in (self.series, self.overlay) if s is not None and len(s)]
        if not ends:
            return None
        return min(e[0] for e in ends), max(e[1] for e in ends)

    def _x_bounds(self) -> Optional[tuple[float, float]]:
        return self.x_range if self.x_range is not None else self.data_bounds()

    def _marker_column(self, marker: Optional[float], plot_width: int) -> Optional[int]:
        bounds = self._x_bounds()
        if marker is None or bounds is None or bounds[1] <= bounds[0]:
            return None
        first, last = bounds
        column = int((marker - first) / (last - first) * (plot_width - 1) + 0.5)
        return column if 0 <= column < plot_width else None

    def _columns(self, plot_width: int, first: float, last: float) -> tuple[list, list, bool]:
        """The dot columns of the series and of the overlay, and whether they are log10 values."""
        data = self.series.smoothed() if self.smooth else self.series
        columns = data.resample(plot_width * 2, first, last)
        extra = self.overlay.resample(plot_width * 2, first, last, interpolate=False) if self.overlay else []
        if not self.log_scale:
            return columns, extra, False
        logged, logged_extra = braille.log_transform(columns), braille.log_transform(extra)
        if logged is None or logged_extra is None:
            return columns, extra, False
        return logged, logged_extra, True

    def draw(self) -> list[Text]:
        width, height = self.size
        bounds = self._x_bounds()
        if self.series is None or bounds is None or width < 12 or height < 1:
            return [Text(self.title + ("  " if self.title else "") + "no data yet", style="dim")]
        gutter, plot_width = self.GUTTER, width - self.GUTTER
        title_row = bool(self.title) and height >= 3
        plot_height = max(1, height - 1 - title_row)
        first, last = bounds
        columns, extra, use_log = self._columns(plot_width, first, last)
        if not any(c is not None for c in columns + extra):  # e.g. zoomed in between two evaluations
            return [Text(f"no points between {self.x_format(first)} and {self.x_format(last)}", style="dim")]
        lo, hi, clipped_lo, clipped_hi = braille.value_range(columns, self.envelope, extra)
        marker_col = self._marker_column(self.marker, plot_width)
        cells = braille.plot(columns, plot_height, lo, hi, marker_col, self.envelope)
        if extra:
            braille.overlay(cells, extra, lo, hi)
        styles = {kind: self.component_style(f"chart--{kind}")
                  for kind in ("line", "envelope", "marker", "axis", "overlay")}
        lines = []
        if title_row:
            note = " (log scale needs values > 0: linear)" if self.log_scale and not use_log else ""
            lines.append(Text.assemble(" " * gutter, (self.title + note, "bold")))
        y_labels = self._y_labels(plot_height, lo, hi, use_log, clipped_lo, clipped_hi)
        for r, row in enumerate(cells):
            line = Text(y_labels.get(r, " " * gutter), style=styles["axis"])
            # One span per run of a kind, not per cell: each span is a segment to compose and
            # write, and this chart repaints as the step marker moves.
            for kind, run in itertools.groupby(row, key=lambda cell: cell[1]):
                line.append("".join(ch for ch, _ in run), styles.get(kind) if kind else None)
            lines.append(line)
        if height >= 2:
            axis = braille.axis_labels(first, last, plot_width, self.x_format)
            if marker_col is not None and axis[marker_col] == " ":
                axis = axis[:marker_col] + "▲" + axis[marker_col + 1:]
            lines.append(Text(" " * gutter + axis, style=styles["axis"]))
        return lines

    def _y_labels(self, plot_height: int, lo: float, hi: float, use_log: bool,
                  clipped_lo: bool, clipped_hi: bool) -> dict[int, str]:
        """Gutter text by plot row: top, bottom (and middle when tall); ↑/↓ at a clipped edge."""
        unlog = (lambda v: 10 ** v) if use_log else (lambda v: v)
        labels = {0: self.value_format(unlog(hi)) + ("↑" if clipped_hi else ""),
                  plot_height - 1: self.value_format(unlog(lo)) + ("↓" if clipped_lo else "")}
        if plot_height >= 5:
            labels[(plot_height - 1) // 2] = self.value_format(unlog((hi + lo) / 2))
        gutter = self.GUTTER
        return {row: (text + " ").rjust(gutter) if len(text) < gutter else text[:gutter]
                for row, text in labels.items()}


class MetricTile(SeriesView, DrawnWidget):
    """One metric: name, current value, trend arrow, sparkline and the sparkline's y-range.

    One row: everything on the line, the range as a dim suffix when there is room. Two or more
    rows: the head line (the range right-aligned) over a sparkline as wide as the tile. The
    dashboard gives every tile the same height, so all tiles share one layout at a given size.
    """

    DEFAULT_CSS = """
    MetricTile {
        height: 1;
        padding: 0 1 0 0;
    }
    MetricTile > .tile--spark { color: $accent; }
    MetricTile > .tile--range { color: $text-muted; }
    """
    COMPONENT_CLASSES = {"tile--spark", "tile--range"}
    MIN_SPARK = 6  # columns below which a one-row tile leaves the sparkline (and range) out
    RANGE_WIDTH = 10  # columns a one-row tile keeps for its range label when it has room

    value: drawn[Optional[float]] = drawn(None)
    """Current value (None: not reported yet)."""
    trend: drawn[int] = drawn(0)
    """+1 rising, -1 falling, 0 flat (drawn as ↑ ↓ →)."""
    note: drawn[str] = drawn("")
    """Short extra text after the value, e.g. `best 0.81`."""
    version: drawn[int] = drawn(0)
    """Bumped by `set_series` when the sparkline data changes."""
    x_range: drawn[Optional[tuple[float, float]]] = drawn(None)
    """Steps the sparkline spans (the dashboard: the whole run so far, so points sit at their
    steps and every tile lines up); default: the series' own range."""
    log_scale: drawn[bool] = drawn(False)
    """Logarithmic sparkline (the detail view's `l` on this metric); linear if a value is not > 0."""

    def __init__(self, label: str, key: str, *, value_format: Callable[[Optional[float]], str] = fmt.metric,
                 id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.key = key
        self.value_format = value_format
        # A range in the value's own unit: percentages stay percentages.
        self.range_format = compact_percent if value_format is fmt.percent else compact
        self.series: Optional[Series] = None
        self._signature: tuple = ()

    def draw(self) -> list[Text]:
        width, height = self.size
        head = Text.assemble((f"{self.label:<11}", "bold"), f"{self.value_format(self.value):>7} ",
                             ARROWS[self.trend] if self.value is not None else " ")
        if self.note:
            head.append(f" {self.note}", style="dim")
        head.no_wrap = True
        spark_style = self.component_style("tile--spark")
        range_style = self.component_style("tile--range")
        if height <= 1:
            room = width - head.cell_len - 1
            if room >= self.MIN_SPARK:
                spark, label = self._one_row(room)
                head.append(" ")
                head.append(spark, style=spark_style)
                if label:
                    head.append(" " + label, style=range_style)
            return [head]
        rows, scale = self._sparkline(width, height - 1)
        label = self._range_label(scale)
        if label and head.cell_len + len(label) + 2 <= width:
            head.append(" " * (width - head.cell_len - len(label)))
            head.append(label, style=range_style)
        return [head] + [Text(r, style=spark_style) for r in rows]

    def _one_row(self, room: int) -> tuple[str, str]:
        """(sparkline, range label) sharing `room` columns on the head line: the range gets a
        fixed width when it fits, so the sparklines of all tiles line up (drawn again only in
        the rare case of a longer label); no range when the sparkline would get too narrow."""
        width = room - self.RANGE_WIDTH - 1 if room - self.RANGE_WIDTH - 1 >= self.MIN_SPARK else room
        rows, scale = self._sparkline(width, 1)
        label = self._range_label(scale)
        if width < room and len(label) > room - width - 1:
            width = max(self.MIN_SPARK, room - len(label) - 1)
            rows, scale = self._sparkline(width, 1)
            label = self._range_label(scale)
        if width < room and len(label) > room - width - 1:  # a cut number would read as another value
            rows, _ = self._sparkline(room, 1)
            return rows[0], ""
        return rows[0], (label if width < room else "")

    def _sparkline(self, width: int, rows: int) -> tuple[list[str], Optional[tuple]]:
        """The sparkline rows and the scale they were drawn with: (low, high, clipped low,
        clipped high, log), values in the metric's own units (None: nothing to draw)."""
        if self.series is None or not len(self.series) or width <= 0:
            return [" " * max(width, 0)] * rows, None
        first, last = self.x_range or (self.series.steps[0], self.series.steps[-1])
        columns = self.series.resample(width, first, last, interpolate=False)
        values = [c[0] if c is not None else None for c in columns]
        now = self.value if isinstance(self.value, (int, float)) and math.isfinite(self.value) else None
        use_log = self.log_scale and all(v > 0 for v in [*values, now] if v is not None)
        if use_log:
            values = [math.log10(v) if v is not None else None for v in values]
            now = math.log10(now) if now is not None else None
        known = [v for v in values if v is not None]
        # The scale always holds the number the tile shows (the newest point, not its column's mean).
        lo, hi, clipped = braille.robust_range(values, keep=[v for v in (known[-1:] + [now]) if v is not None])
        unlog = (lambda v: 10 ** v) if use_log else (lambda v: v)
        scale = (unlog(lo), unlog(hi), clipped and min(known) < lo, clipped and max(known) > hi, use_log)
        return braille.spark_rows(values, rows, lo, hi), scale

    def _range_label(self, scale: Optional[tuple]) -> str:
        """`0.52–1.47`: what the sparkline spans; ↑/↓ where points beyond it were clipped."""
        if scale is None:
            return ""
        lo, hi, clipped_lo, clipped_hi, use_log = scale
        text = (("↓" if clipped_lo else "") + self.range_format(lo) + "–" + self.range_format(hi)
                + ("↑" if clipped_hi else ""))
        return text + (" log" if use_log else "")


def compact(value: float) -> str:
    """A number in at most ~7 characters for axis and range labels: 0.523, 14.2, 1234, 0.0015, 5.2e-05."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 1e-2 or magnitude >= 1e5:
        return f"{value:.2g}"  # 0.0015, not 1e-03 beside a tile that reads 0.0015
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def compact_percent(fraction: float) -> str:
    """A fraction as a compact percentage: 0.0687 -> 6.87%."""
    return compact(100 * fraction) + "%"
