"""torch.compile where it pays (`model.compile: auto|true|false`, issue 14).

Compiling costs a minute or two once (bench/compile.py: 64 s cold for the quickstart's
EfficientNet-B0 on 2 cores, 92 s for B2) and then makes each step faster or not, depending on the
model and its input: the quickstart's B0 on small spectrograms gains 6-11%, B2 on the audio
preset's large ones nothing. So `auto` does not guess. A run too short to repay a trial (planned
training under AUTO_MIN_FLOP: the forward FLOPs of one sample, counted at set-up with
torch.utils.flop_counter, times the samples of every phase, times its relative step cost) stays
eager. A longer one measures, at the start of each phase: TRIAL_STEPS eager steps, then the
compiled model's (after its compile and warm-up), and trains the phase compiled only if that was
at least MIN_GAIN faster. The decisions are part of the loop state, so a resume keeps them;
numerics differ between eager and compiled steps, so a run that must be bit-identical to another
sets true or false.

The compiled code is cached on disk (inductor's FX graph and AOTAutograd caches) in a per-user
directory that survives reboots (not /tmp, torch's default), so a resume or a phase change
recompiles from the cache in seconds instead of minutes. Thread count: inductor bakes the thread
count into its C++ kernels and leaves it out of its cache key, so a run that follows the load
(trainer.threads) gets kernels that read the current count at run time, and a pinned run gets
the count it pins, which is then part of the cache key.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch._dynamo.exc
from torch.utils.flop_counter import FlopCounterMode

from trainer.schedule import Plan, relative_step_cost

AUTO_MIN_FLOP = 1e15
"""`auto` measures compiled against eager only in a run whose planned training is at least this
many FLOPs: about 5 hours of EfficientNet-B0 on a 2-core box at its ~50 GFLOP/s, where a trial of
a few minutes is noise; the quickstart plans about 4e12 and stays eager without a trial."""

TRIAL_WARMUP = 2
"""Steps of each kind left out of a trial's timing (after the compile, for the compiled kind)."""
TRIAL_STEPS = 6
"""Steps of each kind timed in a trial (the medians are compared)."""
MIN_GAIN = 1.05
"""A phase trains compiled only if its compiled steps took at most 1/MIN_GAIN of the eager ones."""

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class CompileChoice:
    """How the training steps run, and why (recorded in the run's plan.json): `mode` "eager",
    "compiled", or "measure" (auto on a long run: each phase measured, then decided)."""

    mode: str
    setting: str        # the config's value: "auto", "true" or "false"
    train_flop: float   # planned training FLOPs (0 when not counted)
    reason: str

    def to_dict(self) -> dict:
        return {"mode": self.mode, "setting": self.setting, "train_flop": self.train_flop, "reason": self.reason}


def forward_flop_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one sample's forward pass (multiply-adds count 2), counted on a zero input in
    eval mode without gradients: nothing the run depends on (batch-norm statistics, the RNG,
    gradients) changes. The caller puts the model back in its training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, *input_shape)))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def planned_train_flop(plan: Plan, forward_flop: float) -> float:
    """Training FLOPs of the whole plan (cut by max_steps): each phase's samples times a forward
    pass times relative_step_cost (the backward pass runs through the trainable part only)."""
    total = 0.0
    for phase in plan.phases:
        steps = max(0, min(phase.end_step, plan.total_steps) - phase.start_step)
        total += steps * phase.samples_per_step * forward_flop * relative_step_cost(phase.trainable)
    return total


