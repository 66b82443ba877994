"""Events and log lines: scrollable lists for the events view, cheap tails for the dashboard."""
from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import RichLog

from tui import fmt
from tui.model import RunModel

LEVEL_TAGS = {"info": ("info ", ""), "warning": ("WARN ", "bold yellow"), "error": ("ERROR", "bold red")}


def event_line(event: dict, clock: fmt.Clock) -> Text:
    """`14:05:09 WARN  checkpoint  message` (the level is a word, not just a colour)."""
    tag, style = LEVEL_TAGS.get(event.get("level", "info"), LEVEL_TAGS["info"])
    return Text.assemble((clock.at(event.get("time")), "dim"), " ", (tag, style), " ",
                         (f"{event.get('kind', '?'):<14}", "bold"), " ", str(event.get("message", "")))


def log_line(log: dict) -> Text:
    """A trainer output line; stderr lines are prefixed with `!`."""
    if log.get("stream") == "stderr":
        return Text.assemble(("! ", "bold red"), str(log.get("line", "")))
    return Text("  " + str(log.get("line", "")))


class FeedLog(RichLog):
    """A RichLog that mirrors one of the model's bounded lists, appending only new entries."""

    DEFAULT_CSS = """
    FeedLog {
        height: 1fr;
        border: none;
        padding: 0 1;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    """

    def __init__(self, clock: fmt.Clock, *, id: str | None = None, classes: str | None = None,
                 max_lines: int = 500, wrap: bool = False) -> None:
        super().__init__(id=id, classes=classes, max_lines=max_lines, wrap=wrap, markup=False, highlight=False)
        self.clock = clock
        self._generation = -1
        self._written = 0

    def _items(self, model: RunModel) -> tuple[list, int]:
        raise NotImplementedError

    def _line(self, item: dict) -> Text:
        raise NotImplementedError

    def sync(self, model: RunModel) -> None:
        """Bring the widget up to date with `model` (cheap when nothing changed)."""
        items, total = self._items(model)
        if model.generation != self._generation:
            self.clear()
            self._generation, self._written = model.generation, 0
            self._write_all(items)
        elif total > self._written:
            self._write_all(items[len(items) - min(len(items), total - self._written):])
        self._written = total

    def _write_all(self, items: Iterable[dict]) -> None:
        for item in items:
            self.write(self._line(item))


class EventList(FeedLog):
    """Events: checkpoints, evals, phase changes, early stopping, crashes, restarts, warnings."""

    def _items(self, model: RunModel) -> tuple[list, int]:
        return list(model.events), model.events_total

    def _line(self, item: dict) -> Text:
        return event_line(item, self.clock)


class LogTail(FeedLog):
    """The tail of the trainer's stdout/stderr."""

    def _items(self, model: RunModel) -> tuple[list, int]:
        return list(model.logs), model.logs_total

    def _line(self, item: dict) -> Text:
        return log_line(item)


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
