"""Character-cell charts drawn as text: braille line plots (`plot`) and block sparklines (`spark`).

The drawing under the chart widgets of `tui.widgets.charts`: pure functions (no Textual), so
they are easy to test and cheap to call. A plot has braille dots for the line, a shaded envelope
and a marker column. A chart cell is a (character, kind) pair; kinds are "line", "envelope",
"marker" "overlay" (a second series' points) and "" (empty), and the widgets map them to styles. The line (braille), the envelope (░) and the marker (│) use different glyphs,
so the chart reads without colour.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

BRAILLE_BASE = 0x2800
# Dot bit for (dot column 0..1, dot row 0..3) inside one braille cell.
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
ENVELOPE_CHAR = "░"
MARKER_CHAR = "│"
SPARK_CHARS = "▁▂▃▄▅▆▇█"

Cell = tuple[str, str]
Column = Optional[tuple[float, float, float]]  # (value, low, high) or None for "no data"


def value_range(columns: Sequence[Column], envelope: bool,
                extra: Sequence[Column] = ()) -> tuple[float, float, bool, bool]:
    """(low, high, clipped low, clipped high) of the data to draw: the `robust_range` of the
    columns' values (and their min/max with the `envelope`) and of an `extra` series drawn on the
    same axes, padded so a flat line sits mid-chart. The newest value of each stays in range."""
    known = [c for c in columns if c is not None]
    others = [c for c in extra if c is not None]
    if not known and not others:
        return 0.0, 1.0, False, False
    values = [c[0] for c in known + others]
    if envelope:
        values += [c[1] for c in known] + [c[2] for c in known]
    newest = [c[0] for c in (known[-1:] + others[-1:])]
    lo, hi, clipped = robust_range(values, keep=newest)
    clipped_lo, clipped_hi = clipped and min(values) < lo, clipped and max(values) > hi
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = abs(hi) * 0.05 or 0.5
        return lo - pad, hi + pad, clipped_lo, clipped_hi
    return lo, hi, clipped_lo, clipped_hi


def plot(columns: Sequence[Column], height: int, y_lo: float, y_hi: float,
                 marker_column: Optional[int] = None, envelope: bool = False) -> list[list[Cell]]:
    """Rows (top first) of `len(columns) // 2` cells drawing one value per dot column.

    Consecutive dot columns are joined vertically, so steep changes stay a connected line.
    `marker_column` is a cell column drawn as a vertical marker where the line leaves room.
    """
    width = len(columns) // 2
    dot_rows = height * 4
    span = (y_hi - y_lo) or 1.0

    def dot_row(value: float) -> int:
        # 0 is the top dot row.
        frac = (value - y_lo) / span
        return min(dot_rows - 1, max(0, int(round((1.0 - frac) * (dot_rows - 1)))))

    bits = [[0] * width for _ in range(height)]
    shade = [[False] * width for _ in range(height)]
    previous: Optional[int] = None
    for x, column in enumerate(columns[: width * 2]):
        if column is None:
            previous = None
            continue
        value, low, high = column
        row = dot_row(value)
        top, bottom = (row, row) if previous is None else (min(row, previous), max(row, previous))
        for r in range(top, bottom + 1):
            bits[r // 4][x // 2] |= _DOT_BITS[x % 2][r % 4]
        previous = row
        if envelope:
            for cell_row in range(dot_row(high) // 4, dot_row(low) // 4 + 1):
                shade[cell_row][x // 2] = True

    rows: list[list[Cell]] = []
    for r in range(height):
        row: list[Cell] = []
        for c in range(width):
            if bits[r][c]:
                row.append((chr(BRAILLE_BASE + bits[r][c]), "line"))
            elif c == marker_column:
                row.append((MARKER_CHAR, "marker"))
            elif shade[r][c]:
                row.append((ENVELOPE_CHAR, "envelope"))
            else:
                row.append((" ", ""))
        rows.append(row)
    return rows


OVERLAY_CHAR = "×"


def overlay(rows: list[list[Cell]], columns: Sequence[Column], y_lo: float, y_hi: float) -> None:
    """Mark the points of a second series on plotted `rows` with ×, one per cell column that has
    a value (the braille line is the first series: the two read apart without colour)."""
    height = len(rows)
    span = (y_hi - y_lo) or 1.0
    for x, column in enumerate(columns[: len(rows[0]) * 2] if rows else ()):
        if column is None:
            continue
        frac = (column[0] - y_lo) / span
        row = min(height * 4 - 1, max(0, int(round((1.0 - frac) * (height * 4 - 1))))) // 4
        rows[row][x // 2] = (OVERLAY_CHAR, "overlay")


def plot_lines(lines: Sequence[Sequence[Column]], height: int, y_lo: float, y_hi: float) -> list[list[Cell]]:
    """Rows of cells drawing several series on the same axes (`plot` of each), the cells of
    series i of kind `line{i}`. A cell two lines pass through keeps the dots of both and takes
    the kind of the later one; the end of each line is marked with its number (1, 2, ...), so the
    lines read apart without colour."""
    rows: list[list[Cell]] = []
    for i, columns in enumerate(lines):
        drawn = plot(columns, height, y_lo, y_hi)
        if not rows:
            rows = [[(" ", "")] * len(row) for row in drawn]
        for r, row in enumerate(drawn):
            for c, (char, kind) in enumerate(row):
                if kind == "line":
                    below = rows[r][c]
                    dots = ord(char) - BRAILLE_BASE | (ord(below[0]) - BRAILLE_BASE if below[1].startswith("line") else 0)
                    rows[r][c] = (chr(BRAILLE_BASE + dots), f"line{i}")
    for i, columns in enumerate(lines):
        _mark_end(rows, columns, y_lo, y_hi, str(i + 1)[-1], f"line{i}")
    return rows


def _mark_end(rows: list[list[Cell]], columns: Sequence[Column], y_lo: float, y_hi: float, label: str,
              kind: str) -> None:
    """Write `label` in the cell of the last point of a series (nothing when it has none)."""
    known = [x for x, column in enumerate(columns[: len(rows[0]) * 2] if rows else ()) if column is not None]
    if not known:
        return
    x = known[-1]
    height, span = len(rows), (y_hi - y_lo) or 1.0
    frac = (columns[x][0] - y_lo) / span
    row = min(height * 4 - 1, max(0, int(round((1.0 - frac) * (height * 4 - 1))))) // 4
    rows[row][x // 2] = (label, kind)


def spark(values: Sequence[Optional[float]], lo: Optional[float] = None, hi: Optional[float] = None) -> str:
    """One-line sparkline of `values` with block characters (lowest ▁, highest █; None: a blank
    column, so a few points stay a few marks). Values outside lo..hi are drawn at the edge."""
    return spark_rows(values, 1, lo, hi)[0] if values else ""


def spark_rows(values: Sequence[Optional[float]], rows: int, lo: Optional[float] = None,
               hi: Optional[float] = None) -> list[str]:
    """A sparkline `rows` tall, top row first: each column's level split over the rows (the
    bottom row fills first). None columns stay blank; a flat series sits at mid height."""
    known = [v for v in values if v is not None]
    if not known:
        return [" " * len(values) for _ in range(rows)]
    lo = min(known) if lo is None else lo
    hi = max(known) if hi is None else hi
    steps = rows * len(SPARK_CHARS)
    span = hi - lo
    levels = [0 if v is None else (steps // 2 if span <= 0 else
                                   min(steps, max(1, int((v - lo) / span * (steps - 1) + 0.5) + 1)))
              for v in values]
    out = []
    for r in range(rows - 1, -1, -1):
        chars = []
        for level in levels:
            in_row = level - r * len(SPARK_CHARS)
            chars.append(" " if in_row <= 0 else "█" if in_row >= len(SPARK_CHARS) else SPARK_CHARS[in_row - 1])
        out.append("".join(chars))
    return out


CLIP_SPREAD = 3.0
"""How far (in spreads of the central 90% of the values) a value may lie beyond that central
range before `robust_range` clips it."""
CLIP_MIN_POINTS = 5
"""Fewer values than this are never clipped: each of them is too much of the picture."""


def robust_range(values: Sequence[Optional[float]], keep: Optional[Sequence[float]] = None) -> tuple[float, float, bool]:
    """(low, high, clipped) to scale a chart of `values` (None: no data) so that one far outlier
    (a huge first validation loss) does not flatten everything else.

    Values further than CLIP_SPREAD times the spread of the central 90% beyond that central
    range are left out of the range (the plot draws them at its edge) and `clipped` says so.
    The values in `keep` (default: the newest, last known value) are always inside the range.
    """
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return 0.0, 1.0, False
    lo, hi = min(known), max(known)
    if len(known) >= CLIP_MIN_POINTS:
        ordered = sorted(known)
        last = len(ordered) - 1
        # Nearest ranks inward, so with five points q_lo/q_hi are the second smallest/largest.
        q_lo, q_hi = ordered[math.ceil(0.05 * last)], ordered[math.floor(0.95 * last)]
        reach = CLIP_SPREAD * (q_hi - q_lo)
        lo, hi = max(lo, q_lo - reach), min(hi, q_hi + reach)
    kept = known[-1:] if keep is None else [v for v in keep if math.isfinite(v)]
    lo, hi = min([lo] + kept), max([hi] + kept)
    return lo, hi, lo > min(known) or hi < max(known)


def log_transform(columns: Sequence[Column]) -> Optional[list[Column]]:
    """Columns in log10, or None when a value is not positive (log scale impossible)."""
    out: list[Column] = []
    for column in columns:
        if column is None:
            out.append(None)
            continue
        value, low, high = column
        if min(value, low, high) <= 0:
            return None
        out.append((math.log10(value), math.log10(low), math.log10(high)))
    return out


def axis_labels(first: float, last: float, width: int, fmt) -> str:
    """A row of `width` characters with `fmt(x)` labels at the left, middle and right."""
    row = [" "] * width
    if width < 4:
        return "".join(row)
    for frac, align in ((0.0, "left"), (1.0, "right"), (0.5, "center")):  # ends win over the middle
        text = fmt(first + (last - first) * frac)
        if align == "left":
            start = 0
        elif align == "center":
            start = width // 2 - len(text) // 2
        else:
            start = width - len(text)
        if start < 0 or start + len(text) > width:
            continue
        if any(ch != " " for ch in row[max(0, start - 1): start + len(text) + 1]):
            continue  # would touch a neighbouring label
        row[start: start + len(text)] = list(text)
    return "".join(row)
