"""OverlayChart: the detail chart (`LineChart`) drawing one metric of several runs on the same
axes, one colour per run, each line's end marked with its number, and a legend row."""
from __future__ import annotations

import itertools
from typing import Optional

from rich.style import Style
from rich.text import Text

from tui import braille
from tui.model import Series
from tui.widgets.charts import LineChart, series_signature

#: One colour per run, in order (the legend repeats them with the runs' names and numbers).
PALETTE = ("#5fafff", "#ffaf00", "#87d75f", "#ff5f87", "#af87ff", "#5fd7d7", "#d7d787", "#d7875f")


class OverlayChart(LineChart):
    """One line per run: `set_lines([(name, series), ...])`. The x axis is whatever the series'
    steps are (the compare screen gives steps, or training seconds with `x_format` a duration)."""

    DEFAULT_CSS = """
    OverlayChart {
        height: 1fr;
        min-height: 5;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lines: list[tuple[str, Series]] = []

    def set_lines(self, lines: list[tuple[str, Optional[Series]]]) -> None:
        """Show these runs' series (a run without the series keeps its colour and legend entry:
        None); repaints only when one of them changed."""
        signature = tuple((name, series_signature(series)) for name, series in lines)
        if signature != self._signature:
            self.lines, self._signature = list(lines), signature
            self.series = next((s for _, s in lines if s is not None and len(s)), None)
            self.version += 1

    def data_bounds(self) -> Optional[tuple[float, float]]:
        ends = [(s.steps[0], s.steps[-1]) for _, s in self.lines if s is not None and len(s)]
        if not ends:
            return None
        return min(e[0] for e in ends), max(e[1] for e in ends)

    def line_style(self, index: int) -> Style:
        return Style(color=PALETTE[index % len(PALETTE)])

    def legend(self, width: int) -> Text:
        """`━1 run-a  ━2 run-b` in the runs' colours; a run without the series says so."""
        legend = Text(" " * self.GUTTER)
        for i, (name, series) in enumerate(self.lines):
            missing = "" if series is not None and len(series) else " (none)"
            legend.append(f"━{str(i + 1)[-1]} {name}{missing}", self.line_style(i))
            legend.append("  ")
        legend.truncate(width)
        return legend

    def draw(self) -> list[Text]:
        width, height = self.size
        bounds = self._x_bounds()
        if self.series is None or bounds is None or width < 12 or height < 3:
            return [Text(self.title + ("  " if self.title else "") + "no data", style="dim")]
        plot_width = width - self.GUTTER
        title_row = bool(self.title) and height >= 5
        plot_height = max(1, height - 2 - title_row)
        first, last = bounds
        columns = [s.resample(plot_width * 2, first, last) if s is not None else [None] * (plot_width * 2)
                   for _, s in self.lines]
        lo, hi, clipped_lo, clipped_hi = braille.value_range([c for line in columns for c in line], False)
        cells = braille.plot_lines(columns, plot_height, lo, hi)
        axis_style = self.component_style("chart--axis")
        styles = {f"line{i}": self.line_style(i) for i in range(len(self.lines))}
        lines = [Text.assemble(" " * self.GUTTER, (self.title, "bold"))] if title_row else []
        y_labels = self._y_labels(plot_height, lo, hi, False, clipped_lo, clipped_hi)
        for r, row in enumerate(cells):
            line = Text(y_labels.get(r, " " * self.GUTTER), style=axis_style)
            for kind, run in itertools.groupby(row, key=lambda cell: cell[1]):
                line.append("".join(ch for ch, _ in run), styles.get(kind))
            lines.append(line)
        lines.append(Text(" " * self.GUTTER + braille.axis_labels(first, last, plot_width, self.x_format),
                          style=axis_style))
        lines.append(self.legend(width))
        return lines
