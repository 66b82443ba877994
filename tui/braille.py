"""Character-cell charts drawn as text: braille line plots (`plot`) and block sparklines (`spark`).

The drawing under the chart widgets of `tui.widgets.charts`: pure functions (no Textual), so
they are easy to test and cheap to call. A plot has braille dots for the line, a shaded envelope
and a marker column. A chart cell is a (character, kind) pair; kinds are "line", "envelope",
"marker" and "" (empty), and the widgets map them to styles. The line (braille), the envelope (░) and the marker (│) use different glyphs,
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


def value_range(columns: Sequence[Column], envelope: bool) -> tuple[float, float]:
    """(low, high) of the data to draw, padded so a flat line sits mid-chart."""
    values = [c for c in columns if c is not None]
    if not values:
        return 0.0, 1.0
    lo = min(c[1] if envelope else c[0] for c in values)
    hi = max(c[2] if envelope else c[0] for c in values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = abs(hi) * 0.05 or 0.5
        return lo - pad, hi + pad
    return lo, hi


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


def spark(values: Sequence[float], lo: Optional[float] = None, hi: Optional[float] = None) -> str:
    """One-line sparkline of `values` with block characters (lowest ▁, highest █)."""
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    if span <= 0:
        return SPARK_CHARS[3] * len(values)
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[min(top, max(0, int((v - lo) / span * top + 0.5)))] for v in values)


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
