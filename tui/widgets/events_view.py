"""View 3, events & log, as a feed a power user keeps open (k9s-like): search, level filter,
routine kinds hidden, wrap, horizontal scroll, pause/follow. The keys live here (bindings on
`EventsView`; the focus is inside it while the view shows).

Cheap with a trainer printing many lines a second: the panes append only the new entries;
a changed filter, wrap mode or width rewrites the (bounded) lists once.
"""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import Input, Static

from tui import fmt
from tui.model import RunModel
from tui.widgets.feeds import EventList, FeedFilter, FeedLog, LogTail

LEVEL_FILTERS = ("all levels", "warnings+", "errors")
"""What `v` cycles through; the index is `FeedFilter.min_level`."""
SCROLL_STEP = 16


KEY_HINT = "/ search  v level  k routine  w wrap  space pause"


class EventsView(Vertical, can_focus=True):
    """The title line, the search box (while searching) and the two feeds: events and log."""

    DEFAULT_CSS = """
    EventsView { height: 1fr; }
    EventsView > #events-title { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap;
                                 text-overflow: ellipsis; }
    EventsView > #events-search { display: none; height: 1; border: none; padding: 0 1; }
    EventsView > #events-search.-shown { display: block; }
    """

    BINDINGS = [
        Binding("slash", "search", "Search", show=False, tooltip="Search: lines containing the text (Enter keeps it, Esc clears it)"),
        Binding("v", "level", "Level", show=False, tooltip="Level filter: all → warnings and errors → errors only"),
        Binding("k", "routine", "Routine", show=False, tooltip="Hide or show routine events (checkpoints, evaluations, setup)"),
        Binding("w", "wrap", "Wrap", show=False, tooltip="Wrap long lines, or cut them and scroll sideways"),
        Binding("left", "scroll_x(-1)", "Scroll left", show=False),
        Binding("right", "scroll_x(1)", "Scroll right", show=False),
        Binding("space", "follow", "Pause/follow", show=False, tooltip="Pause the lists (new lines are counted) or follow the newest"),
        Binding("escape", "clear", "Clear filter", show=False, tooltip="Clear the search and filters; with none, back to the run list"),
    ]

    def __init__(self, clock: fmt.Clock, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.filter = FeedFilter()
        self.following = True
        self.new_while_paused = 0
        self.wrap = True
        self._model: Optional[RunModel] = None

    def compose(self) -> ComposeResult:
        yield Static(id="events-title")
        yield Input(placeholder="search events and log (enter keeps it, escape clears it)", id="events-search")
        # `#events-view` keeps the app's layout rules: side by side when wide, stacked otherwise.
        with Container(id="events-view"):
            yield EventList(self.clock, id="all-events", wrap=True)
            yield LogTail(self.clock, id="all-log", max_lines=500, wrap=True)

    def on_mount(self) -> None:
        for pane in self.panes:
            pane.can_focus = False  # the keys belong to the view; the mouse still scrolls a pane
        self._show_title()

    @property
    def panes(self) -> tuple[FeedLog, FeedLog]:
        return self.query_one("#all-events", EventList), self.query_one("#all-log", LogTail)

    # ------------------------------------------------------------------ the model
    def show(self, model: RunModel) -> None:
        """Append what is new in `model` (everything again after a reload or a filter change)."""
        self._model = model
        shown = sum(pane.sync(model, self.filter) for pane in self.panes)
        if not self.following and shown:
            self.new_while_paused += shown
            self._show_title()

    def _refilter(self) -> None:
        if self._model is not None:
            self.show(self._model)
        self._show_title()

    def title(self) -> Text:
        """`events & log · following` or `· paused, 12 new`, then what is filtered."""
        text = Text("events & log", style="bold")
        if self.following:
            text.append(" · following", style="dim")
        else:
            text.append(" · paused", style="bold yellow")
            if self.new_while_paused:
                text.append(f", {self.new_while_paused:,} new", style="bold yellow")
        if self.filter.search:
            text.append(f" · search “{self.filter.search}”", style="bold")
        if self.filter.min_level:
            text.append(f" · {LEVEL_FILTERS[self.filter.min_level]}", style="bold")
        if self.filter.hide_routine:
            text.append(" · routine hidden", style="bold")
        if not self.wrap:
            text.append(" · no wrap (←/→ scroll)", style="dim")
        # The view's keys are named here, not in the footer: with the run screen's keys they
        # overflowed an 80-column footer (all of them are in the help).
        if text.cell_len + len(KEY_HINT) + 3 <= self.size.width:
            text.append(" " * (self.size.width - text.cell_len - len(KEY_HINT) - 1) + KEY_HINT, style="dim")
        return text

    def on_resize(self) -> None:
        self._show_title()

    def _show_title(self) -> None:
        self.query_one("#events-title", Static).update(self.title())

    # ------------------------------------------------------------------ keys
    def action_search(self) -> None:
        box = self.query_one("#events-search", Input)
        box.add_class("-shown")
        box.focus()

    @on(Input.Changed, "#events-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.filter = FeedFilter(event.value, self.filter.min_level, self.filter.hide_routine)
        self._refilter()

    @on(Input.Submitted, "#events-search")
    def _search_kept(self) -> None:
        self.query_one("#events-search", Input).remove_class("-shown")
        self.focus()

    def action_level(self) -> None:
        level = (self.filter.min_level + 1) % len(LEVEL_FILTERS)
        self.filter = FeedFilter(self.filter.search, level, self.filter.hide_routine)
        self._refilter()

    def action_routine(self) -> None:
        self.filter = FeedFilter(self.filter.search, self.filter.min_level, not self.filter.hide_routine)
        self._refilter()

    def action_wrap(self) -> None:
        self.wrap = not self.wrap
        for pane in self.panes:
            pane.wrap = self.wrap
            pane.scroll_to(x=0, animate=False)
        self._refilter()

    def action_scroll_x(self, direction: int) -> None:
        for pane in self.panes:
            pane.scroll_relative(x=direction * SCROLL_STEP, animate=False)

    def action_follow(self) -> None:
        self.following = not self.following
        self.new_while_paused = 0
        for pane in self.panes:
            pane.auto_scroll = self.following
            if self.following:
                pane.scroll_end(animate=False)
        self._show_title()

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "clear":  # nothing to clear: escape goes on to the screen (back to the runs)
            return self.filter.active or self.query_one("#events-search", Input).has_class("-shown")
        return True

    def action_clear(self) -> None:
        """Escape: close the search box and clear every filter."""
        box = self.query_one("#events-search", Input)
        box.remove_class("-shown")
        self.filter = FeedFilter()
        with box.prevent(Input.Changed):
            box.value = ""
        self.focus()
        self._refilter()
