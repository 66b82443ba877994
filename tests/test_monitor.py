"""trainer.monitor: the one definition of a better evaluation, and the places that must agree on it."""
from __future__ import annotations

import math

import pytest

from trainer.history import SeriesSet
from trainer.monitor import Monitor, direction_of


def test_direction_follows_the_metric():
    assert direction_of("val_loss") == "min" and direction_of("train_loss") == "min"
    assert direction_of("val_f1_macro") == "max" and Monitor.of("val_loss").mode == "min"
    assert Monitor.of("val_loss", "max").mode == "max"


def test_better_needs_more_than_min_delta_in_the_right_direction():
    up, down = Monitor("m", "max", 0.01), Monitor("m", "min", 0.01)
    assert up.better(0.5, None) and down.better(0.5, None)
    assert up.better(0.52, 0.5) and not up.better(0.505, 0.5) and not up.better(0.5, 0.5)
    assert down.better(0.48, 0.5) and not down.better(0.495, 0.5)
    assert up.exact().better(0.505, 0.5)


@pytest.mark.parametrize("value", [math.nan, math.inf, None, True, "0.9"])
def test_only_finite_numbers_can_be_best(value):
    assert not Monitor().better(value, None) and not Monitor().better(value, 0.1)


def test_bad_mode_or_delta_is_refused():
    with pytest.raises(ValueError, match="mode"):
        Monitor(mode="best")
    with pytest.raises(ValueError, match="min_delta"):
        Monitor(min_delta=-1.0)


def test_best_record_is_the_earliest_of_a_tie_and_skips_unusable_values():
    records = [{"m": 0.5}, {"m": math.nan}, {"m": 0.7}, {}, {"m": 0.7}, {"m": 0.705}]
    assert Monitor("m", "max").best(records) is records[5]
    assert Monitor("m", "max").best(records[:5]) is records[2]
    assert Monitor("m", "max", 0.01).best(records) is records[2]
    assert Monitor("m", "min").best(records) is records[0]
    assert Monitor("m").best([{}, None]) is None


def test_history_best_eval_honours_min_delta_like_the_engine():
    """With min_delta the snapshot's best evaluation is the engine's best.pt evaluation."""
    series = SeriesSet(Monitor("val_f1_macro", "max", 0.01))
    for step, f1 in ((10, 0.80), (20, 0.805), (30, 0.82)):
        series.feed({"kind": "eval", "step": step, "val_f1_macro": f1})
        if step == 20:
            assert series.best_eval["step"] == 10
    assert series.best_eval["step"] == 30
