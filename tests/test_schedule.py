"""Plan layout, LR schedules against hand-worked values, and the ETA model."""
import math
from types import SimpleNamespace as NS

import pytest

from trainer.config import RunConfig
from trainer.schedule import EtaModel, LrSchedule, Plan, relative_step_cost


def cfg(**kw):
    raw = {"phases": [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 3, "batch_size": 8, "lr_mult": 0.5}],
           "optim": {"batch_size": 4, "lr": 1.0}, "schedule": {"name": "constant"}}
    raw.update(kw)
    return RunConfig.model_validate(raw)


def test_plan_layout_with_batch_override():
    plan = Plan.from_config(cfg(), n_train=41)
    a, b = plan.phases
    assert (a.steps_per_epoch, a.steps, a.start_step) == (10, 20, 0)   # 41 // 4
    assert (b.steps_per_epoch, b.steps, b.start_step, b.start_epoch) == (5, 15, 20, 2)  # 41 // 8
    assert plan.total_steps == 35 and plan.total_epochs == 5
    assert plan.epoch_at(0) == (0, 0) and plan.epoch_at(13) == (1, 3) and plan.epoch_at(27) == (3, 2)
    assert plan.phase_at(19).name == "a" and plan.phase_at(20).name == "b"
    assert plan.lr_at(0) == 1.0 and plan.lr_at(20) == 0.5


def test_max_steps_cuts_total():
    assert Plan.from_config(cfg(max_steps=7), n_train=41).total_steps == 7


def test_warmup_then_cosine_hand_worked():
    s = LrSchedule("cosine", 1.0, total_epochs=10, warmup_epochs=2, warmup_start_ratio=0.0, min_lr_ratio=0.0)
    assert s.factor_at(0) == 0.0 and s.factor_at(1) == pytest.approx(0.5)
    assert s.factor_at(2) == pytest.approx(1.0)
    assert s.factor_at(6) == pytest.approx(0.5)          # halfway through [2, 10): cos(pi/2)
    assert s.factor_at(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_cosine_restarts_jump_back_up():
    s = LrSchedule("cosine", 1.0, total_epochs=80, warmup_epochs=8, restarts=(25, 50, 70), min_lr_ratio=0.0)
    assert s.factor_at(24.999) < 0.01
    assert s.factor_at(25) == pytest.approx(1.0) and s.factor_at(50) == pytest.approx(1.0)
    assert s.factor_at(60) == pytest.approx(0.5)          # middle of [50, 70)
    assert s.factor_at(75) == pytest.approx(0.5)          # middle of [70, 80)


def test_step_schedule():
    s = LrSchedule("step", 1.0, total_epochs=30, step_epochs=10, step_gamma=0.1)
    assert [s.factor_at(e) for e in (0, 9.9, 10, 25)] == pytest.approx([1, 1, 0.1, 0.01])


def test_lr_curve_covers_run_and_phase_starts():
    plan = Plan.from_config(cfg(), n_train=41)
    curve = plan.lr_curve(points=5)
    steps = [s for s, _ in curve]
    assert steps[0] == 0 and steps[-1] == 34 and 20 in steps
    assert dict(curve)[20] == 0.5


def unfreezing(**schedule):
    """head (frozen, 2 epochs) -> full (4 epochs) at 10 steps per epoch, constant LR 1.0."""
    raw = {"phases": [{"name": "head", "epochs": 2, "trainable": 0.0},
                      {"name": "full", "epochs": 4, "trainable": 1.0}],
           "optim": {"batch_size": 10, "lr": 1.0},
           "schedule": {"name": "constant", "warmup_epochs": 1, "warmup_start_ratio": 0.0, **schedule}}
    return Plan.from_config(RunConfig.model_validate(raw), n_train=100)


def test_warmup_restarts_at_an_unfreezing_phase():
    plan = unfreezing()
    assert [p.warmup_epochs for p in plan.phases] == [0.0, 1.0]    # default: schedule.warmup_epochs
    assert [plan.lr_at(s) for s in (0, 5, 10, 19)] == pytest.approx([0.0, 0.5, 1.0, 1.0])  # the run's own
    assert [plan.lr_at(s) for s in (20, 25, 30, 59)] == pytest.approx([0.0, 0.5, 1.0, 1.0])  # again at "full"
    assert plan.lr_at(20) == plan.lr_at(20)  # a pure function of the step (resume asks again)


def test_phase_warmup_length_is_set_capped_or_off():
    assert unfreezing(phase_warmup_epochs=2).lr_at(30) == pytest.approx(0.5)
    assert unfreezing(phase_warmup_epochs=10).phases[1].warmup_epochs == 2.0   # at most half the phase
    assert unfreezing(phase_warmup_epochs=0).lr_at(20) == 1.0


def test_phase_warmup_multiplies_the_schedule_and_skips_phases_that_unfreeze_nothing():
    plan = unfreezing(name="cosine", min_lr_ratio=0.0)
    base = plan.schedule.factor_at(2.5)
    assert plan.lr_at(25) == pytest.approx(0.5 * base)             # half-way up the ramp, times the cosine
    same = Plan.from_config(cfg(schedule={"name": "constant", "warmup_epochs": 1}), n_train=41)
    assert [p.warmup_epochs for p in same.phases] == [0.0, 0.0]    # a -> b both train everything


def test_eta_measured_and_extrapolated():
    raw = {"phases": [{"name": "head", "epochs": 1, "trainable": 0.0},
                      {"name": "full", "epochs": 1, "trainable": 1.0}],
           "optim": {"batch_size": 10}}
    plan = Plan.from_config(RunConfig.model_validate(raw), n_train=100)   # 10 steps per phase
    eta = EtaModel(plan, min_steps=5)
    assert eta.eta(0) is None
    eta.observe(0, seconds=5.0, steps=5)   # 1 s/step frozen
    # phase 0: 5 steps left at 1 s; phase 1: 10 steps at 1 s * cost(1)/cost(0) = 3 s
    assert eta.phase_etas(5) == [pytest.approx(5.0), pytest.approx(35.0)]
    eta.observe(1, seconds=10.0, steps=5)  # once measured, its own rate (2 s/step) wins
    assert eta.phase_etas(15) == [0.0, pytest.approx(10.0)]
    restored = EtaModel(plan)
    restored.load_state_dict(eta.state_dict())
    assert restored.phase_etas(15) == eta.phase_etas(15)
    assert relative_step_cost(0.5) == 2.0
