"""The ranks of a data-parallel run (issue 17): the world size, then one row per rank with its
host, step time, data share and exposed allreduce share, the slowest rank marked.

What it answers is "which box holds the others back?": every rank waits for the slowest at each
gradient allreduce, so one slow host (a busy box, a slow disk: a high data share) sets the pace
of the whole group. Rank 0 sends the `world` body in every `progress` frame of a run with world
size > 1 (docs/PROTOCOL.md); a single process sends none and the panel is hidden.

A world bigger than the panel's rows shows its slowest ranks, slowest first, and counts the
others (`… 56 more`): 64 ranks keep the dashboard's layout. The panel is a `DrawnWidget`, so a
progress frame repaints it only when a drawn line changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from rich.style import Style
from rich.text import Text

from tui import fmt
from tui.widgets.drawn import DrawnWidget, drawn

RANK_ROWS_SHORT = 4
"""Lines the panel may use on a short terminal (the planned LR chart's height, whose place it takes)."""
RANK_ROWS_TALL = 10
"""Lines on a tall terminal: the title, the 8 slowest ranks and `… N more`."""
WIDE_WIDTH = 48
"""Content columns from which the columns are roomier and the marker says `◀ slowest`."""


@dataclass(frozen=True)
class RankRow:
    """One rank as the panel shows it."""

    rank: int
    host: str
    step_seconds: Optional[float]
    data_share: Optional[float]
    allreduce_share: Optional[float]
    slowest: bool = False


def _number(value: object) -> Optional[float]:
    """`value` if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def world_rows(world: Optional[dict]) -> list[RankRow]:
    """Every rank of a `world` body in rank order, the slowest (largest step time; the lowest
    rank of a tie) marked. Entries that are not maps are left out."""
    ranks = [r for r in (world or {}).get("ranks") or () if isinstance(r, dict)]
    rows = sorted((RankRow(int(r.get("rank") or 0), str(r.get("host") or fmt.MISSING), _number(r.get("step_seconds")),
                           _number(r.get("data_share")), _number(r.get("allreduce_share"))) for r in ranks),
                  key=lambda row: row.rank)
    timed = [row for row in rows if row.step_seconds is not None]
    if timed:
        slowest = max(timed, key=lambda row: (row.step_seconds, -row.rank))
        rows = [replace(row, slowest=True) if row is slowest else row for row in rows]
    return rows


def shown_rows(rows: list[RankRow], room: int) -> tuple[list[RankRow], int]:
    """The rows that fit in `room` lines and how many ranks are left out. All of them in rank
    order when they fit; else the `room - 1` slowest, slowest first (the last line says how many
    more there are)."""
    if len(rows) <= room:
        return rows, 0
    keep = max(1, room - 1)
    slow_first = sorted(rows, key=lambda row: (-(row.step_seconds if row.step_seconds is not None else -math.inf),
                                                row.rank))
    return slow_first[:keep], len(rows) - keep


def world_size(world: Optional[dict], rows: list[RankRow]) -> int:
    size = (world or {}).get("world_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else len(rows)


@dataclass(frozen=True)
class Columns:
    """Widths of the panel's columns at one content width."""

    rank: int
    host: int
    step: int
    share: int
    allreduce: int
    marker: str
    allreduce_label: str

    @classmethod
    def fit(cls, width: int, rows: list[RankRow], title: str) -> "Columns":
        """The host column as wide as the longest host (and the title), within what `width`
        leaves; the numbers stay next to the names on a wide panel."""
        rank = max([1] + [len(str(row.rank)) for row in rows])
        wide = width >= WIDE_WIDTH
        step, share, allreduce = (8, 8, 11) if wide else (6, 7, 8)
        marker = " ◀ slowest" if wide else " ◀"
        room = width - rank - 1 - step - share - allreduce - len(marker)
        wanted = max([len(title) - rank - 1] + [len(row.host) for row in rows])
        return cls(rank, max(4, min(room, wanted)), step, share, allreduce, marker, "allreduce" if wide else "allred")

    @property
    def left(self) -> int:
        return self.rank + 1 + self.host


def heading(title: str, cols: Columns) -> str:
    """The title, then the column labels right-aligned over their columns (the title may use the
    blanks before the first label, keeping one)."""
    labels = f"{'step':>{cols.step}}{'data':>{cols.share}}{cols.allreduce_label:>{cols.allreduce}}"
    blanks = len(labels) - len(labels.lstrip())
    gap = max(1, cols.left + blanks - len(title))
    return f"{title}{' ' * gap}{labels.lstrip()}"


def row_text(row: RankRow, cols: Columns) -> str:
    """`1 boxb     530ms  21.0%   2.0% ◀`; `–` for what is not measured (the allreduce share of a
    run that does not time it)."""
    text = (f"{row.rank:>{cols.rank}} {fmt.clip(row.host, cols.host):<{cols.host}}"
            f"{fmt.step_time(row.step_seconds):>{cols.step}}{fmt.percent(row.data_share):>{cols.share}}"
            f"{fmt.percent(row.allreduce_share):>{cols.allreduce}}")
    return text + cols.marker if row.slowest else text


def ranks_lines(world: Optional[dict], max_rows: int, width: int, *, title_style: Style | str = "",
                slowest_style: Style | str = "", more_style: Style | str = "") -> list[Text]:
    """The panel's lines for `world` in at most `max_rows` lines of `width` columns (none without
    a world)."""
    rows = world_rows(world)
    if not rows:
        return []
    shown, more = shown_rows(rows, max(1, max_rows - 1))
    title = f"ranks · world {world_size(world, rows)}"
    cols = Columns.fit(width, shown, title)
    lines = [Text(heading(title, cols), style=title_style)]
    lines += [Text(row_text(row, cols), style=slowest_style if row.slowest else "") for row in shown]
    if more:
        lines.append(Text(f"… {more} more", style=more_style))
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return lines


def lines_needed(world: Optional[dict], max_rows: int) -> int:
    """How many lines `ranks_lines` draws (without drawing them)."""
    ranks = [r for r in (world or {}).get("ranks") or () if isinstance(r, dict)]
    if not ranks:
        return 0
    room = max(1, max_rows - 1)
    return 1 + (len(ranks) if len(ranks) <= room else room)


class RanksPanel(DrawnWidget):
    """The ranks of a data-parallel run; hidden while the progress has no `world`."""

    DEFAULT_CSS = """
    RanksPanel {
        height: 1;
        padding: 0 1;
        display: none;
    }
    RanksPanel > .ranks--title { text-style: bold; }
    RanksPanel > .ranks--slowest { color: $warning; text-style: bold; }
    RanksPanel > .ranks--more { color: $text-muted; }
    """
    COMPONENT_CLASSES = {"ranks--title", "ranks--slowest", "ranks--more"}

    world: drawn[Optional[dict]] = drawn(None)
    """The newest progress frame's `world` body (None: a single process, or no progress yet)."""
    max_rows: drawn[int] = drawn(RANK_ROWS_SHORT)
    """Lines the panel may use, its title included."""

    def watch_world(self) -> None:
        self._fit()

    def watch_max_rows(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Shown only with a world, as tall as its lines; the styles are touched only when they
        change (a layout pass costs far more than a repaint)."""
        rows = lines_needed(self.world, self.max_rows)
        if self.display != bool(rows):
            self.display = bool(rows)
        if rows and (self.styles.height is None or self.styles.height.cells != rows):
            self.styles.height = rows

    def draw(self) -> list[Text]:
        lines = ranks_lines(self.world, self.max_rows, max(20, self.size.width or 38),
                            title_style=self.component_style("ranks--title"),
                            slowest_style=self.component_style("ranks--slowest"),
                            more_style=self.component_style("ranks--more"))
        return lines or [Text("")]
