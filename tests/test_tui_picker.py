"""The run picker: best metric and samples/s columns, sort (`o`), filter (`/`), cells that never
cut their values, 80 and 160 columns."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test  # noqa: E402

from textual.widgets import DataTable, Input  # noqa: E402

from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from trainer.run.status import matches, ordered  # noqa: E402
from tui.screens.picker import PickerScreen  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402

SIZES = [(80, 24), (160, 48)]


def run(name, state, model, best=None, rate=None, started=None, **extra) -> dict:
    info = {"name": name, "state": state, "model": model, "step": 6004, "total_steps": 18750, "phase": 1,
            "phase_name": "finetune", "eta": None, "last_checkpoint_age": 95.0, "dir": f"/runs/{name}",
            "best": best, "samples_per_s": rate, "started": started}
    return {**info, **extra}


def f1(value):
    return {"metric": "val_f1_macro", "label": "F1", "value": value, "step": 100}


def loss(value):
    return {"metric": "val_loss", "label": "loss", "value": value, "step": 100}


RUNS = [
    run("audio-b0", "running", "efficientnet_b0", f1(0.812), 212.4, started=3000.0, eta=20340.0),
    run("audio-b2", "paused", "efficientnet_b2", f1(0.9), 8.42, started=1000.0),
    run("effv2-m-4phase", "interrupted", "efficientnetv2_m", None, None, started=2000.0),
    run("mfcc-mlp", "finished", "mfcc_mlp", loss(0.034), 1500.0, started=None),
]


class Lister:
    """A run lister whose answer the test changes between refreshes."""

    def __init__(self, runs):
        self.runs = copy.deepcopy(runs)

    def __call__(self, root):
        return copy.deepcopy(self.runs)


def make(lister, interval=0.1) -> LonghaulApp:
    return LonghaulApp(None, Path("/runs"), clock=fmt.frozen_clock(tui_fakes.T0), lister=lister,
                       picker_interval=interval)


def names(app) -> list[str]:
    table = app.screen.query_one("#runs", DataTable)
    return [str(table.get_row_at(i)[0]).strip("▶ ") for i in range(table.row_count)]


def title(app) -> str:
    return str(app.screen.query_one("#picker-title").render())


async def loaded(pilot, count=len(RUNS)):
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PickerScreen)
                   and pilot.app.screen.query_one("#runs", DataTable).row_count == count, what="the runs")
    await pilot.pause(0.05)


# ----------------------------------------------------------------------------- pure parts
def test_filter_matches_name_state_or_model_case_insensitive():
    assert matches(RUNS[0], "B0") and matches(RUNS[0], "effic") and matches(RUNS[0], "RUNN")
    assert not matches(RUNS[0], "b2")
    assert [r["name"] for r in ordered(RUNS, "name", "efficientnet")] == ["audio-b0", "audio-b2", "effv2-m-4phase"]


def test_sort_orders():
    def order(sort):
        return [r["name"] for r in ordered(RUNS, sort, "")]

    assert order("started") == ["audio-b0", "effv2-m-4phase", "audio-b2", "mfcc-mlp"]  # newest first, unknown last
    assert order("name") == ["audio-b0", "audio-b2", "effv2-m-4phase", "mfcc-mlp"]
    assert order("state") == ["audio-b0", "audio-b2", "mfcc-mlp", "effv2-m-4phase"]  # running first
    # better first by each run's own monitor (a loss: lower is better); runs without one last
    assert order("best")[-1] == "effv2-m-4phase" and order("best").index("audio-b2") < order("best").index("audio-b0")
    assert order("samples/s") == ["mfcc-mlp", "audio-b0", "audio-b2", "effv2-m-4phase"]


# ----------------------------------------------------------------------------- on screen
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@async_test
async def test_best_and_samples_columns_fit_the_screen(size):
    app = make(Lister(RUNS))
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        table = app.screen.query_one("#runs", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[-2] == "best" and labels[-1] in ("samples/s", "smp/s")
        row = [str(c) for c in table.get_row_at(names(app).index("audio-b0"))]
        assert "F1 0.812" in row and "212" in row
        assert "loss 0.034" in [str(c) for c in table.get_row_at(names(app).index("mfcc-mlp"))]
        # every column is on screen: no horizontal scrolling needed to see the speed
        assert table.virtual_size.width <= table.size.width, (table.virtual_size, table.size)


@async_test
async def test_growing_cells_widen_their_column():
    """Reported: the picker cut `15m28s` to `15m28` (cells updated without resizing the column)."""
    lister = Lister([run("a", "running", "m", eta=59.0, last_checkpoint_age=5.0)])
    app = make(lister)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot, 1)
        table = app.screen.query_one("#runs", DataTable)
        lister.runs[0].update(eta=15 * 60 + 32.0, last_checkpoint_age=2 * 86400 + 3 * 3600.0, best=f1(0.5),
                              samples_per_s=1234.0)
        await wait_for(pilot, lambda: str(table.get_row_at(0)[5]) == "15m32s", what="the new ETA")
        drawn = ("15m32s", "2d03h", "F1&#160;0.500", "1234")  # (the screenshot is SVG)
        await wait_for(pilot, lambda: all(text in app.export_screenshot() for text in drawn), what="whole values")
        for key, text in (("eta", "15m32s"), ("ckpt", "2d03h"), ("best", "F1 0.500"), ("rate", "1234")):
            assert table.columns[key].content_width >= len(text), key


@async_test
async def test_o_cycles_the_sort_and_the_title_says_which():
    app = make(Lister(RUNS), interval=30)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        assert "sort: started" in title(app)
        assert names(app) == ["audio-b0", "effv2-m-4phase", "audio-b2", "mfcc-mlp"]
        await pilot.press("o")
        assert "sort: name" in title(app) and names(app) == sorted(names(app))
        await pilot.press("o", "o", "o")
        assert "sort: samples/s" in title(app) and names(app)[0] == "mfcc-mlp"
        await pilot.press("o")
        assert "sort: started" in title(app)


@async_test
async def test_the_cursor_stays_on_its_run_when_the_order_changes():
    app = make(Lister(RUNS), interval=30)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        await pilot.press("down", "down")  # audio-b2 under "started"
        await pilot.pause(0.05)
        await pilot.press("o")  # by name: audio-b2 is second
        await pilot.pause(0.05)
        table = app.screen.query_one("#runs", DataTable)
        assert table.cursor_row == 1 and str(table.get_row_at(1)[0]) == "▶ audio-b2"
        assert [str(table.get_row_at(i)[0]).startswith("▶") for i in range(4)] == [False, True, False, False]


@async_test
async def test_slash_filters_enter_keeps_escape_clears():
    app = make(Lister(RUNS), interval=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("slash")
        box = app.screen.query_one("#picker-filter", Input)
        assert box.has_focus and box.display
        await pilot.press("E", "f", "f", "i", "c", "i", "e", "n", "t", "n", "e", "t", "_", "b")  # a model
        assert sorted(names(app)) == ["audio-b0", "audio-b2"]
        assert "filter 'Efficientnet_b': 2 of 4" in title(app)
        await pilot.press("enter")  # keeps the filter, back to the list: enter does not attach yet
        assert isinstance(app.screen, PickerScreen) and app.screen.query_one("#runs").has_focus
        await pilot.pause(0.3)  # refreshes keep the filter
        assert sorted(names(app)) == ["audio-b0", "audio-b2"]
        await pilot.press("escape")
        await loaded(pilot)
        assert "filter" not in title(app) and not box.display
        await pilot.press("slash", "z", "z", "z")
        assert names(app) == [] and "No run matches 'zzz'" in str(app.screen.query_one("#picker-empty").render())
        await pilot.press("escape")
        await loaded(pilot)


@async_test
async def test_escape_is_offered_only_with_a_filter_and_enter_attaches_without_one(tmp_path, runtime_dir):
    tui_fakes.write_run_dir(tmp_path / "alpha", state="stopped")
    app = LonghaulApp(None, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), picker_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot, 1)
        assert app.screen.check_action("clear_filter", ()) is False
        await pilot.press("slash", "a")
        assert app.screen.check_action("clear_filter", ()) is True
        await pilot.press("enter", "enter")  # the first keeps the filter, the second attaches
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")


@async_test
async def test_a_resize_changes_the_columns_at_once():
    app = make(Lister(RUNS), interval=30)  # no refresh comes to help
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        table = app.screen.query_one("#runs", DataTable)
        assert "progress" in [str(c.label) for c in table.columns.values()]
        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: "progress" not in [str(c.label) for c in table.columns.values()],
                       what="the narrow columns")
        await pilot.pause(0.1)
        assert table.row_count == len(RUNS) and table.virtual_size.width <= table.size.width
        await pilot.resize_terminal(160, 48)
        await wait_for(pilot, lambda: "progress" in [str(c.label) for c in table.columns.values()],
                       what="the wide columns")


@async_test
async def test_a_queued_run_shows_its_place_and_a_held_one_says_held(tmp_path):
    from trainer.run.locate import create_run_dir
    from trainer.run.queue import enqueue
    from trainer.run.state import StateFile

    def run_dir(name):
        path = create_run_dir(tmp_path, name)
        (path / "config.yaml").write_text(f"name: {name}\n")
        return path

    dead = run_dir("dead")
    StateFile(dead).update(state="failed")
    enqueue(tmp_path, run_dir("after-dead"), after=[str(dead)])  # held: what it waits for failed
    enqueue(tmp_path, run_dir("next"))
    app = LonghaulApp(None, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), picker_interval=30)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot, 3)
        table = app.screen.query_one("#runs", DataTable)
        state = {name: str(table.get_row_at(i)[1]) for i, name in enumerate(names(app))}
        assert state == {"dead": "FAILED", "after-dead": "HELD", "next": "QUEUED #2"}
