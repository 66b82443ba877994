"""Threshold alerts: each starts after `confirm` readings past its line and ends after as many
past a calmer one (no flapping); throughput against the phase's median; loss spikes; and a daemon
that raises them from its own system samples and the fake trainer's rates."""
import pytest

from tests.daemon_helpers import make_run, read_events, wait_exit
from trainer.config import AlertsConfig
from trainer.thresholds import MIN_LOSSES, MIN_RATES, Hysteresis, ThresholdWatch

GB = 10**9


def sample(**values) -> dict:
    base = {"cpu_temp": 50.0, "mem_total": 16 * GB, "mem_used": 4 * GB, "swap_total": 4 * GB, "swap_used": 0,
            "disk_free": 100 * GB}
    return {**base, **values}


def feed(watch: ThresholdWatch, samples: list[dict]) -> list[tuple[str, str]]:
    return [(a.data["what"], a.level) for s in samples for a in watch.system(s)]


def test_hysteresis_needs_confirm_readings_in_a_row_each_way():
    gauge = Hysteresis(3)
    assert [gauge.feed(True, False) for _ in range(3)] == [None, None, True]
    assert gauge.feed(False, True) is None and gauge.feed(True, False) is None  # streak broken
    assert [gauge.feed(False, True) for _ in range(3)] == [None, None, False]


def test_a_temperature_hovering_at_the_line_alerts_once_and_ends_only_well_below():
    watch = ThresholdWatch(AlertsConfig(cpu_temp_c=90.0, confirm=2))
    hovering = [sample(cpu_temp=t) for t in (91, 91, 89, 91, 88, 90, 89, 91)]
    assert feed(watch, hovering) == [("cpu_temperature", "warning")]
    assert feed(watch, [sample(cpu_temp=86), sample(cpu_temp=84), sample(cpu_temp=84)]) == [("cpu_temperature", "info")]


@pytest.mark.parametrize("values, what", [
    ({"mem_used": int(15.5 * GB)}, "memory"),
    ({"swap_used": 3 * GB}, "swap"),
    ({"disk_free": 2 * GB}, "disk_space"),
])
def test_memory_swap_and_disk_alerts(values, what):
    watch = ThresholdWatch(AlertsConfig(confirm=1))
    alerts = watch.system(sample(**values))
    assert [(a.data["what"], a.level) for a in alerts] == [(what, "warning")]
    assert "alert at" in alerts[0].message
    assert [(a.data["what"], a.level) for a in watch.system(sample())] == [(what, "info")]


def test_missing_readings_and_switched_off_thresholds_say_nothing():
    watch = ThresholdWatch(AlertsConfig(confirm=1, cpu_temp_c=None))
    assert watch.system(sample(cpu_temp=120.0, swap_total=0, swap_used=0, disk_free=None)) == []


def rates(watch: ThresholdWatch, rate: float, samples: int, phase: int = 0, explained: bool = False) -> list:
    out = []
    for _ in range(samples):
        for _ in range(3):
            watch.step_rate(rate, phase)
        out += [(a.data["what"], a.level) for a in watch.system(sample(), explained)]
    return out


def test_throughput_below_a_share_of_the_phase_median_for_a_while():
    watch = ThresholdWatch(AlertsConfig(throughput_share=0.5, throughput_seconds=10.0, confirm=1), system_interval=2.0)
    assert rates(watch, 100.0, MIN_RATES + 5) == []
    assert rates(watch, 45.0, 4) == []  # 8 s: not yet
    assert rates(watch, 45.0, 1) == [("throughput", "warning")]
    assert rates(watch, 70.0, 10) == []  # between the lines: still on
    assert rates(watch, 80.0, 5) == [("throughput", "info")]
    # the slow spell did not become the phase's normal
    assert rates(watch, 45.0, 5) == [("throughput", "warning")]


def test_a_new_phase_has_its_own_median_and_contention_explains_a_slowdown():
    watch = ThresholdWatch(AlertsConfig(throughput_seconds=2.0, confirm=1), system_interval=2.0)
    rates(watch, 100.0, MIN_RATES + 5)
    assert rates(watch, 20.0, MIN_RATES + 5, phase=1) == []  # a slower phase, learnt anew
    assert rates(watch, 5.0, 3, phase=1, explained=True) == []
    assert rates(watch, 5.0, 1, phase=1) == [("throughput", "warning")]


def test_paused_or_evaluating_samples_are_not_judged():
    watch = ThresholdWatch(AlertsConfig(throughput_seconds=2.0, confirm=1), system_interval=2.0)
    rates(watch, 100.0, MIN_RATES + 5)
    assert [watch.system(sample()) for _ in range(20)] == [[]] * 20  # no steps: no rates, no alert


def test_a_loss_spike_alerts_after_confirm_records_and_ends_below_the_midpoint():
    watch = ThresholdWatch(AlertsConfig(loss_spike_factor=3.0, confirm=2))

    def losses(values):
        out = []
        for i, loss in enumerate(values):
            alert = watch.record({"kind": "train", "step": i, "train_loss": loss})
            out += [(alert.data["what"], alert.level)] if alert else []
        return out

    assert losses([1.0] * MIN_LOSSES) == []
    assert losses([3.5, 1.0, 3.5, float("nan"), 1.0]) == []  # single spikes, and NaN is nan_loss's
    assert losses([3.5, 3.6]) == [("loss_spike", "warning")]
    assert losses([2.5, 1.9, 1.8]) == [("loss_spike", "info")]
    assert watch.record({"kind": "eval", "step": 1, "val_loss": 100.0}) is None


def test_a_daemon_raises_threshold_alerts_from_its_samples_and_the_trainer_rates(tmp_path, runtime_dir, launcher):
    fake = {"steps": 300, "step_time": 0.02, "log_every": 0, "rates": [[0, 100], [150, 10]]}
    alerts = {"disk_free_gb": 10**9, "throughput_seconds": 1.0, "confirm": 1}  # no disk is this big
    run_dir = make_run(tmp_path / "runs", "thresholds", fake=fake,
                       daemon_cfg={"system_interval": 0.1}, sections={"alerts": alerts})
    pid = launcher.start(run_dir)
    wait_exit(pid, 60)
    events = [e for e in read_events(run_dir) if e["kind"] == "alert"]
    disk = [e for e in events if e["data"]["what"] == "disk_space"]
    assert disk and disk[0]["level"] == "warning" and "GB free under the run directory" in disk[0]["message"]
    slow = [e for e in events if e["data"]["what"] == "throughput"]
    assert slow and slow[0]["level"] == "warning" and slow[0]["data"]["samples_per_s"] == 10.0
