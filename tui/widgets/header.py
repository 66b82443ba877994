"""The two header lines: run identity, and progress (the alert bar under them is tui.widgets.alerts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui import fmt
from tui.model import ACTIVE_STATES, RunModel

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
