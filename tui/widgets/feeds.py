"""Events and log lines: the lines themselves, the filter of the events view, scrollable lists
for that view and cheap tails for the dashboard.

A trainer log line spends 46 columns on `2026-11-27 08:45:32,989 INFO trainer.engine:`; it is
shown as `08:45:32 engine: ...` (the level only when it is not INFO). Search reads the raw line.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from rich.cells import get_character_cell_size
from rich.text import Text
from textual.events import Resize
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from tui import fmt
from tui.model import RunModel

LEVEL_TAGS = {"info": ("info ", ""), "warning": ("WARN ", "bold yellow"), "error": ("ERROR", "bold red")}
SEVERITY = {"info": 0, "warning": 1, "error": 2}

LOG_PREFIX = re.compile(r"\d{4}-\d\d-\d\d[ T](\d\d:\d\d:\d\d)(?:[.,]\d+)? "
                        r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([^\s:]+): ?(.*)", re.S)
"""The trainer's and the daemon's logging format: `%(asctime)s %(levelname)s %(name)s: %(message)s`."""
LOG_LEVELS = {"DEBUG": "info", "INFO": "info", "WARNING": "warning", "ERROR": "error", "CRITICAL": "error"}
LOG_TAGS = {"DEBUG": ("DEBUG", "dim"), "WARNING": ("WARN", "bold yellow"), "ERROR": ("ERROR", "bold red"),
            "CRITICAL": ("CRIT", "bold red")}

ROUTINE_KINDS = frozenset({"checkpoint", "eval", "request", "lr", "setup", "preparing", "report"})
"""Info events a power user hides with `k` (warnings and errors of these kinds still show)."""


def event_line(event: dict, clock: fmt.Clock) -> Text:
    """`14:05:09 WARN  checkpoint  message` (the level is a word, not just a colour)."""
    tag, style = LEVEL_TAGS.get(event.get("level", "info"), LEVEL_TAGS["info"])
    return Text.assemble((clock.at(event.get("time")), "dim"), " ", (tag, style), " ",
                         (f"{event.get('kind', '?'):<14}", "bold"), " ", str(event.get("message", "")))


def parse_log_line(line: str) -> Optional[tuple[str, str, str, str]]:
    """(time of day, level name, short logger name, message) of a logging line, else None."""
    match = LOG_PREFIX.fullmatch(line)
    if match is None:
        return None
    clock, level, logger, message = match.groups()
    return clock, level, logger.rsplit(".", 1)[-1], message


def log_level(log: dict) -> str:
    """`info`, `warning` or `error` of a log line: its logging level, else stderr counts as a warning."""
    parsed = parse_log_line(str(log.get("line", "")))
    if parsed is not None:
        return LOG_LEVELS[parsed[1]]
    return "warning" if log.get("stream") == "stderr" else "info"


def log_line(log: dict) -> Text:
    """A trainer output line with a compact prefix; stderr lines are marked with `!`."""
    raw = str(log.get("line", ""))
    text = Text.assemble(("! ", "bold red")) if log.get("stream") == "stderr" else Text("  ")
    parsed = parse_log_line(raw)
    if parsed is None:
        text.append(raw)
        return text
    clock, level, logger, message = parsed
    text.append(clock, style="dim")
    text.append(" ")
    if level in LOG_TAGS:
        tag, style = LOG_TAGS[level]
        text.append(tag, style=style)
        text.append(" ")
    text.append(f"{logger}:", style="dim")
    text.append(" " + message)
    return text


def row_starts(text: Text, width: int) -> list[int]:
    """Where each wrapped row of `text` starts (character offsets): rows of at most `width`
    cells, a double-width character (CJK class names, emoji) never split or pushed past the edge."""
    plain = text.plain
    if text.cell_len == len(plain):  # one cell per character: the common case, no per-character walk
        return list(range(0, max(len(plain), 1), max(1, width)))
    starts, used = [0], 0
    for i, char in enumerate(plain):
        cells = get_character_cell_size(char)
        if used + cells > width and used:
            starts.append(i)
            used = 0
        used += cells
    return starts


@dataclass(frozen=True)
class FeedFilter:
    """What the events view shows: a case-insensitive search, a least level, routine kinds."""

    search: str = ""
    min_level: int = 0
    hide_routine: bool = False

    @property
    def active(self) -> bool:
        return bool(self.search) or self.min_level > 0 or self.hide_routine

    def shows_event(self, event: dict) -> bool:
        level = event.get("level", "info")
        if SEVERITY.get(level, 0) < self.min_level:
            return False
        if self.hide_routine and level == "info" and event.get("kind") in ROUTINE_KINDS:
            return False
        return not self.search or self.search.lower() in f"{event.get('kind', '')} {event.get('message', '')}".lower()

    def shows_log(self, log: dict) -> bool:
        if self.min_level and SEVERITY[log_level(log)] < self.min_level:
            return False
        return not self.search or self.search.lower() in str(log.get("line", "")).lower()


class FeedLog(ScrollView, can_focus=False):
    """A scrolling list that mirrors one of the model's bounded lists through a `FeedFilter`.

    Cheap with a trainer printing hundreds of lines a second: an entry is formatted once when
    it arrives, and only the rows in view are drawn (`render_line`), so a refresh costs the
    same whatever arrived. A new model, filter or wrap mode formats the matching entries again
    once; a new width only recounts rows. Wrapped entries are cut at the width actually
    visible (inside the padding, beside a scrollbar that is always reserved: a scrollbar that
    appeared after a line was wrapped used to hide its last characters), by cells like a
    terminal, so an entry's row count is known without laying it out.
    """

    DEFAULT_CSS = """
    FeedLog {
        height: 1fr;
        border: none;
        padding: 0 1;
        scrollbar-size-vertical: 1;
        scrollbar-size-horizontal: 1;
        scrollbar-gutter: stable;
        overflow-x: auto;
        overflow-y: scroll;
    }
    """

    def __init__(self, clock: fmt.Clock, *, id: str | None = None, classes: str | None = None,
                 max_lines: int = 500, wrap: bool = False) -> None:
        super().__init__(id=id, classes=classes)
        self.clock = clock
        self.max_entries = max_lines
        self.wrap = wrap
        self.auto_scroll = True
        """Follow the newest entry (False: the view stays where it is while entries arrive)."""
        self._texts: list[Text] = []
        self._ends: list[int] = []  # each entry's last row + 1, counted from the first row ever kept
        self._base = 0  # rows dropped at the top so far
        self._widest = 0
        self._width = 1  # the width the rows were counted at
        self._cache: dict[tuple, Strip] = {}
        self._key: tuple = ()
        self._written = 0
        self._source: Optional[tuple[RunModel, FeedFilter]] = None

    def _items(self, model: RunModel) -> tuple[Any, int]:
        raise NotImplementedError

    def _line(self, item: dict) -> Text:
        raise NotImplementedError

    def _shows(self, feed_filter: FeedFilter, item: dict) -> bool:
        raise NotImplementedError

    @property
    def line_width(self) -> int:
        """Columns a line may use: inside the padding, beside the (reserved) scrollbar."""
        return max(1, self.scrollable_content_region.width)

    @property
    def rows(self) -> int:
        return self._ends[-1] - self._base if self._ends else 0

    def sync(self, model: RunModel, feed_filter: FeedFilter = FeedFilter()) -> int:
        """Bring the widget up to date with `model` (nothing to do when nothing changed); the
        number of new entries shown."""
        self._source = (model, feed_filter)
        items, total = self._items(model)
        key = (id(model), model.generation, feed_filter, self.wrap)
        if key != self._key:
            self._key = key
            self.clear()
            self._add(items, feed_filter)
            shown = 0
        elif total > self._written:
            shown = self._add(list(items)[-min(len(items), total - self._written):], feed_filter)
        else:
            shown = 0
        self._written = total
        return shown

    def clear(self) -> None:
        self._texts, self._ends, self._base, self._widest = [], [], 0, 0
        self._cache.clear()
        self._width = self.line_width
        self._resized()

    def _add(self, items: Iterable[dict], feed_filter: FeedFilter) -> int:
        shown = 0
        for item in items:
            if feed_filter.active and not self._shows(feed_filter, item):
                continue
            text = one_line(self._line(item))
            if feed_filter.search:
                text.highlight_words([feed_filter.search], "reverse", case_sensitive=False)
            self._texts.append(text)
            self._ends.append((self._ends[-1] if self._ends else self._base) + self._rows_of(text))
            self._widest = max(self._widest, text.cell_len)
            shown += 1
        if not shown:
            return 0
        dropped = 0
        if len(self._texts) > self.max_entries:
            cut = len(self._texts) - self.max_entries
            dropped = self._ends[cut - 1] - self._base
            self._base = self._ends[cut - 1]
            del self._texts[:cut], self._ends[:cut]
        self._resized()
        if self.auto_scroll:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        elif dropped:  # paused: the oldest rows went away above; the rows in view stay in view
            self.scroll_to(y=max(0, self.scroll_y - dropped), animate=False, immediate=True)
        return shown

    def _rows_of(self, text: Text) -> int:
        return len(row_starts(text, self._width)) if self.wrap else 1

    def _resized(self) -> None:
        self.virtual_size = Size(self._width if self.wrap else self._widest, self.rows)
        self.refresh()

    def on_resize(self, event: Resize) -> None:
        if self.wrap and self.line_width != self._width:
            self._width = self.line_width  # count the rows again: a few additions per entry
            self._cache.clear()
            end = self._base
            for i, text in enumerate(self._texts):
                end += self._rows_of(text)
                self._ends[i] = end
            self._resized()
            if self.auto_scroll:
                self.scroll_end(animate=False, immediate=False, x_axis=False)
        elif self._source is not None and not self._key:
            self.sync(*self._source)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        return self._row(scroll_y + y, scroll_x, self.scrollable_content_region.width).apply_style(self.rich_style)

    def _row(self, row: int, scroll_x: int, width: int) -> Strip:
        if not 0 <= row < self.rows:
            return Strip.blank(width)
        key = (self._base + row, 0 if self.wrap else scroll_x, width)
        strip = self._cache.get(key)
        if strip is None:
            index = bisect_right(self._ends, self._base + row)
            text = self._texts[index]
            if self.wrap:
                first = (self._ends[index - 1] if index else self._base) - self._base
                starts = row_starts(text, self._width)
                k = row - first
                text, scroll_x = text[starts[k]:starts[k + 1] if k + 1 < len(starts) else None], 0
            strip = Strip(list(text.render(self.app.console))).crop_extend(scroll_x, scroll_x + width, None)
            if len(self._cache) > 4 * max(1, self.size.height):
                self._cache.clear()  # rows that scrolled away
            self._cache[key] = strip
        return strip

    @property
    def lines(self) -> list[Strip]:
        """Every row as drawn (for tests and screenshots: it draws them all)."""
        return [self._row(row, 0, self._width if self.wrap else max(1, self._widest)) for row in range(self.rows)]

    @property
    def dropped_rows(self) -> int:
        """Rows dropped at the top so far (the list keeps `max_lines` entries)."""
        return self._base


def one_line(text: Text) -> Text:
    """`text` on one line: an entry with line breaks (a traceback in a message) shows them as ⏎."""
    if "\n" not in text.plain:
        return text
    return Text(" ⏎ ", style="dim").join(text.split("\n", allow_blank=True))


class EventList(FeedLog):
    """Events: checkpoints, evals, phase changes, early stopping, crashes, restarts, warnings."""

    def _items(self, model: RunModel) -> tuple[Any, int]:
        return model.events, model.events_total

    def _line(self, item: dict) -> Text:
        return event_line(item, self.clock)

    def _shows(self, feed_filter: FeedFilter, item: dict) -> bool:
        return feed_filter.shows_event(item)


class LogTail(FeedLog):
    """The tail of the trainer's stdout/stderr."""

    def _items(self, model: RunModel) -> tuple[Any, int]:
        return model.logs, model.logs_total

    def _line(self, item: dict) -> Text:
        return log_line(item)

    def _shows(self, feed_filter: FeedFilter, item: dict) -> bool:
        return feed_filter.shows_log(item)