def choose(setting: bool | str, plan: Plan, model: torch.nn.Module, input_shape: tuple[int, ...],
           group: bool = False) -> CompileChoice:
    """The compile mode for `model.compile` = setting (True, False or "auto"). A data-parallel
    run (`group`) trains eager: a measured choice could differ between its ranks."""
    setting = str(setting).lower()
    if group:
        return CompileChoice("eager", setting, 0.0, "data-parallel runs train eager (model.compile is not used)")
    if setting == "false":
        return CompileChoice("eager", setting, 0.0, "model.compile is false")
    flop = planned_train_flop(plan, forward_flop_per_sample(model, input_shape))
    if setting == "true":
        return CompileChoice("compiled", setting, flop, "model.compile is true")
    if flop >= AUTO_MIN_FLOP:
        return CompileChoice("measure", setting, flop, f"auto: planned training {flop:.2g} FLOP >= "
                                                       f"{AUTO_MIN_FLOP:.0g}: each phase measures eager and compiled steps")
    return CompileChoice("eager", setting, flop, f"auto: planned training {flop:.2g} FLOP < {AUTO_MIN_FLOP:.0g}: "
                                                 "too short to repay a compile")


class CompileTrial:
    """One phase's measurement: TRIAL_WARMUP + TRIAL_STEPS eager steps, then compiled ones until
    TRIAL_STEPS of them were timed after TRIAL_WARMUP (steps that compiled are never timed).
    Pure: the caller says how long each step took."""

    def __init__(self, phase: int, threads: int):
        self.phase = phase
        self.threads = threads   # timings at another thread count are not comparable
        self.eager: list[float] = []
        self.compiled: list[float] = []
        self._seen = {"eager": 0, "compiled": 0}

    def compiled_next(self) -> bool:
        return self._seen["eager"] >= TRIAL_WARMUP + TRIAL_STEPS

    def record(self, seconds: float, compiled_now: bool) -> None:
        """A step of the kind compiled_next() named took `seconds`; `compiled_now`: it compiled."""
        kind = "compiled" if self.compiled_next() else "eager"
        if compiled_now:
            return
        self._seen[kind] += 1
        if self._seen[kind] > TRIAL_WARMUP:
            getattr(self, kind).append(seconds)

    @property
    def done(self) -> bool:
        return len(self.compiled) >= TRIAL_STEPS

    def verdict(self) -> tuple[bool, float, float]:
        """(train compiled?, median eager step seconds, median compiled step seconds)."""
        eager, compiled = statistics.median(self.eager), statistics.median(self.compiled)
        return eager >= compiled * MIN_GAIN, eager, compiled


