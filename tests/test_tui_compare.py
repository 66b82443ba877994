"""The run picker's comparison: Space marks runs, `c` opens the comparison screen, a metric of
every marked run overlaid in one chart (step or training-time axis) over a compact table.

The runs are written here with the history writer (deterministic curves, a fixed clock): two
runs that differ in speed, loss and two config keys, and a third that is never marked.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from pilot import async_test  # noqa: E402
from tui_fakes import T0, wait_for  # noqa: E402

from trainer import history  # noqa: E402
from tui import braille, fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.model import Series  # noqa: E402
from tui.screens.compare import CompareScreen, by_time, by_wall, common_metrics  # noqa: E402
from tui.screens.picker import PickerScreen  # noqa: E402
from tui.widgets.overlay_chart import OverlayChart  # noqa: E402

STEPS, EVAL_EVERY = 1500, 100
PAUSE = 3600.0  # b0-wide's pause: on the wall-clock axis only


def write_run(root: Path, name: str, *, seconds_per_step: float, floor: float, tau: float, seed: int,
              hidden: int, paused: float = 0.0) -> Path:
    """A finished run of STEPS steps: losses decaying to `floor` (validation over `tau` steps),
    `seconds_per_step` of training, `paused` seconds of pause halfway (the clock moves, the
    training time does not)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    plan = tui_fakes.demo_plan(steps_per_epoch=STEPS // 15)
    best = None
    with history.HistoryWriter(run_dir / "history.msgpack") as writer:
        for step in range(1, STEPS + 1):
            loss = floor + 2.0 * math.exp(-step / 300) + 0.05 * math.sin(step / 7)
            clock = T0 - (STEPS - step) * seconds_per_step - (paused if step <= STEPS // 2 else 0.0)
            writer.append({"kind": "train", "step": step, "epoch": plan.epoch_at(step - 1)[0],
                           "phase": plan.phase_at(step - 1).index, "time": clock,
                           "elapsed": step * seconds_per_step, "train_loss": loss, "lr": plan.lr_at(step - 1),
                           "samples_per_s": 32 / seconds_per_step})
            if step % EVAL_EVERY == 0:
                f1 = (1 - math.exp(-step / tau)) * (0.9 - floor / 4)
                best = {"step": step, "val_loss": floor + 1.5 * math.exp(-step / tau), "val_f1_macro": f1,
                        "val_accuracy": f1 + 0.02}
                writer.append({"kind": "eval", "epoch": 0, "phase": plan.phase_at(step - 1).index, "time": T0, **best})
    config = {**tui_fakes.config_summary(), "parameters": 4_017_220 + hidden}
    (run_dir / "plan.json").write_text(json.dumps({"plan": plan.to_dict(), "config": config}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "demo", "seed": seed,
                                                         "model": {"name": "efficientnet_b0", "options": {"hidden": [hidden]}}}))
    (run_dir / "state.json").write_text(json.dumps({
        "name": name, "state": "finished", "step": STEPS, "total_steps": plan.total_steps, "phase": 2,
        "phase_name": "polish", "elapsed": STEPS * seconds_per_step, "best_eval": best, "last_eval": best,
        "updated": T0}))
    return run_dir


@pytest.fixture
def runs(tmp_path) -> Path:
    write_run(tmp_path, "b0-fast", seconds_per_step=1.2, floor=0.30, tau=250, seed=1, hidden=128)
    write_run(tmp_path, "b0-wide", seconds_per_step=2.0, floor=0.22, tau=500, seed=2, hidden=512, paused=PAUSE)
    write_run(tmp_path, "zz-other", seconds_per_step=1.0, floor=0.5, tau=300, seed=3, hidden=64)
    return tmp_path


def picker_app(root: Path) -> LonghaulApp:
    return LonghaulApp(None, root, clock=fmt.frozen_clock(T0), picker_interval=3600.0)


async def open_comparison(pilot) -> CompareScreen:
    """Sort by name, mark the first two runs, press c; wait for the chart."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen) and app.screen.query_one("#runs").row_count == 3,
                   what="the runs")
    while app.screen.sort != "name":
        await pilot.press("o")
    while app.screen.query_one("#runs").cursor_row > 0:  # the cursor stays on its run when sorted
        await pilot.press("up")
    await pilot.press("space", "down", "space", "c")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None
                   and app.screen.query_one(OverlayChart).lines, what="the comparison")
    await pilot.pause(0.2)
    return app.screen


def test_overlay_snapshot(snap_compare, runs):
    assert snap_compare(picker_app(runs), terminal_size=(100, 34), run_before=open_comparison)


def test_overlay_by_training_time_snapshot(snap_compare, runs):
    async def by_time(pilot):
        await open_comparison(pilot)
        await pilot.press("x")
        await pilot.pause(0.2)

    assert snap_compare(picker_app(runs), terminal_size=(100, 34), run_before=by_time)


@async_test
async def test_marking_runs_and_opening_the_comparison(runs):
    app = picker_app(runs)
    async with app.run_test(size=(100, 34)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen) and app.screen.query_one("#runs").row_count == 3,
                       what="the runs")
        picker = app.screen
        await pilot.press("c")  # nothing marked: a notice, no screen
        await pilot.pause(0.1)
        assert app.screen is picker and any("Mark two or more" in n.message for n in app._notifications)
        await pilot.press("space")
        key = picker._cursor_key
        assert list(picker.marked) == [key] and "1 marked" in picker.title_text()
        cell = picker.query_one("#runs").get_cell(key, "run")
        assert cell.plain.startswith("▶✓")
        await pilot.press("space")  # unmarks
        assert not picker.marked and picker.query_one("#runs").get_cell(key, "run").plain.startswith("▶ ")
        screen = await open_comparison(pilot)
        assert [p.name for p in screen.run_dirs] == ["b0-fast", "b0-wide"]
        chart = screen.query_one(OverlayChart)
        assert [name for name, _ in chart.lines] == ["b0-fast", "b0-wide"]
        assert screen.metric == "val_f1_macro" and chart.title == "val_f1_macro by step"
        await pilot.press("m")
        assert screen.metric == "val_loss"
        await pilot.press("x")
        assert chart.title == "val_loss by training time"
        # by time, the slower run's last point is at its own training seconds
        assert chart.lines[1][1].steps[-1] == pytest.approx(STEPS * 2.0, rel=0.01)
        assert chart.lines[0][1].steps[-1] == pytest.approx(STEPS * 1.2, rel=0.01)
        await pilot.press("x")
        assert chart.title == "val_loss by wall time"
        # by the clock since each run's first step, b0-wide's hour of pause counts too
        assert chart.lines[1][1].steps[-1] == pytest.approx(STEPS * 2.0 + PAUSE, rel=0.01)
        assert chart.lines[0][1].steps[-1] == pytest.approx(STEPS * 1.2, rel=0.01)
        await pilot.press("x")
        assert chart.title == "val_loss by step"
        await pilot.press("escape")
        assert app.screen is picker


def test_common_metrics_put_the_monitor_first():
    series = [{"val_loss": {}, "val_f1_macro": {}, "lr": {}, "elapsed": {}, "time": {}, "train_loss_smooth": {}},
              {"val_loss": {}, "val_f1_macro": {}, "elapsed": {}, "time": {}, "train_loss_smooth": {}, "grad_norm": {}}]
    assert common_metrics(series, ["val_f1_macro", "val_f1_macro"]) == ["val_f1_macro", "val_loss", "train_loss_smooth"]


def test_by_time_maps_steps_through_the_elapsed_series():
    wire = {"step": [10, 20, 30], "value": [1.0, 2.0, 3.0], "min": [1.0, 2.0, 3.0], "max": [1.0, 2.0, 3.0]}
    elapsed = {"step": [10, 20, 30], "value": [4.0, 9.0, 14.0], "min": [1.0, 6.0, 11.0], "max": [5.0, 10.0, 15.0]}
    assert by_time(wire, elapsed).steps == [5.0, 10.0, 15.0]
    assert by_time(wire, None) is None


def test_by_wall_maps_steps_through_the_clock_from_the_first_record():
    wire = {"step": [10, 20, 30], "value": [1.0, 2.0, 3.0], "min": [1.0, 2.0, 3.0], "max": [1.0, 2.0, 3.0]}
    clock = {"step": [10, 20, 30], "value": [1e9 + 2, 1e9 + 7, 1e9 + 100], "min": [1e9, 1e9 + 5, 1e9 + 98],
             "max": [1e9 + 4, 1e9 + 9, 1e9 + 102]}
    assert by_wall(wire, clock).steps == [4.0, 9.0, 102.0]
    assert by_wall(wire, None) is None


def test_plot_lines_keeps_both_lines_and_numbers_their_ends():
    up = [(float(v), float(v), float(v)) for v in range(8)]
    down = [(float(7 - v), float(7 - v), float(7 - v)) for v in range(8)]
    rows = braille.plot_lines([up, down], 2, 0.0, 7.0)
    kinds = {kind for row in rows for _, kind in row}
    assert kinds >= {"line0", "line1"}
    assert rows[0][3] == ("1", "line0") and rows[1][3] == ("2", "line1")  # the ends: top right, bottom right


def test_overlay_chart_signature_ignores_an_unchanged_series():
    chart = OverlayChart()
    one = Series([1, 2], [0.5, 0.4])
    chart.set_lines([("a", one), ("b", None)])
    version = chart.version
    chart.set_lines([("a", one), ("b", None)])
    assert chart.version == version and chart.data_bounds() == (1, 2)
