"""The one-line alert bar under the header: connection trouble, the last action's feedback, alerts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui import fmt
from tui.model import RESUMABLE_STATES, RunModel
from tui.widgets.system import disk_is_low

if TYPE_CHECKING:
    from tui.messages import Disconnected


@dataclass(frozen=True)
class AlertInfo:
    """What the alert bar shows: connection trouble, the last action's status, the newest alert."""

    connection: str = ""
    action: str = ""
    action_level: str = "info"
    alert: str = ""
    alert_level: str = "warning"
    more_alerts: int = 0

    @classmethod
    def from_model(cls, model: RunModel, link: str, disconnect: Optional[Disconnected],
                   action: tuple[str, str], clock: fmt.Clock) -> "AlertInfo":
        """The bar for `model`, the link state, the last disconnect and the last action's (text, level)."""
        alerts = model.alerts
        alert, alert_level, more = "", "warning", 0
        if model.system and disk_is_low(model.system):
            alert = f"disk space LOW: {fmt.size(model.system.get('disk_free'))} free under the run directory"
            more = len(alerts)
        elif alerts:
            newest = alerts[-1]
            alert = f"{clock.at(newest.get('time'))} {newest.get('kind')}: {newest.get('message', '')}"
            alert_level = newest.get("level", "warning")
            more = len(alerts) - 1
        text, level = action
        return cls(connection=connection_text(model, link, disconnect), action=text, action_level=level,
                   alert=alert, alert_level=alert_level, more_alerts=more)


def connection_text(model: RunModel, link: str, disconnect: Optional[Disconnected]) -> str:
    """What the alert bar says about the daemon link ("" while live)."""
    if link == "retrying" and disconnect is not None:
        d = disconnect
        return f"disconnected ({d.reason}), retrying in {d.retry_in:.0f}s (attempt {d.attempt})"
    if link == "connecting":
        return "connecting to the daemon…"
    if link == "offline":
        if model.state in RESUMABLE_STATES:
            return f"offline: run {model.state.upper()}, no daemon; press r to resume"
        return f"offline: run {model.state.upper()}, no daemon (read from the run directory)"
    return ""


LEVEL_TAGS = {"info": ("INFO", ""), "warning": ("WARN", "bold yellow"), "error": ("ERROR", "bold red")}


class AlertBar(Widget):
    """One line, visible in every view: connection state, action feedback, the newest warning/error."""

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

    def render(self) -> Text:
        info = self.info
        parts: list[Text] = []
        if info.connection:
            parts.append(Text.assemble(("⚠ ", "bold red"), (info.connection, "bold")))
        if info.action:
            tag, style = LEVEL_TAGS.get(info.action_level, LEVEL_TAGS["info"])
            parts.append(Text(info.action, style=style or "bold"))
        if info.alert:
            tag, style = LEVEL_TAGS.get(info.alert_level, LEVEL_TAGS["warning"])
            alert = Text.assemble((f"{tag} ", style), info.alert)
            if info.more_alerts:
                alert.append(f" (+{info.more_alerts}, view 3)", style="dim")
            parts.append(alert)
        if not parts:
            return Text("no alerts", style="dim")
        text = Text(" │ ", style="dim").join(parts)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text
