"""Charts and metric tiles (issue 13): one tile layout per terminal size, few points drawn as few
points, the y-range on every tile, outliers clipped (and said so), and the detail view's options."""
from __future__ import annotations

import re
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
from tui.widgets.charts import MetricTile, compact, compact_percent  # noqa: E402
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
    assert compact_percent(0.0687) == "6.87%"
    assert [compact(v) for v in (0, 0.5234, 14.23, 1234.5, 0.00051, 2e6, 0.0015, 5.2e-05)] == \
        ["0", "0.523", "14.2", "1234", "0.00051", "2e+06", "0.0015", "5.2e-05"]  # seen: 1e-03 beside 0.0015


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
        await pilot.press("2")  # resized while the dashboard is hidden
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.3)
        await pilot.press("1")
        await pilot.pause(0.3)
        assert tile_layouts(app) == {(1, 1)}


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


# ----------------------------------------------------------------------------- detail view
from tui.widgets.charts import LineChart  # noqa: E402
from tui.widgets.dashboard import Dashboard  # noqa: E402
from tui.widgets.detail import LOSS_PAIR, MARK, DetailView, metric_order  # noqa: E402
from tui.xaxis import ElapsedMap, ZoomWindow, epochs_at, label_format  # noqa: E402


def test_zoom_window_keeps_the_right_edge_pans_inside_the_data_and_resets():
    zoom = ZoomWindow()
    assert zoom.window(0, 1000) == (0, 1000)
    zoom.zoom(0, 1000, 1)
    assert zoom.window(0, 1000) == (500, 1000)
    zoom.pan(0, 1000, -0.25)
    assert zoom.window(0, 1000) == (375, 875)
    zoom.pan(0, 1000, -10)  # not past the first step
    assert zoom.window(0, 1000) == (0, 500)
    zoom.pan(0, 1000, 10)
    assert zoom.window(0, 1000) == (500, 1000) and zoom.offset == 0  # back to following new data
    zoom.zoom(0, 1000, 30)
    start, end = zoom.window(0, 1000)
    assert end == 1000 and end - start >= ZoomWindow.MIN_SPAN
    zoom.reset()
    assert zoom.window(0, 1000) == (0, 1000)


def test_elapsed_map_interpolates_and_stays_bounded():
    elapsed = ElapsedMap(capacity=8)
    assert elapsed.at(10) is None
    for step in range(1, 101):
        elapsed.add(step * 10, step * 2.0)
    elapsed.add(500, 1.0)  # older step: ignored
    assert len(elapsed.steps) <= 8
    assert elapsed.at(1000) == pytest.approx(200.0)
    assert elapsed.at(500) == pytest.approx(100.0, rel=0.05)


def test_epoch_labels_follow_each_phases_steps_per_epoch():
    phases = [{"start_step": 0, "epochs": 2, "steps_per_epoch": 100},
              {"start_step": 200, "epochs": 3, "steps_per_epoch": 50}]
    assert epochs_at(50, phases) == 0.5 and epochs_at(225, phases) == 2.5 and epochs_at(999, phases) == 5
    assert epochs_at(10, []) is None
    assert label_format("epoch", phases, ElapsedMap(), str)(225) == "ep2.5"
    assert label_format("epoch", [], ElapsedMap(), str)(225) == "225"  # no plan: steps


def test_the_loss_pair_is_listed_first_only_with_both_losses():
    assert metric_order(["val_loss", "train_loss", "lr"])[:2] == [LOSS_PAIR, "train_loss"]
    assert LOSS_PAIR not in metric_order(["train_loss", "lr"])


@async_test
async def test_line_chart_marks_the_second_series_and_a_clipped_edge():
    from textual.app import App

    class ChartApp(App):
        def compose(self):
            yield LineChart()

    app = ChartApp()
    async with app.run_test(size=(60, 12)) as pilot:
        chart = app.query_one(LineChart)
        chart.envelope = False
        steps = list(range(0, 400, 10))
        chart.set_series(Series(steps, [500.0] + [1.0 - i * 0.01 for i in range(39)]),
                         Series([100, 200, 300], [0.9, 0.8, 0.7]))
        await pilot.pause(0.1)
        rows = chart.render().plain.split("\n")
        assert sum(row.count("×") for row in rows) == 3
        top = rows[0][:LineChart.GUTTER].strip()
        assert top.endswith("↑") and float(top[:-1]) < 10  # 500 is clipped: the axis top says so
        assert "500" not in "".join(rows)


def assert_info_fits(app) -> None:
    """The detail view's stats and options lines are not cut (issue 13: they were at 80x24)."""
    for static in app.screen.query(".detail-info"):
        assert len(str(static.render()).rstrip()) <= static.content_region.width, str(static.render())