class FeedTail(Widget):
    """The newest events or log lines that fit, newest at the bottom (the dashboard panels).

    Unlike the RichLog lists it keeps nothing and renders only its visible lines, so a trainer
    that prints hundreds of lines a second costs one small repaint per refresh.
    """

    DEFAULT_CSS = """
    FeedTail {
        height: 1fr;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    KEEP = 200  # more than any panel is tall, so a resize never shows a half-empty panel

    version: reactive[tuple] = reactive(())
    """(model identity, generation, items appended): changes whenever there is something new."""

    def __init__(self, kind: str, clock: fmt.Clock, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        if kind not in ("events", "logs"):
            raise ValueError(f"FeedTail kind must be 'events' or 'logs', got {kind!r}")
        self.kind = kind
        self.clock = clock
        self._items: list[dict] = []

    def sync(self, model: RunModel) -> None:
        """Take the newest items of `model` (repaints only if there are new ones)."""
        feed, total = (model.events, model.events_total) if self.kind == "events" else (model.logs, model.logs_total)
        version = (id(model), model.generation, total)
        if version != self.version:
            self._items = list(feed)[-self.KEEP:]
            self.version = version

    def render(self) -> Text:
        if not self._items:
            return Text("no events yet" if self.kind == "events" else "no log lines yet", style="dim")
        rows = self.size.height or len(self._items)
        line = (lambda item: event_line(item, self.clock)) if self.kind == "events" else log_line
        return Text("\n").join(line(item) for item in self._items[-rows:])
