"""Charts and metric tiles (issue 13): one tile layout per terminal size, few points drawn as few
points, the y-range on every tile, outliers clipped (and said so), and the detail view's options."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from tui import braille  # noqa: E402
from tui.model import Series  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.charts import MetricTile, compact  # noqa: E402
from tui.widgets.dashboard import tile_height  # noqa: E402


# ----------------------------------------------------------------------------- pure functions
def test_robust_range_clips_one_huge_first_value_but_never_the_newest():
    values = [40.0] + [1.0 - i * 0.01 for i in range(30)]
    lo, hi, clipped = braille.robust_range(values)
    assert clipped and hi < 2.0 and lo == pytest.approx(0.71)
    spike_last = [1.0 - i * 0.01 for i in range(30)] + [40.0]
    assert braille.robust_range(spike_last)[1] == 40.0  # the newest value stays in range


def test_robust_range_keeps_a_normal_decaying_curve_and_few_points_whole():
    curve = [0.5 + 1.8 * 0.95 ** i for i in range(200)]
    assert braille.robust_range(curve) == (min(curve), max(curve), False)
    assert braille.robust_range([50.0, 1.0, 0.9]) == (0.9, 50.0, False)  # too few to call one an outlier
    assert braille.robust_range([None, None]) == (0.0, 1.0, False)


def test_spark_rows_leave_missing_columns_blank_and_clamp_clipped_values():
    assert braille.spark([None, 0.0, None, 1.0]) == " ▁ █"
    assert braille.spark_rows([0.0, 10.0], 2, 0.0, 1.0) == [" █", "▁█"]  # 10 is beyond hi: drawn at the top
    assert braille.spark_rows([2.0, 2.0], 2) == ["  ", "██"]  # flat: half height


def test_two_points_are_two_marks_at_their_steps_not_a_ramp():
    series = Series([100, 200], [1.0, 0.5])
    columns = series.resample(10, 0, 200, interpolate=False)
    marks = [i for i, c in enumerate(columns) if c is not None]
    assert marks == [5, 9]
    assert all(c is not None for c in series.resample(10, 100, 200))  # the detail chart still joins them


def test_compact_numbers():
    assert [compact(v) for v in (0, 0.5234, 14.23, 1234.5, 0.00051, 2e6)] == \
        ["0", "0.523", "14.2", "1234", "5e-04", "2e+06"]


@pytest.mark.parametrize("size,rows", [((80, 24), 1), ((160, 48), 3), ((100, 40), 2), ((200, 30), 1)])
def test_tile_height_depends_on_the_terminal_size_only(size, rows):
    assert tile_height(*size) == rows


# ----------------------------------------------------------------------------- pilot
def tiles(app) -> list[MetricTile]:
    return [t for t in app.screen.query(MetricTile) if t.display]


def tile_layouts(app) -> set[tuple[int, int]]:
    """(tile height, lines rendered) of every shown tile."""
    return {(t.size.height, len(t.render().plain.split("\n"))) for t in tiles(app)}


async def open_run(pilot, app) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded
                   or not isinstance(app.screen, RunScreen), what="the run to load")
    await pilot.pause(0.2)
    while not isinstance(app.screen, RunScreen):  # a finished run opens on its summary
        await pilot.press("escape")
        await pilot.pause(0.1)
    await pilot.pause(0.2)


@async_test
async def test_tiles_share_one_layout_across_resizes_and_for_a_finished_run(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "done", state="finished", steps=5000, finished=True)
    app = make_app(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await open_run(pilot, app)
        assert tile_layouts(app) == {(3, 3)}
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.3)
        assert tile_layouts(app) == {(1, 1)}
        await pilot.resize_terminal(160, 48)
        await pilot.pause(0.3)
        assert tile_layouts(app) == {(3, 3)}
        assert len({t.region.height for t in tiles(app)}) == 1


@async_test
async def test_tiles_show_their_range_and_few_points_as_few_marks(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "run", state="stopped", steps=5000)
    app = make_app(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await open_run(pilot, app)
        text = app.screen.query_one("#tile-val_accuracy", MetricTile).render().plain
        head, *spark = text.split("\n")
        assert "–" in head  # the y-range, e.g. 0.439–0.768
        marks = [i for i, ch in enumerate(spark[-1]) if ch != " "]
        assert 1 < len(marks) <= 4  # four evaluations: four marks, not a full-width ramp
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.3)
        assert "–" in app.screen.query_one("#tile-train_loss_smooth", MetricTile).render().plain


@async_test
async def test_a_huge_first_validation_loss_is_clipped_and_the_tile_says_so(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "run", state="stopped", steps=5000)
    app = make_app(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await open_run(pilot, app)
        steps = [100 * i for i in range(1, 41)]
        values = [500.0] + [1.0 - i * 0.01 for i in range(39)]
        app.screen.model.series["val_loss"] = Series(steps, values)
        app.screen.refresh_widgets()
        await pilot.pause(0.2)
        head = app.screen.query_one("#tile-val_loss", MetricTile).render().plain.split("\n")[0]
        assert head.rstrip().endswith("↑") and "500" not in head
