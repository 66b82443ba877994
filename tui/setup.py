"""What the trainer does before its first step, from its `setup` events (issue 13).

While a worker sets up (checks the data, opens the feature store, builds the model, loads a
checkpoint) it emits `event` kind `setup` with `data = {"stage", "started"}`; `ready` comes just
before the first step. `SetupStages` keeps the stages of the current worker so the header and the
timeline can say what it is doing and for how long, instead of "phase plan not known yet".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tui import fmt

MAX_STAGES = 8  # a worker has a handful of stages; more means a chatty trainer, keep the newest


@dataclass(frozen=True)
class Stage:
    name: str
    message: str
    started: float


class SetupStages:
    """The setup stages of the current worker; empty once it trains (or before it said anything)."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.ended: Optional[float] = None
        """When the last stage ended (`ready` came), None while one is under way."""

    @property
    def current(self) -> Optional[Stage]:
        """The stage under way, None when none is (not started, or ready)."""
        return self.stages[-1] if self.stages and self.ended is None else None

    def clear(self) -> None:
        """A new worker starts (state `starting`) or training began: forget the stages."""
        self.stages.clear()
        self.ended = None

    def apply(self, event: dict) -> None:
        """A `setup` event: a new stage begins (or `ready`: the last one ended)."""
        data = event.get("data") or {}
        started = data.get("started")
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            started = event.get("time") if isinstance(event.get("time"), (int, float)) else 0.0
        stage = str(data.get("stage") or "setup")
        if stage == "ready":
            self.ended = float(started)
            return
        if self.ended is not None:  # stages after `ready`: a new round (a worker we missed starting)
            self.clear()
        self.stages.append(Stage(stage, str(event.get("message") or stage), float(started)))
        del self.stages[:-MAX_STAGES]

    def label(self, now: float) -> Optional[str]:
        """`setting up: building model efficientnet_b0 (12s)`, None when no stage is under way."""
        stage = self.current
        if stage is None:
            return None
        return f"setting up: {stage.message} ({fmt.duration(max(0.0, now - stage.started))})"

    def done(self) -> list[tuple[str, float]]:
        """(stage, seconds it took) of the stages before the current one: where the time went."""
        ends = [s.started for s in self.stages[1:]] + ([self.ended] if self.ended is not None else [])
        return [(s.name, max(0.0, end - s.started)) for s, end in zip(self.stages, ends)]
