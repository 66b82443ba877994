"""`DrawnWidget`: a change repaints only when it changes what is drawn, and then only the lines
that changed (the dashboard's idle cost, issue 13)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pilot import async_test  # noqa: E402

from textual.app import App  # noqa: E402
from textual.geometry import Region  # noqa: E402

from tui.model import Series  # noqa: E402
from tui.widgets.charts import MetricTile  # noqa: E402


class TileApp(App):
    CSS = "MetricTile { height: 3; width: 60; }"

    def compose(self):
        yield MetricTile("val loss", "val_loss", id="tile")


def watch_refreshes(tile: MetricTile) -> list[tuple]:
    """Every refresh() the tile asks for, with its regions (empty: the whole widget)."""
    calls: list[tuple] = []
    original = tile.refresh

    def counting(*regions, **kwargs):
        calls.append(regions)
        return original(*regions, **kwargs)

    tile.refresh = counting
    return calls


@async_test
async def test_a_change_that_draws_the_same_repaints_nothing():
    app = TileApp()
    async with app.run_test(size=(80, 10)) as pilot:
        tile = app.query_one(MetricTile)
        tile.set_series(Series([0, 10, 20, 30], [0.9, 0.7, 0.6, 0.55]))
        tile.value = 0.550001
        await pilot.pause()
        calls = watch_refreshes(tile)
        tile.value = 0.550002  # shown as 0.5500 either way
        tile.x_range = (0.0, 30.0001)  # a step range that moves no point to another column
        await pilot.pause()
        assert calls == [], "an unchanged look was repainted"
        tile.value = 0.6  # a new value inside the sparkline's range: the head line only
        await pilot.pause()
        assert calls == [(Region(0, 0, tile.size.width, 1),)], calls
        assert "0.6000" in tile.render().plain


@async_test
async def test_changes_made_together_are_compared_once():
    app = TileApp()
    async with app.run_test(size=(80, 10)) as pilot:
        tile = app.query_one(MetricTile)
        await pilot.pause()
        drawn = []
        original = tile.draw
        tile.draw = lambda: (drawn.append(1), original())[1]
        tile.value, tile.trend, tile.note = 1.5, 1, "best 1.2"
        tile.set_series(Series([0, 5], [2.0, 1.5]))
        await pilot.pause()
        assert len(drawn) == 1, "one draw, compared and then shown: not one per change"
        assert "best 1.2" in tile.render().plain


@async_test
async def test_a_new_theme_reaches_the_kept_component_styles():
    app = TileApp()
    async with app.run_test(size=(80, 10)) as pilot:
        tile = app.query_one(MetricTile)
        tile.set_series(Series([0, 10, 20], [3.0, 2.0, 1.0]))
        tile.value = 1.0
        await pilot.pause()
        before = tile.component_style("tile--spark")
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause()
        after = tile.component_style("tile--spark")
        assert after != before and after == tile.get_component_rich_style("tile--spark")
