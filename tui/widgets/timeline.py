"""The phase timeline: one segment per phase, sized by planned duration, with a marker for now."""
from __future__ import annotations

import itertools

from dataclasses import dataclass
from typing import Optional, Sequence

from rich.text import Text
from textual.timer import Timer

from tui import fmt
from tui.widgets.drawn import DrawnWidget, drawn
from tui.setup import SetupStatus
from trainer.schedule import relative_step_cost

DONE, LEFT, BOUNDARY, NOW = "█", "░", "▏", "▼"


@dataclass(frozen=True)
class PhaseSpan:
    """One phase of the plan as the timeline draws it."""

    index: int
    name: str
    start_step: int
    steps: int
    start_epoch: int
    epochs: int
    weight: float
    lr_mult: float = 1.0
    trainable: float = 1.0

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


def phase_weight(phase: dict) -> float:
    """Planned duration of a phase in arbitrary units.

    Steps times the phase's estimated seconds per step when the plan provides one; otherwise
    steps times the relative cost model the trainer's ETA uses (samples per step, scaled by how
    much of the network trains), and plain steps when the plan says nothing about batching.
    """
    steps = float(phase.get("steps") or 0)
    if phase.get("seconds_per_step"):
        return steps * float(phase["seconds_per_step"])
    if phase.get("batch_size") and phase.get("trainable") is not None:
        samples = phase["batch_size"] * (phase.get("accum_steps") or 1)
        return steps * samples * relative_step_cost(float(phase["trainable"]))
    return steps


def spans_from_plan(plan: Optional[dict]) -> tuple[PhaseSpan, ...]:
    """PhaseSpans for the phases of a `Plan.to_dict()`."""
    spans = []
    for i, phase in enumerate((plan or {}).get("phases") or ()):
        spans.append(PhaseSpan(
            index=int(phase.get("index", i)), name=str(phase.get("name", f"phase{i + 1}")),
            start_step=int(phase.get("start_step", 0)), steps=int(phase.get("steps", 0)),
            start_epoch=int(phase.get("start_epoch", 0)), epochs=int(phase.get("epochs", 0)),
            weight=phase_weight(phase), lr_mult=float(phase.get("lr_mult", 1.0)),
            trainable=float(phase.get("trainable", 1.0))))
    return tuple(spans)


def preparing_view(body: Optional[dict]) -> Optional[tuple[float, str]]:
    """(fraction done, label) of the feature store being prepared, None when it is not."""
    if not body:
        return None
    done, total = int(body.get("done") or 0), int(body.get("total") or 0)
    rate, eta = body.get("rate"), body.get("eta")
    label = f"preparing data: {fmt.count(done)}/{fmt.count(total)} files"
    label += f"  {rate:,.0f} files/s" if rate else ""
    label += f"  ETA {fmt.duration(eta)}" if eta is not None else ""
    return (done / total if total else 0.0), label


