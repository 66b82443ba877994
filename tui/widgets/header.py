"""The two header lines: run identity, and progress (the alert bar under them is tui.widgets.alerts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rich.text import Text
from textual.timer import Timer

from trainer.fmt import epoch_number
from tui import fmt
from tui.widgets.drawn import DrawnWidget, drawn
from tui.model import ACTIVE_STATES, RunModel

# State words are always written out; the colour only repeats what the word says.
STATE_STYLES = {
    "running": "bold green", "starting": "bold cyan", "paused": "bold yellow", "stopping": "bold yellow",
    "stopped": "bold", "finished": "bold green", "failed": "bold red", "interrupted": "bold red",
    "queued": "bold cyan",
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
    """`ETA 3h10m`, `ETA 3h10m paused`, `ETA done` or `ETA –`: the part that only frames change."""
    eta_left: Optional[float] = None
    """Seconds left when the ETA has a clock time (`→ 14:05`), which the header works out when it
    paints: while paused no frame comes, yet that time moves with the clock."""
    since: Optional[float] = None
    """When the setup stage in `phase` began: the header adds how long ago, ticking by itself."""

    @classmethod
    def from_model(cls, model: RunModel, link: str, clock: fmt.Clock) -> "HeaderInfo":
        if model.preparing and model.state in ACTIVE_STATES:
            return cls.preparing(model, link, clock)
        setup = model.setup.status(model.state, model.state in ACTIVE_STATES)
        progress = model.progress or {}
        total = model.total_steps
        step = model.step
        pct = f" {100 * step / total:.1f}%" if total else ""
        total_epochs = progress.get("total_epochs") or (model.plan or {}).get("total_epochs")
        epoch = epoch_number(progress.get("epoch"), total_epochs)
        epoch_text = "epoch –" if epoch is None else f"epoch {epoch}/{total_epochs or '?'}"
        eta_text, eta_left = eta_parts(model)
        return cls(name=model.name or "?", state=model.state, link=link,
                   model=str(model.config.get("model") or "?"), phase=setup.text if setup else phase_text(model),
                   step=f"step {fmt.count(step)}/{fmt.count(total) if total else '?'}{pct}", epoch=epoch_text,
                   elapsed=f"elapsed {fmt.duration(progress.get('elapsed'))}", eta=eta_text, eta_left=eta_left,
                   since=setup.since if setup else None)

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
                   eta="ETA –" if eta is None else f"ETA {fmt.duration(eta)}", eta_left=eta)


def phase_text(model: RunModel) -> str:
    """`phase 2/3 finetune`, or `phase –` before the trainer reported one."""
    progress, phases = model.progress or {}, model.phases
    index = progress.get("phase")
    if index is None:
        return "phase –"
    name = progress.get("phase_name") or (phases[index]["name"] if index < len(phases) else "")
    return f"phase {index + 1}/{max(len(phases), index + 1)} {name}"


def eta_parts(model: RunModel) -> tuple[str, Optional[float]]:
    """(ETA text, seconds left for its clock time or None). Paused, the time left stays what it
    was and the finish moves later with the clock, so the text says why it does not count down."""
    eta = (model.progress or {}).get("eta")
    if model.state == "finished":
        return "ETA done", None
    if eta is None or model.state not in ACTIVE_STATES:
        return "ETA –", None
    return f"ETA {fmt.duration(eta)}" + (" paused" if model.state == "paused" else ""), eta


class RunHeader(DrawnWidget):
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

    info: drawn[Optional[HeaderInfo]] = drawn(None)
    """What to show; None before anything is known about the run."""

    def __init__(self, clock: Optional[fmt.Clock] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock or fmt.Clock()
        self._ticker: Optional[Timer] = None
        self._ticker_period = 0.0

    def clock_parts(self) -> tuple[str, str]:
        """The parts that move with the clock alone: ` (12s)` in a setup stage, ` → 14:05` of the ETA."""
        info = self.info
        if info is None:
            return "", ""
        since = "" if info.since is None else f" ({fmt.duration(max(0.0, self.clock.now() - info.since))})"
        eta = "" if info.eta_left is None else f" → {self.clock.eta_time(info.eta_left)}"
        return since, eta

    def watch_info(self, info: Optional[HeaderInfo]) -> None:
        """Tick only while a clock part is shown: each second for a setup stage's duration, every
        few seconds for the ETA's clock time (minutes); otherwise no timer at all."""
        period = 0.0 if info is None else 1.0 if info.since is not None else 5.0 if info.eta_left is not None else 0.0
        if period == self._ticker_period:
            return
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        self._ticker_period = period
        if period:
            self._ticker = self.set_interval(period, self._tick, name="header-clock")

    def _tick(self) -> None:
        self.redraw()

    def draw(self) -> list[Text]:
        info = self.info
        if info is None:
            return [Text("longhaul: loading run…")]
        since, eta_time = self.clock_parts()
        sep = (" │ ", "dim")
        line1 = Text.assemble(
            (info.name, "bold"), sep,
            (info.state.upper(), STATE_STYLES.get(info.state, "bold")), sep,
            (LINK_LABELS.get(info.link, info.link), "bold" if info.link == "live" else "bold reverse"), sep,
            info.model, sep, info.phase + since,
        )
        line2 = Text.assemble(info.step, sep, info.epoch, sep, info.elapsed, sep, (info.eta + eta_time, "bold"))
        if line2.cell_len > (self.content_region.width or self.size.width or line2.cell_len):
            # 80 columns: shorter words rather than losing the end of the ETA, the part read most
            line2 = Text.assemble(info.step.removeprefix("step "), sep, info.epoch.replace("epoch ", "ep ", 1),
                                  sep, info.elapsed, sep, (info.eta + eta_time, "bold"))
        for line in (line1, line2):
            line.no_wrap = True
            line.overflow = "ellipsis"
        return [line1, line2]
