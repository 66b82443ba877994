"""The two header lines (run identity and progress) and the one-line alert bar under them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui import fmt
from tui.model import ACTIVE_STATES, RESUMABLE_STATES, RunModel
from tui.widgets.system import disk_is_low

if TYPE_CHECKING:
    from tui.messages import Disconnected

# State words are always written out; the colour only repeats what the word says.
STATE_STYLES = {
    "running": "bold green", "starting": "bold cyan", "paused": "bold yellow", "stopping": "bold yellow",
    "stopped": "bold", "finished": "bold green", "failed": "bold red", "interrupted": "bold red",
}
LINK_LABELS = {"live": "live", "connecting": "connecting…", "offline": "offline", "retrying": "disconnected"}


@dataclass(frozen=True)
class HeaderInfo:
    """Everything the header shows, as display-ready values (equality decides whether to repaint)."""

    name: str
    state: str
    link: str
    model: str
    phase: str
    step: str
    epoch: str
    elapsed: str
    eta: str

    @classmethod
    def from_model(cls, model: RunModel, link: str, clock: fmt.Clock) -> "HeaderInfo":
        if model.preparing and model.state in ACTIVE_STATES:
            return cls.preparing(model, link, clock)
        progress = model.progress or {}
        phases = model.phases
        phase_index = progress.get("phase")
        if phase_index is not None:
            name = progress.get("phase_name") or (phases[phase_index]["name"] if phase_index < len(phases) else "")
            phase = f"phase {phase_index + 1}/{max(len(phases), phase_index + 1)} {name}"
        else:
            phase = "phase –"
        total = model.total_steps
        step = model.step
        pct = f" {100 * step / total:.1f}%" if total else ""
        epoch = progress.get("epoch")
        total_epochs = progress.get("total_epochs") or (model.plan or {}).get("total_epochs")
        epoch_text = "epoch –" if epoch is None else f"epoch {epoch + 1}/{total_epochs or '?'}"
        eta = progress.get("eta")
        if model.state == "finished":
            eta_text = "ETA done"
        elif eta is None or model.state not in ACTIVE_STATES:
            eta_text = "ETA –"
        else:
            eta_text = f"ETA {fmt.duration(eta)} → {clock.eta_time(eta)}"
        return cls(name=model.name or "?", state=model.state, link=link,
                   model=str(model.config.get("model") or "?"), phase=phase,
                   step=f"step {fmt.count(step)}/{fmt.count(total)}{pct}", epoch=epoch_text,
                   elapsed=f"elapsed {fmt.duration(progress.get('elapsed'))}", eta=eta_text)


    @classmethod
    def preparing(cls, model: RunModel, link: str, clock: fmt.Clock) -> "HeaderInfo":
        """The "preparing data" phase before training: files done, files/s, ETA of the store."""
        body = model.preparing or {}
        done, total = int(body.get("done") or 0), int(body.get("total") or 0)
        pct = f" {100 * done / total:.1f}%" if total else ""
        rate, eta = body.get("rate"), body.get("eta")
        return cls(name=model.name or "?", state=model.state, link=link,
                   model=str(model.config.get("model") or "?"), phase="preparing data",
                   step=f"files {fmt.count(done)}/{fmt.count(total)}{pct}",
                   epoch="– files/s" if not rate else f"{rate:,.0f} files/s",
                   elapsed=f"elapsed {fmt.duration(body.get('elapsed'))}",
                   eta="ETA –" if eta is None else f"ETA {fmt.duration(eta)} → {clock.eta_time(eta)}")


class RunHeader(Widget):
    """Run name, state, connection, model and phase on line one; step, epoch, elapsed, ETA on line two."""

    DEFAULT_CSS = """
    RunHeader {
        height: 2;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        background: $panel;
        padding: 0 1;
    }
    """

    info: reactive[Optional[HeaderInfo]] = reactive(None)
    """What to show; None before anything is known about the run."""

    def render(self) -> Text:
        info = self.info
        if info is None:
            return Text("longhaul: loading run…")
        sep = (" │ ", "dim")
        line1 = Text.assemble(
            (info.name, "bold"), sep,
            (info.state.upper(), STATE_STYLES.get(info.state, "bold")), sep,
            (LINK_LABELS.get(info.link, info.link), "bold" if info.link == "live" else "bold reverse"), sep,
            info.model, sep, info.phase,
        )
        line2 = Text.assemble(info.step, sep, info.epoch, sep, info.elapsed, sep, (info.eta, "bold"))
        for line in (line1, line2):
            line.no_wrap = True
            line.overflow = "ellipsis"
        return Text("\n").join([line1, line2])


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
