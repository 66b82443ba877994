"""The one-line alert bar under the header: connection trouble, the last action's feedback, alerts.

Which alert shows is `tui.alerts_model` (most severe first, acknowledged ones step aside); this
module only lays the line out: the count of other alerts and the pointer to view 3 always fit
whole (compact at 80 columns), the alert text is ellipsised instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Optional

from rich.text import Text
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget

from tui import fmt
from tui.alerts_model import ActionFeedback, Alert, AlertBook
from tui.model import RESUMABLE_STATES, RunModel
from tui.widgets.system import disk_is_low

if TYPE_CHECKING:
    from tui.messages import Disconnected

COMPACT_WIDTH = 100
"""Below this many columns the suffix is `+1 ›3` instead of `(+1, view 3)`."""
MIN_ALERT = 12
"""Fewer cells than this for the alert text (beside connection trouble): the alert is only counted."""
MIN_CONNECTION = 24
"""The connection text keeps at least this many cells when the action's feedback needs room."""


@dataclass(frozen=True)
class AlertInfo:
    """What the alert bar shows: connection state, the last action's status, the alert in front."""

    connection: str = ""
    connection_short: str = ""
    """The connection text at 80 columns."""
    trouble: bool = False
    """The connection text reports trouble (⚠); a finished run read from disk does not."""
    action: str = ""
    action_level: str = "info"
    alert: str = ""
    alert_level: str = "warning"
    more_alerts: int = 0
    acknowledged: int = 0


def connection_text(model: RunModel, link: str, disconnect: Optional[Disconnected]) -> tuple[str, str, bool]:
    """What the alert bar says about the daemon link ("" while live), a short form of it for
    narrow terminals (the header says the state already), and whether it is trouble."""
    if link == "retrying" and disconnect is not None:
        d = disconnect
        return (f"disconnected ({d.reason}), retrying in {d.retry_in:.0f}s (attempt {d.attempt})",
                f"disconnected, retry in {d.retry_in:.0f}s", True)
    if link == "connecting":
        return "connecting to the daemon…", "connecting…", False
    if link == "offline":
        if model.state == "finished":
            return "finished · read from the run directory", "finished · from disk", False
        if model.state == "queued":  # the link connects by itself once the queue starts it
            return ("queued: it starts when a slot is free (`longhaul queue`); this view goes live then",
                    "queued · goes live when it starts", False)
        if model.state in RESUMABLE_STATES:
            return (f"offline: run {model.state.upper()}, no daemon; press r to resume", "no daemon; r resumes",
                    model.state != "stopped")
        return f"offline: run {model.state.upper()}, no daemon", "no daemon", True
    return "", "", False


def alert_line(alert: Optional[Alert], clock: fmt.Clock) -> str:
    """`14:05:09 crash: trainer killed by SIGKILL` (a condition derived from other data has no
    time; an alert with a label, `ALERT_LABELS`, says it instead of its kind)."""
    if alert is None:
        return ""
    at = f"{clock.at(alert.time)} " if alert.time is not None else ""
    return f"{at}{alert.label or alert.kind}: {alert.message}"


def shorten(text: Text, cells: int) -> Text:
    """`text` cut to `cells` with an ellipsis (unchanged when it fits)."""
    if cells > 0 and text.cell_len > cells:
        text = text.copy()
        text.truncate(max(1, cells), overflow="ellipsis")
    return text