def allocate(weights: Sequence[float], width: int, minimum: int = 1) -> list[int]:
    """Split `width` cells proportionally to `weights` (largest remainder), each at least `minimum`."""
    n = len(weights)
    if n == 0:
        return []
    minimum = min(minimum, width // n) if width >= n else 0
    spare = width - minimum * n
    total = sum(weights) or float(n)
    shares = [(w if sum(weights) else 1.0) / total * spare for w in weights]
    cells = [minimum + int(s) for s in shares]
    leftovers = sorted(range(n), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in leftovers[: width - sum(cells)]:
        cells[i] += 1
    return cells


class PhaseTimeline(DrawnWidget):
    """Segments per phase (done █ / remaining ░), ▼ at the current step, labels with each phase's ETA.

    Rows beyond the first three list the phases one per line, the current one marked ▶.
    """

    DEFAULT_CSS = """
    PhaseTimeline {
        height: 3;
        padding: 0 1;
    }
    """
    COMPONENT_CLASSES = {"timeline--done", "timeline--left", "timeline--now"}

    spans: drawn[tuple[PhaseSpan, ...]] = drawn((), layout=True)
    """The plan's phases; empty until a plan is known."""
    step: drawn[int] = drawn(0)
    """Optimizer steps done (a repaint only when that moves a cell or changes a phase row: `drawn`)."""
    total_steps: drawn[int] = drawn(0)
    """Steps the run will take (may be cut short of the plan by max_steps)."""
    eta_labels: drawn[tuple[str, ...]] = drawn(())
    """Per phase: `done`, or time until it ends, e.g. `3h10m`."""
    eta_times: drawn[tuple[str, ...]] = drawn(())
    """Per phase: wall-clock time it ends, e.g. `Wed 14:05` (phase list rows only)."""
    preparing: drawn[Optional[tuple[float, str]]] = drawn(None)
    """(fraction, label) while the feature store is prepared before training (preparing_view)."""
    setup: drawn[Optional[SetupStatus]] = drawn(None)
    """What the trainer does before its first step (tui.setup), shown while no plan is known."""

    def __init__(self, clock: Optional[fmt.Clock] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = clock or fmt.Clock()
        self._ticker: Optional[Timer] = None

    def watch_setup(self, setup: Optional[SetupStatus]) -> None:
        """Tick each second while a setup stage's duration is shown, and not at all otherwise."""
        ticking = setup is not None and setup.since is not None
        if ticking and self._ticker is None:
            self._ticker = self.set_interval(1.0, self._tick, name="setup-clock")
        elif not ticking and self._ticker is not None:
            self._ticker.stop()
            self._ticker = None

    def _tick(self) -> None:
        self.redraw()

    def get_content_height(self, container, viewport, width: int) -> int:
        """With `height: auto`: the three timeline rows plus one row per phase."""
        return 3 + len(self.spans)

    def current_index(self) -> Optional[int]:
        for span in self.spans:
            if self.step < span.end_step:
                return span.index
        return self.spans[-1].index if self.spans else None

    def draw(self) -> list[Text]:
        width = self.content_region.width or self.size.width
        if self.preparing is not None and width >= 4:
            fraction, label = self.preparing
            done = int(round(min(1.0, max(0.0, fraction)) * width))
            bar = Text(DONE * done, self.component_style("timeline--done"))
            bar.append(LEFT * (width - done), self.component_style("timeline--left"))
            return [Text(label[:width], style="bold"), bar]
        if not self.spans or width < 4:
            return self._render_setup(width)
        cells = allocate([s.weight for s in self.spans], width, minimum=2)
        marker, bar, labels = [" "] * width, Text(), Text()
        done_style = self.component_style("timeline--done")
        left_style = self.component_style("timeline--left")
        now_style = self.component_style("timeline--now")
        offset = 0
        for i, (span, n) in enumerate(zip(self.spans, cells)):
            if n == 0:
                continue
            fraction = min(1.0, max(0.0, (self.step - span.start_step) / span.steps)) if span.steps else 1.0
            done = int(round(fraction * n))
            segment = [DONE] * done + [LEFT] * (n - done)
            if i > 0:
                segment[0] = BOUNDARY
            # One span per run of a style, not per cell: every span becomes a segment to compose and an
            # escape sequence to write, and this bar is redrawn at every step.
            styled = [(ch, done_style if (j < done and ch != BOUNDARY) else left_style) for j, ch in enumerate(segment)]
            for style, run in itertools.groupby(styled, key=lambda cell: cell[1]):
                bar.append("".join(ch for ch, _ in run), style)
            if span.start_step <= self.step < span.end_step or (i == len(self.spans) - 1 and self.step >= span.end_step):
                marker[min(width - 1, offset + max(0, min(n - 1, done)))] = NOW
            labels.append(self._label(i, n).ljust(n)[:n])
            offset += n
        rows = [Text("".join(marker), style=now_style), bar, labels]
        rows += self._phase_rows(max(0, self.size.height - 3), width)
        return rows

    def _render_setup(self, width: int) -> list[Text]:
        """Before the plan: what the trainer does and for how long, and where the time went."""
        if self.setup is None:
            return [Text("phase plan not known yet", style="dim")]
        elapsed = self.setup.elapsed(self.clock.now())
        done = "  ".join(f"✓ {name} {fmt.duration(seconds)}" for name, seconds in self.setup.done)
        rows = [Text(self.setup.text + elapsed, style="bold"), Text(done, style="dim")]
        for row in rows:
            row.truncate(width, overflow="ellipsis")
        return rows

    def _label(self, i: int, width: int) -> str:
        span = self.spans[i]
        eta = self.eta_labels[i] if i < len(self.eta_labels) else ""
        eta = "✓" if eta == "done" else eta
        head = f"{span.index + 1} "
        tail = f" {eta}" if eta else ""
        room = width - 1 - len(head) - len(tail)
        if room < 1:
            return (head + (eta or span.name))[: max(0, width - 1)]
        name = span.name if len(span.name) <= room else span.name[: max(1, room - 1)] + "…"
        return head + name + tail

    def _phase_rows(self, rows: int, width: int) -> list[Text]:
        if rows <= 0:
            return []
        current = self.current_index()
        out = []
        name_width = max(len(s.name) for s in self.spans)
        for i, span in enumerate(self.spans[:rows]):
            mark = "▶" if span.index == current else " "
            epochs = f"ep {span.start_epoch + 1}-{span.start_epoch + span.epochs}"
            steps = f"steps {fmt.count(span.start_step)}-{fmt.count(max(span.start_step, span.end_step - 1))}"
            eta = self.eta_labels[i] if i < len(self.eta_labels) else ""
            when = self.eta_times[i] if i < len(self.eta_times) else ""
            if eta == "done":
                status = "✓ done"
            elif eta:
                status = f"ends in {eta}" + (f" ({when})" if when and when != fmt.MISSING else "")
            else:
                status = ""
            if span.index == current and span.steps:
                pct = 100 * min(1.0, max(0.0, (self.step - span.start_step) / span.steps))
                status = f"{pct:4.1f}%  {status}"
            line = (f"{mark} {span.index + 1} {span.name:<{name_width}}  {epochs:<11} {steps:<24} "
                    f"lr×{span.lr_mult:g}  trains {span.trainable:.0%}  {status}")
            text = Text(line[:width], style="bold" if span.index == current else "")
            out.append(text)
        return out
