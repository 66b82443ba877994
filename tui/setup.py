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
        self.training = False
        """The current worker reported progress: its setup is over."""

    @property
    def current(self) -> Optional[Stage]:
        """The stage under way, None when none is (not started, or ready)."""
        return self.stages[-1] if self.stages and self.ended is None else None

    def clear(self, training: bool = False) -> None:
        """Forget the stages: a new worker starts (state `starting`), or `training` began."""
        self.stages.clear()
        self.ended = None
        self.training = training

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
        message = str(event.get("message") or stage)
        if self.stages and self.stages[-1].name == stage:  # the same stage says more (its file count)
            self.stages[-1] = Stage(stage, message, self.stages[-1].started)
            return
        self.stages.append(Stage(stage, message, float(started)))
        del self.stages[:-MAX_STAGES]

    def done(self) -> tuple[tuple[str, float], ...]:
        """(stage, seconds it took) of the stages before the current one: where the time went."""
        ends = [s.started for s in self.stages[1:]] + ([self.ended] if self.ended is not None else [])
        return tuple((s.name, max(0.0, end - s.started)) for s, end in zip(self.stages, ends))

    def status(self, state: str, active: bool) -> Optional["SetupStatus"]:
        """What to say in place of the phase while the trainer gets ready, None once it trains
        (or when the run is not active): the stage under way, or `starting worker…` while the
        daemon starts one (state `starting`) and it has said nothing yet."""
        if not active:
            return None
        stage = self.current
        if stage is not None:
            return SetupStatus(f"setting up: {stage.message}", stage.started, self.done())
        if state == "starting" and self.ended is None and not self.training:
            return SetupStatus("starting worker…", None, ())
        return None


@dataclass(frozen=True)
class SetupStatus:
    """The setup as the header and timeline show it (equality decides whether to repaint)."""

    text: str
    since: Optional[float]
    """When the stage under way began (the widgets add ` (12s)`, ticking by themselves)."""
    done: tuple[tuple[str, float], ...]

    def elapsed(self, now: float) -> str:
        """` (12s)`: how long the stage has been under way; empty without a stage."""
        return "" if self.since is None else f" ({fmt.duration(max(0.0, now - self.since))})"
