"""The one-line alert bar under the header: connection trouble, the last action's feedback, alerts.

Which alert shows is `tui.alerts_model` (most severe first, acknowledged ones step aside); this
module only lays the line out: the count of other alerts and the pointer to view 3 always fit
whole (compact at 80 columns), the alert text is ellipsised instead.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class AlertInfo:
    """What the alert bar shows: connection state, the last action's status, the alert in front."""

    connection: str = ""
    trouble: bool = False
    """The connection text reports trouble (⚠); a finished run read from disk does not."""
    action: str = ""
    action_level: str = "info"
    alert: str = ""
    alert_level: str = "warning"
    more_alerts: int = 0
    acknowledged: int = 0


def connection_text(model: RunModel, link: str, disconnect: Optional[Disconnected]) -> tuple[str, bool]:
    """What the alert bar says about the daemon link ("" while live), and whether it is trouble."""
    if link == "retrying" and disconnect is not None:
        d = disconnect
        return f"disconnected ({d.reason}), retrying in {d.retry_in:.0f}s (attempt {d.attempt})", True
    if link == "connecting":
        return "connecting to the daemon…", False
    if link == "offline":
        if model.state == "finished":
            return "finished · read from the run directory", False
        if model.state in RESUMABLE_STATES:
            return f"offline: run {model.state.upper()}, no daemon; press r to resume", model.state != "stopped"
        return f"offline: run {model.state.upper()}, no daemon (read from the run directory)", True
    return "", False


def alert_line(alert: Optional[Alert], clock: fmt.Clock) -> str:
    if alert is None:
        return ""
    at = f"{clock.at(alert.time)} " if alert.time is not None else ""
    return f"{at}{alert.kind}: {alert.message}"


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
        low = model.system and disk_is_low(model.system)
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
        connection, trouble = connection_text(model, link, disconnect)
        pending = self.book.pending()
        text, level = self.feedback.current()
        top = pending[0] if pending else None
        self.info = AlertInfo(connection=connection, trouble=trouble, action=text, action_level=level,
                              alert=alert_line(top, clock), alert_level=top.level if top else "warning",
                              more_alerts=max(0, len(pending) - 1), acknowledged=self.book.acknowledged)

    # ------------------------------------------------------------------ output
    def render(self) -> Text:
        info = self.info
        parts: list[Text] = []
        if info.connection:
            parts.append(Text.assemble(("⚠ ", "bold red"), (info.connection, "bold")) if info.trouble
                         else Text(info.connection, style="dim"))
        if info.action:
            tag, style = LEVEL_TAGS.get(info.action_level, LEVEL_TAGS["info"])
            parts.append(Text(info.action, style=style or "bold"))
        if info.alert:
            tag, style = LEVEL_TAGS.get(info.alert_level, LEVEL_TAGS["warning"])
            parts.append(Text.assemble((f"{tag} ", style), info.alert))
        suffix = self.suffix(info, compact=0 < self.size.width < COMPACT_WIDTH)
        if not parts:
            parts.append(Text("no alerts", style="dim"))
        text = Text(" │ ", style="dim").join(parts)
        width = self.content_size.width
        if width and text.cell_len + suffix.cell_len > width:
            text.truncate(max(1, width - suffix.cell_len), overflow="ellipsis")
        text.append_text(suffix)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text

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
        if not info.alert:  # nothing pending: only the quiet count of acknowledged alerts
            return Text(f" ({words[-1]})" if not compact else f" {words[-1]}", style="dim")
        words.append("›3" if compact else "view 3")
        return Text(" " + " ".join(words) if compact else f" ({', '.join(words)})", style="dim")