@pytest.mark.parametrize("size", [(80, 24), (110, 40), (160, 48)])
@async_test
async def test_detail_view_keys_and_info_lines_that_fit(tmp_path, runtime_dir, size):
    run_dir = tui_fakes.write_run_dir(tmp_path / "run", state="stopped", steps=5000)
    app = make_app(run_dir)
    async with app.run_test(size=size) as pilot:
        await open_run(pilot, app)
        await pilot.press("2")
        await pilot.pause(0.3)
        view = app.screen.query_one(DetailView)
        options = app.screen.query_one("#metric-list")
        assert view.metric == LOSS_PAIR and str(options.get_option_at_index(0).prompt).startswith(MARK)
        chart = view.chart
        assert chart.overlay is not None and "×" in chart.render().plain
        assert_info_fits(app)
        if size[0] >= 110:  # tests/test_tui_tmux.py reads the history's step range here at 120 columns
            assert re.search(r"steps [\d,]+–[\d,]+ in \d+ points", str(app.screen.query_one("#detail-stats").render()))
        await pilot.press("l")
        await pilot.pause(0.1)
        assert chart.log_scale and "val_loss" in app.screen.query_one(Dashboard).log_metrics
        await pilot.press("down")
        await pilot.pause(0.2)
        assert view.metric != LOSS_PAIR and str(options.get_option_at_index(1).prompt).startswith(MARK)
        assert not str(options.get_option_at_index(0).prompt).startswith(MARK)
        await pilot.press("i")
        await pilot.pause(0.1)
        first, last = chart.data_bounds()
        assert chart.x_range == ((first + last) / 2, last)
        await pilot.press("left")
        await pilot.pause(0.1)
        assert chart.x_range[1] < last
        assert_info_fits(app)  # with the longest options line: zoomed and panned
        await pilot.press("0")
        await pilot.pause(0.1)
        assert chart.x_range is None
        await pilot.press("x")
        await pilot.pause(0.1)
        assert "ep" in chart.render().plain.split("\n")[-1]
        await pilot.press("x")
        await pilot.pause(0.1)
        axis = chart.render().plain.split("\n")[-1]
        assert "h" in axis or "m" in axis  # training time, e.g. 2h13m
        await pilot.press("1")
        await pilot.pause(0.2)
        assert app.screen.query_one("#tile-val_loss", MetricTile).log_scale


def test_resample_of_a_window_without_points_is_empty_not_an_error():
    # A zoomed window between two evaluations: bincount of nothing is an int array.
    assert Series([100, 200], [1.0, 0.5]).resample(4, 120, 180) == [None] * 4


def reference_resample(steps, values, mins, maxs, buckets, first, last, interpolate):
    """The plain definition of Series.resample: (mean, min, max) per equal step range."""
    groups = [[] for _ in range(buckets)]
    for s, v, lo, hi in zip(steps, values, mins, maxs):
        if first <= s <= last:
            groups[min(buckets - 1, int((s - first) / max(last - first, 1e-9) * buckets))].append((v, lo, hi))
    out = [(sum(g[0] for g in grp) / len(grp), min(g[1] for g in grp), max(g[2] for g in grp)) if grp else None
           for grp in groups]
    known = [i for i, c in enumerate(out) if c is not None]
    if interpolate and len(known) >= 2:
        for a, b in zip(known, known[1:]):
            for i in range(a + 1, b):
                value = out[a][0] + (out[b][0] - out[a][0]) * (i - a) / (b - a)
                out[i] = (value, value, value)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_resample_matches_its_plain_definition(seed):
    import random
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(10_000), rng.randint(1, 300)))
    values = [rng.uniform(-5, 5) for _ in steps]
    mins = [v - rng.random() for v in values]
    maxs = [v + rng.random() for v in values]
    series = Series(steps, values, mins, maxs)
    for buckets, first, last, interpolate in ((40, 0, 10_000, True), (7, steps[0], steps[-1], False),
                                              (100, 2_000, 3_000, True), (13, 5_000, 9_000, False)):
        got = series.resample(buckets, first, last, interpolate=interpolate)
        want = reference_resample(steps, values, mins, maxs, buckets, first, last, interpolate)
        assert [c is None for c in got] == [c is None for c in want]
        assert [x for c in got if c for x in c] == pytest.approx([x for c in want if c for x in c])


def test_the_time_axis_of_a_run_comes_from_its_elapsed_history_series():
    """Before attaching (and offline) the time axis was a straight line from (0, 0) to now: the
    history's `elapsed` series (logged with each train record) gives the real, uneven one, and is
    an axis, not a metric in the list."""
    from tui.model import RunModel

    # 100 steps in 10 s, then a slow stretch: 100 more steps took 990 s
    steps, seconds = [0, 50, 100, 150, 200], [0.0, 5.0, 10.0, 505.0, 1000.0]
    snapshot = {"state": "running", "progress": {"step": 200, "elapsed": 1000.0},
                "series": {"elapsed": {"step": steps, "value": seconds},
                           "train_loss": {"step": steps, "value": [1.0, 0.9, 0.8, 0.7, 0.6]}}}
    model = RunModel()
    model.load_snapshot(snapshot)
    assert "elapsed" not in model.series and "train_loss" in model.series
    assert model.elapsed.at(100) == pytest.approx(10.0)  # linear from (0,0) to now would say 500
    assert model.elapsed.at(175) == pytest.approx(752.5)


def test_a_tile_scale_holds_the_value_it_shows():
    """Seen: `samples/s 86.36 ↓ 95.4–141`: the range was of the columns' means, and the newest
    value (below every mean) fell outside the scale printed beside it."""
    from tui.model import Series
    from tui.widgets.charts import MetricTile

    tile = MetricTile("samples/s", "samples_per_s")
    tile.set_series(Series(range(1, 101), [140.0 - i * 0.4 for i in range(99)] + [86.36]))
    tile.value = 86.36
    _, scale = tile._sparkline(10, 1)
    assert scale[0] <= 86.36 <= scale[1] and not scale[2]  # a floor from the shown value is no clip


def test_a_range_that_does_not_fit_is_left_out_never_cut():
    """Seen at 80 columns: `0.0909–0.88` for a range up to 0.881 (the label cut to the room)."""
    from tui.model import Series
    from tui.widgets.charts import MetricTile

    tile = MetricTile("val loss", "val_loss")
    tile.set_series(Series([1, 2, 3, 4, 5], [0.881234, 0.5, 0.3, 0.2, 0.0909]))
    tile.value = 0.0909
    for room in range(MetricTile.MIN_SPARK, 40):
        spark, label = tile._one_row(room)
        full = tile._range_label(tile._sparkline(10, 1)[1])
        assert label in ("", full), (room, label)
        assert len(spark) + (len(label) + 1 if label else 0) <= room
