"""The phase plan, the learning-rate schedule and the ETA model, as pure functions of the step.

No torch here: the TUI draws the planned LR from `Plan.lr_curve()` and the ETA model runs in the
trainer. A *step* is one optimizer step; schedules are defined in (fractional) epochs so that
phases with different batch sizes still line up with the epoch numbers users write in configs.
The run warms up once from epoch 0 (schedule.warmup_epochs) and again at the start of each phase
that unfreezes more of the backbone (see phase_warmup); the LR stays a pure function of the step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class PhasePlan:
    """One phase laid out in steps."""

    index: int
    name: str
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    start_step: int
    trainable: float
    lr_mult: float
    batch_size: int
    accum_steps: int
    warmup_epochs: float = 0.0
    """Epochs of LR warm-up at this phase's start (0: none; see Plan.phase_warmup)."""

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.accum_steps


@dataclass(frozen=True)
class LrSchedule:
    """Shape of the LR over fractional epochs; see ScheduleConfig for the meaning of each field."""

    name: str
    base_lr: float
    total_epochs: int
    warmup_epochs: float = 0.0
    warmup_start_ratio: float = 0.01
    min_lr_ratio: float = 0.01
    restarts: tuple[int, ...] = ()
    step_epochs: int = 10
    step_gamma: float = 0.1

    def factor_at(self, epoch: float) -> float:
        """LR / base_lr at a fractional epoch, before phase multipliers and plateau reductions."""
        if epoch < self.warmup_epochs:
            progress = epoch / self.warmup_epochs
            return self.warmup_start_ratio + (1.0 - self.warmup_start_ratio) * progress
        if self.name == "cosine":
            return self._cosine(epoch)
        if self.name == "step":
            return self.step_gamma ** math.floor((epoch - self.warmup_epochs) / self.step_epochs)
        return 1.0  # constant, and plateau (whose reductions depend on metrics, not the step)

    def _cosine(self, epoch: float) -> float:
        bounds = [self.warmup_epochs] + [r for r in self.restarts if r > self.warmup_epochs] + [self.total_epochs]
        for start, end in zip(bounds, bounds[1:]):
            if epoch < end or end == bounds[-1]:
                progress = min(1.0, (epoch - start) / max(end - start, 1e-9))
                return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio


@dataclass
class Plan:
    """The whole run laid out in steps: phases, total steps, and the planned LR per step."""

    phases: list[PhasePlan]
    schedule: LrSchedule
    max_steps: Optional[int] = None

    @classmethod
    def from_config(cls, cfg, n_train: int) -> "Plan":
        """Lay out `cfg.phases` for a training set of `n_train` examples."""
        phases, step, epoch = [], 0, 0
        s = cfg.schedule
        for index, phase in enumerate(cfg.phases):
            batch = phase.batch_size or cfg.optim.batch_size
            accum = phase.accum_steps or cfg.optim.accum_steps
            per_epoch = n_train // (batch * accum)
            if per_epoch < 1:
                raise ValueError(f"phases.{index} ({phase.name}): one step needs {batch * accum} "
                                 f"samples but the training set has {n_train}")
            warmup = phase_warmup(cfg.phases[index - 1].trainable if index else None, phase.trainable,
                                  phase.epochs, s.warmup_epochs, s.phase_warmup_epochs)
            plan = PhasePlan(index, phase.name, phase.epochs, epoch, per_epoch, step,
                             phase.trainable, phase.lr_mult, batch, accum, warmup)
            phases.append(plan)
            step, epoch = plan.end_step, epoch + phase.epochs
        schedule = LrSchedule(s.name, cfg.optim.lr, epoch, s.warmup_epochs, s.warmup_start_ratio,
                              s.min_lr_ratio, tuple(s.restarts), s.step_epochs, s.step_gamma)
        return cls(phases, schedule, cfg.max_steps)

    @property
    def planned_steps(self) -> int:
        return self.phases[-1].end_step

    @property
    def total_steps(self) -> int:
        """Steps the run will take: the plan, cut short by max_steps."""
        return min(self.planned_steps, self.max_steps) if self.max_steps else self.planned_steps

    @property
    def total_epochs(self) -> int:
        return self.schedule.total_epochs

    def phase_at(self, step: int) -> PhasePlan:
        """The phase that optimizer step `step` (0-based) belongs to; the last phase past the end."""
        for phase in self.phases:
            if step < phase.end_step:
                return phase
        return self.phases[-1]

    def epoch_at(self, step: int) -> tuple[int, int]:
        """(global epoch index, steps already done inside it) for 0-based `step`."""
        phase = self.phase_at(step)
        offset = min(step - phase.start_step, phase.steps)
        done_epochs, in_epoch = divmod(offset, phase.steps_per_epoch)
        if done_epochs == phase.epochs:  # past the end of the plan
            return phase.start_epoch + phase.epochs - 1, phase.steps_per_epoch
        return phase.start_epoch + done_epochs, in_epoch

    def fractional_epoch(self, step: int) -> float:
        phase = self.phase_at(step)
        return phase.start_epoch + (step - phase.start_step) / phase.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """Planned LR for optimizer step `step` (phase multiplier included, plateau cuts not)."""
        phase = self.phase_at(step)
        epoch = self.fractional_epoch(step)
        ramp = self.phase_ramp(phase, epoch - phase.start_epoch)
        return self.schedule.base_lr * self.schedule.factor_at(epoch) * phase.lr_mult * ramp

    def phase_ramp(self, phase: PhasePlan, epochs_in: float) -> float:
        """Multiplier of a phase's own warm-up: linear from warmup_start_ratio to 1 over its
        `warmup_epochs`, then 1. It multiplies the schedule (whatever the cosine or step factor
        is at that epoch), so the shape of the run's schedule is kept, only its start is softened."""
        if epochs_in >= phase.warmup_epochs:
            return 1.0
        start = self.schedule.warmup_start_ratio
        return start + (1.0 - start) * epochs_in / phase.warmup_epochs

    def lr_curve(self, points: int = 400) -> list[list[float]]:
        """[[step, lr], ...] sampled evenly over the run, always including each phase start."""
        total = self.total_steps
        steps = {round(i * (total - 1) / max(points - 1, 1)) for i in range(points)}
        steps |= {p.start_step for p in self.phases if p.start_step < total}
        return [[s, self.lr_at(s)] for s in sorted(steps)]

    def to_dict(self) -> dict:
        return {
            "phases": [dict(asdict(p), steps=p.steps, end_step=p.end_step) for p in self.phases],
            "total_steps": self.total_steps,
            "planned_steps": self.planned_steps,
            "total_epochs": self.total_epochs,
            "schedule": self.schedule.name,
            "base_lr": self.schedule.base_lr,
            "lr_curve": self.lr_curve(),
        }