def cache_dir() -> Path:
    """Where compiled code is kept: $TORCHINDUCTOR_CACHE_DIR when the user set it, else
    $XDG_CACHE_HOME/longhaul/inductor (~/.cache/longhaul/inductor): torch's default is under
    /tmp, which many systems empty at boot, the moment a resume needs it most."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    own = os.environ.get(CACHE_ENV)
    if own and own != default_cache_dir():  # importing timm sets torch's default in the environment
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "longhaul" / "inductor"


def compile_model(model: torch.nn.Module, threads: int, follows_load: bool) -> torch.nn.Module:
    """torch.compile(model) with the on-disk cache in cache_dir() and kernels that use the
    thread count the run uses (see the module's docstring)."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    os.environ[CACHE_ENV] = str(cache_dir())
    # Phases freeze and unfreeze parameters with requires_grad_, which leaves their module's
    # __dict__ as it was: with this skip on, dynamo kept the frozen phase's graph and the
    # unfrozen backbone got no gradients (tests/test_compile.py). Off: one recompile per change.
    dynamo.skip_tensor_guards_with_matching_dict_tags = False
    if follows_load:
        inductor.cpp.dynamic_threads = True
    else:
        inductor.cpp.threads = threads
    return torch.compile(model)


class TrainingForward:
    """The model's forward pass for training steps: eager or compiled as the choice says, per
    phase in "measure" mode (`decisions`, phase index -> compiled, lives in the loop state so that
    checkpoints keep it). Says what it does: a `setup` stage `compile` before a compiled run's
    first step; `compile` events after each step that compiled (how long, how much came from the
    on-disk cache), when a phase's trial begins and when it is decided."""

    def __init__(self, choice: CompileChoice, model: torch.nn.Module, threads: int, follows_load: bool,
                 event: Callable[..., None], config_source: str = "config"):
        self.choice = choice
        self.config_source = config_source  # named by the error when `true` cannot compile
        self.model = model
        self.event = event
        self.compiled = compile_model(model, threads, follows_load) if choice.mode != "eager" else None
        self.use_compiled = choice.mode == "compiled"
        self.trial: Optional[CompileTrial] = None
        self._before: Optional[dict] = None
        self._started = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_compiled:
            return self.model(x)
        try:
            return self.compiled(x)
        except torch._dynamo.exc.TorchDynamoException as exc:  # no C++ compiler; a model dynamo cannot trace
            # only compile failures: any other error of a compiled step is the run's own crash
            self._compile_failed(exc)
            return self.model(x)

    def _compile_failed(self, exc: Exception) -> None:
        from trainer.config import ConfigError

        why = f"torch.compile failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        if self.choice.mode == "compiled":
            raise ConfigError(self.config_source, [("model.compile", f"true, but {why} (inductor needs a C++ "
                                                 "compiler such as g++); set it to auto or false")]) from exc
        self.choice = CompileChoice("eager", self.choice.setting, self.choice.train_flop, f"auto: {why}")
        self.compiled, self.use_compiled, self.trial = None, False, None
        self.event("alert", "warning", f"{why}: the run trains eager", what="compile_failed")

    def announce(self) -> None:
        if self.choice.mode == "compiled":
            self.event("setup", "info", "compiling the model (minutes the first time)",
                       stage="compile", started=time.time(), cache_dir=str(cache_dir()))

    def begin_step(self, phase, decisions: dict) -> None:
        if self.choice.mode == "measure":
            self.use_compiled = self._measured_choice(phase, decisions)
        if self.compiled is not None:
            self._before = self._counts()
            self._started = time.perf_counter()

    def _measured_choice(self, phase, decisions: dict) -> bool:
        if phase.index in decisions:
            return decisions[phase.index]
        threads = torch.get_num_threads()
        new_phase = self.trial is None or self.trial.phase != phase.index
        if new_phase:
            self.event("compile", "info", f"phase {phase.index + 1} ({phase.name}): timing {TRIAL_STEPS} eager steps, "
                       f"then {TRIAL_STEPS} compiled ones, to train it the faster way", what="trial", phase=phase.index)
        if new_phase or self.trial.threads != threads:
            self.trial = CompileTrial(phase.index, threads)
        return self.trial.compiled_next()

    def end_step(self, phase, step: int, decisions: dict) -> bool:
        """After the step `step` (in `phase`): True when it compiled something."""
        if self._before is None or self.compiled is None:
            return False
        seconds = time.perf_counter() - self._started
        after = self._counts()
        compiled_now = after["graphs"] != self._before["graphs"]
        if compiled_now:
            counts = {k: after[k] - self._before[k] for k in after}
            self.event("compile", "info", f"model compiled in {seconds:.1f} s for phase {phase.index + 1} "
                       f"({phase.name}): {counts['cache_hits']} kernels from the cache, {counts['cache_misses']} "
                       "compiled", what="compiled", seconds=round(seconds, 2), phase=phase.index, step=step,
                       cache_dir=str(cache_dir()), **counts)
        trial = self.trial
        if self.choice.mode == "measure" and trial is not None and phase.index not in decisions:
            trial.record(seconds, compiled_now)
            if trial.done:
                self._decide(phase, trial, decisions)
        return compiled_now

    def _decide(self, phase, trial: CompileTrial, decisions: dict) -> None:
        compiled, eager_s, compiled_s = trial.verdict()
        decisions[phase.index] = compiled
        way = "compiled" if compiled else "eager"
        self.event("compile", "info", f"phase {phase.index + 1} ({phase.name}) trains {way}: compiled steps "
                   f"{compiled_s:.3f} s, eager {eager_s:.3f} s ({eager_s / compiled_s:.2f}x)", what="decided",
                   phase=phase.index, compiled=compiled, eager_step_s=round(eager_s, 4),
                   compiled_step_s=round(compiled_s, 4))
        self.trial = None

    @staticmethod
    def _counts() -> dict:
        from torch._dynamo.utils import counters

        return {"graphs": counters["stats"]["unique_graphs"],
                "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
                "cache_misses": counters["inductor"]["fxgraph_cache_miss"]}