def layout(info: AlertInfo, width: int, narrow: bool) -> Text:
    """The bar's line in `width` cells (0: unknown, nothing cut). What gives way when it is too
    long, first to last: the wide suffix (`(+1, view 3)` -> `+1 ›3`), the alert text (down to a
    third of the line), the connection text (down to MIN_CONNECTION), then the alert is only
    counted in the suffix, then the action's feedback is cut. Connection trouble is never shortened
    for the alert: it is what the user must read first. The suffix itself is never cut."""
    connection = action = None
    if info.connection:
        words = info.connection_short if narrow and info.connection_short else info.connection
        connection = Text.assemble(("⚠ ", "bold red"), (words, "bold")) if info.trouble else Text(words, style="dim")
    if info.action:
        action = Text(info.action, style=LEVEL_TAGS.get(info.action_level, LEVEL_TAGS["info"])[1] or "bold")
    state = join(connection, action)
    if width:
        suffix_room = AlertBar.suffix(info, compact=narrow).cell_len
        least = min(len(info.alert) + 6, max(20, width // 3)) if info.alert else 0
        if connection and not info.trouble and state.cell_len + 3 * bool(state) + least + suffix_room > width:
            others = (action.cell_len + 3 if action else 0) + (least + 3 if least else 0)
            connection = shorten(connection, max(MIN_CONNECTION, width - suffix_room - others))
            state = join(connection, action)
        if info.alert and state.cell_len + 3 + min(least, MIN_ALERT) + suffix_room > width:
            info = replace(info, alert="", more_alerts=info.more_alerts + 1)  # only counted
    alert = None
    if info.alert:
        tag, style = LEVEL_TAGS.get(info.alert_level, LEVEL_TAGS["warning"])
        alert = Text.assemble((f"{tag} ", style), info.alert)
    elif not state:
        state = Text("no alerts", style="dim")
    line = join(state, alert)
    suffix = AlertBar.suffix(info, compact=narrow)
    if width and not narrow and line.cell_len + suffix.cell_len > width:
        suffix = AlertBar.suffix(info, compact=True)  # the short form leaves more room for the words
    line = shorten(line, width - suffix.cell_len if width else 0)
    line.append_text(suffix)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def join(*parts: Optional[Text]) -> Text:
    return Text(" │ ", style="dim").join(p for p in parts if p)


LEVEL_TAGS = {"info": ("INFO", ""), "warning": ("WARN", "bold yellow"), "error": ("ERROR", "bold red")}


class AlertBar(Widget):
    """One line, visible in every view: connection state, action feedback, the most severe alert."""

    DEFAULT_CSS = """
    AlertBar {
        height: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        padding: 0 1;
        background: $boost;
    }
    """

    info: reactive[AlertInfo] = reactive(AlertInfo)
    """Current content of the bar."""

    def __init__(self, *, id: Optional[str] = None, now: Optional[Callable[[], float]] = None) -> None:
        super().__init__(id=id)
        self.book = AlertBook()
        self.feedback = ActionFeedback(now) if now else ActionFeedback()
        self._inputs: Optional[tuple] = None
        self._expiry: Optional[Timer] = None

    # ------------------------------------------------------------------ input
    def show(self, model: RunModel, link: str, disconnect: Optional[Disconnected], clock: fmt.Clock) -> None:
        """Bring the bar up to date with `model` (new events only) and the link state."""
        self.book.sync(model, model.generation, model.events, model.events_total)
        self.book.note_progress((model.progress or {}).get("time"))
        # Only a live sample: the last one of a finished run's directory says nothing about now.
        low = link == "live" and model.system and disk_is_low(model.system)
        self.book.set_condition("disk_low", "warning", f"disk space LOW: {fmt.size(model.system.get('disk_free'))} "
                                "free under the run directory" if low else None)
        self._inputs = (model, link, disconnect, clock)
        self._update()

    def set_action(self, text: str, level: str) -> None:
        """The feedback of an action; it goes away by itself (`ActionFeedback`)."""
        self.feedback.set(text, level)
        if self._expiry is not None:
            self._expiry.stop()
        self._expiry = self.set_timer(self.feedback.remaining() + 0.05, self._update, name="action-expiry")
        self._update()

    def acknowledge(self) -> Optional[Alert]:
        """Acknowledge the alert in front; the next one shows."""
        alert = self.book.acknowledge()
        self._update()
        return alert

    def _update(self) -> None:
        if self._inputs is None:
            self.info = AlertInfo(**dict(zip(("action", "action_level"), self.feedback.current())))
            return
        model, link, disconnect, clock = self._inputs
        connection, short, trouble = connection_text(model, link, disconnect)
        pending = self.book.pending()
        text, level = self.feedback.current()
        top = pending[0] if pending else None
        self.info = AlertInfo(connection=connection, connection_short=short, trouble=trouble, action=text, action_level=level,
                              alert=alert_line(top, clock), alert_level=top.level if top else "warning",
                              more_alerts=max(0, len(pending) - 1), acknowledged=self.book.acknowledged)

    # ------------------------------------------------------------------ output
    def render(self) -> Text:
        return layout(self.info, self.content_size.width, narrow=0 < self.size.width < COMPACT_WIDTH)

    @staticmethod
    def suffix(info: AlertInfo, compact: bool) -> Text:
        """` (+2, 1 acknowledged, view 3)`, or ` +2 ✓1 ›3` when narrow: kept whole, never cut."""
        words = []
        if info.more_alerts:
            words.append(f"+{info.more_alerts}")
        if info.acknowledged:
            words.append(f"✓{info.acknowledged}" if compact else f"{info.acknowledged} acknowledged")
        if not words:
            return Text()
        if not info.alert and not info.more_alerts:  # only the quiet count of acknowledged alerts
            return Text(f" ({words[-1]})" if not compact else f" {words[-1]}", style="dim")
        words.append("›3" if compact else "view 3")
        return Text(" " + " ".join(words) if compact else f" ({', '.join(words)})", style="dim")