def phase_warmup(previous_trainable: Optional[float], trainable: float, epochs: int,
                 warmup_epochs: float, phase_warmup_epochs: Optional[float]) -> float:
    """Warm-up epochs at the start of a phase: only a phase that unfreezes more of the backbone
    than the phase before it warms up again (newly trainable weights get large gradients, and
    Adam's moments for them start at zero, so a full LR at once throws them far; the issue saw
    gradient norms of 100-160 there). The first phase has the run's own warm-up
    (schedule.warmup_epochs) instead. The length is schedule.phase_warmup_epochs, or by default
    schedule.warmup_epochs; at most half of the phase either way."""
    if previous_trainable is None or trainable <= previous_trainable:
        return 0.0
    length = warmup_epochs if phase_warmup_epochs is None else phase_warmup_epochs
    return min(float(length), epochs / 2)


def relative_step_cost(trainable: float) -> float:
    """Cost of a step relative to a fully frozen backbone, per sample.

    The forward pass always runs through the whole network; the backward pass (input and weight
    gradients, each roughly one forward's work) only runs through the trainable part.
    """
    return 1.0 + 2.0 * trainable


@dataclass
class EtaModel:
    """Estimates time left from measured per-phase throughput.

    Each phase's seconds-per-step comes from its own measurement once it has `min_steps` of them;
    before that it is extrapolated from the best-measured phase, scaled per sample and by
    `relative_step_cost` of the two phases' trainable fractions. Measurements include evaluation
    and checkpoint time, so they are what the wall clock will show. The state survives resumes.
    """

    plan: Plan
    seconds: dict[int, float] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    min_steps: int = 5

    def observe(self, phase: int, seconds: float, steps: int = 1) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.steps[phase] = self.steps.get(phase, 0) + steps

    def seconds_per_step(self, phase: int) -> Optional[float]:
        if self.steps.get(phase, 0) >= self.min_steps:
            return self.seconds[phase] / self.steps[phase]
        measured = [i for i, n in self.steps.items() if n >= self.min_steps]
        if not measured:
            return None
        ref = max(measured, key=lambda i: self.steps[i])
        ref_plan, target = self.plan.phases[ref], self.plan.phases[phase]
        per_sample_unit = (self.seconds[ref] / self.steps[ref]) / (
            ref_plan.samples_per_step * relative_step_cost(ref_plan.trainable))
        return per_sample_unit * target.samples_per_step * relative_step_cost(target.trainable)

    def phase_etas(self, step: int) -> list[Optional[float]]:
        """Seconds from now until each phase ends (0 for finished phases, None if unknown)."""
        etas: list[Optional[float]] = []
        running: Optional[float] = 0.0
        total = self.plan.total_steps
        for phase in self.plan.phases:
            end = min(phase.end_step, total)
            left = max(0, end - max(step, phase.start_step))
            rate = self.seconds_per_step(phase.index)
            if running is not None and left > 0:
                running = None if rate is None else running + left * rate
            etas.append(running)
        return etas

    def eta(self, step: int) -> Optional[float]:
        """Seconds until the run ends, or None before anything was measured."""
        return self.phase_etas(step)[-1]

    def state_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "steps": dict(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = {int(k): float(v) for k, v in state["seconds"].items()}
        self.steps = {int(k): int(v) for k, v in state["steps"].items()}
