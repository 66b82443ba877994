"""Events and log lines: the lines themselves, the filter of the events view, scrollable lists
for that view and cheap tails for the dashboard.

A trainer log line spends 46 columns on `2026-11-27 08:45:32,989 INFO trainer.engine:`; it is
shown as `08:45:32 engine: ...` (the level only when it is not INFO). Search reads the raw line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from rich.text import Text
from textual.events import Resize
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import RichLog

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

WRAPPED_LINES = 3
"""Lines of a list per entry it mirrors: wrapped entries take a few."""
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


class FeedLog(RichLog):
    """A RichLog that mirrors one of the model's bounded lists through a `FeedFilter`.

    With nothing new it does nothing; new entries are appended; a new model, filter, wrap mode
    or (wrapping) width rewrites the matching entries once. Lines are laid out at the width
    actually visible: padding and a vertical scrollbar that is always reserved (a scrollbar that
    appeared after a line was wrapped used to hide that line's last characters).
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
    }
    """

    def __init__(self, clock: fmt.Clock, *, id: str | None = None, classes: str | None = None,
                 max_lines: int = 500, wrap: bool = False) -> None:
        # bounded like the model's lists, with room for entries wrapped over a few lines
        super().__init__(id=id, classes=classes, max_lines=max_lines * WRAPPED_LINES, wrap=wrap, markup=False,
                         highlight=False)
        self.clock = clock
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

    def sync(self, model: RunModel, feed_filter: FeedFilter = FeedFilter()) -> int:
        """Bring the widget up to date with `model` (cheap when nothing changed); the number of
        new entries shown."""
        self._source = (model, feed_filter)
        if not self._size_known:
            return 0  # laid out once the width is known (on_resize)
        items, total = self._items(model)
        key = (id(model), model.generation, feed_filter, self.wrap, self.line_width if self.wrap else 0)
        shown = 0
        if key != self._key:
            self._key = key
            self.clear()
            self._write_all(items, feed_filter)
        elif total > self._written:
            new = list(items)[-min(len(items), total - self._written):]
            shown = self._write_all(new, feed_filter)
        self._written = total
        return shown

    def on_resize(self, event: Resize) -> None:
        self.call_later(self._resync)  # after RichLog's own handler has noted the size

    def _resync(self) -> None:
        if self._source is not None:
            self.sync(*self._source)  # the first layout, or wrapped again at the new width

    def _write_all(self, items: Iterable[dict], feed_filter: FeedFilter) -> int:
        shown = 0
        width = self.line_width
        first = self._start_line
        for item in items:
            if feed_filter.active and not self._shows(feed_filter, item):
                continue
            line = self._line(item)
            self.write(line, width=width if self.wrap else max(width, line.cell_len))
            shown += 1
        if not self.auto_scroll and self._start_line > first:
            # paused: the oldest lines dropped out above; keep the lines in view where they are
            self.scroll_to(y=max(0, self.scroll_y - (self._start_line - first)), animate=False, immediate=True)
        return shown


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
