"""The events & log view: compact log lines, the filter, the wrap bug, and the keys of
`EventsView` at 80x24 and 160x48 (pilot)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from tui.widgets.events_view import EventsView  # noqa: E402
from tui.widgets.feeds import EventList, FeedFilter, LogTail, log_level, log_line, parse_log_line  # noqa: E402

SIZES = ((80, 24), (160, 48))
LONG = "checkpoint step {i} written to ckpt/step-{i:08d} in 1.2 s, fsync 0.3 s, manifest ok, write 11.73 s"


# ----------------------------------------------------------------------------- lines
def test_log_lines_get_a_compact_prefix():
    raw = "2026-11-27 08:45:32,989 INFO trainer.engine: step 100: loss 0.52"
    assert parse_log_line(raw) == ("08:45:32", "INFO", "engine", "step 100: loss 0.52")
    assert str(log_line({"line": raw})) == "  08:45:32 engine: step 100: loss 0.52"
    warn = "2026-11-27 08:45:33,001 WARNING trainer.data.stored: slow read"
    assert str(log_line({"line": warn})) == "  08:45:33 WARN stored: slow read"
    daemon = "2026-11-27 08:45:33,001 ERROR daemon[4242]: worker died"
    assert str(log_line({"line": daemon, "stream": "stderr"})) == "! 08:45:33 ERROR daemon[4242]: worker died"
    # anything else is shown as it is
    for other in ("Traceback (most recent call last):", "  File \"x.py\", line 3", "", "2026-11-27 nonsense"):
        assert str(log_line({"line": other})) == "  " + other
    assert log_level({"line": warn}) == "warning" and log_level({"line": raw}) == "info"
    assert log_level({"line": "Traceback", "stream": "stderr"}) == "warning"


def test_the_filter():
    crash = {"kind": "crash", "level": "error", "message": "trainer killed by SIGKILL"}
    ckpt = {"kind": "checkpoint", "level": "info", "message": "checkpoint step 10"}
    ckpt_failed = {"kind": "checkpoint", "level": "error", "message": "checkpoint step 20 failed"}
    assert not FeedFilter().active
    assert FeedFilter("sigkill").shows_event(crash) and not FeedFilter("sigkill").shows_event(ckpt)
    assert FeedFilter("CHECKPOINT").shows_event(ckpt)  # case-insensitive, the kind counts
    assert [FeedFilter(min_level=1).shows_event(e) for e in (crash, ckpt)] == [True, False]
    assert [FeedFilter(min_level=2).shows_event(e) for e in (crash, ckpt_failed, ckpt)] == [True, True, False]
    routine = FeedFilter(hide_routine=True)
    assert not routine.shows_event(ckpt) and routine.shows_event(ckpt_failed) and routine.shows_event(crash)
    # log lines are searched raw: the timestamp and full logger name still match
    raw = {"line": "2026-11-27 08:45:32,989 INFO trainer.engine: step 100"}
    assert FeedFilter("trainer.engine").shows_log(raw) and FeedFilter("08:45").shows_log(raw)
    assert not FeedFilter(min_level=1).shows_log(raw)


# ----------------------------------------------------------------------------- the view
def write_run(tmp_path: Path, events: int = 40, log_lines: int = 60) -> Path:
    run_dir = tui_fakes.write_run_dir(tmp_path / "feeds", state="stopped", steps=3000)
    stored = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    last = stored.pop()
    for i in range(events):
        stored.append({"seq": 500 + i, "time": tui_fakes.T0, "kind": "checkpoint", "level": "info",
                       "message": LONG.format(i=i), "data": {"step": i}})
    stored.append({"seq": 900, "time": tui_fakes.T0, "kind": "crash", "level": "error",
                   "message": "trainer killed by SIGKILL zebra", "data": {}})
    stored.append({**last, "seq": 901})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in stored))
    with open(run_dir / "train.log", "a") as log:
        for i in range(log_lines):
            level = "WARNING" if i % 10 == 0 else "INFO"
            log.write(f"2026-11-27 08:45:{i % 60:02d},989 {level} trainer.engine: step {i}: loss 0.123 lr 0.001 "
                      f"samples/s 31.2 data 12% grad 1.23 and words enough to need more than one line end{i}\n")
    return run_dir


async def open_events(app, pilot) -> EventsView:
    await tui_fakes.wait_for(pilot, lambda: app.screen.loaded, what="the run directory")
    await pilot.press("3")
    await tui_fakes.wait_for(pilot, lambda: app.screen.query(EventsView) and app.screen.query_one(EventList).lines,
                             what="the events view")
    await pilot.pause(0.1)
    return app.screen.query_one(EventsView)


def visible_width(pane) -> int:
    scrollbar = pane.scrollbar_size_vertical if pane.show_vertical_scrollbar else 0
    return pane.content_region.width - scrollbar


def pane_text(pane) -> list[str]:
    return [line.text.rstrip() for line in pane.lines]


@async_test
async def test_wrapped_lines_keep_their_last_characters(tmp_path, runtime_dir):
    """`write 11.73` without ` s`: lines were wrapped wider than what the scrollbar leaves."""
    run_dir = write_run(tmp_path)
    for size in SIZES:
        app = make_app(run_dir)
        async with app.run_test(size=size) as pilot:
            await open_events(app, pilot)
            for pane in (app.screen.query_one(EventList), app.screen.query_one(LogTail)):
                assert pane.show_vertical_scrollbar, "the test needs more lines than fit"
                width = visible_width(pane)
                too_wide = [t for t in pane_text(pane) if len(t) > width]
                assert not too_wide, f"{size}: lines wider than the {width} visible columns: {too_wide[:2]}"
            events = " ".join(pane_text(app.screen.query_one(EventList)))
            assert "write 11.73 s 00:00:00" in events  # a wrapped event ends whole before the next
            logs = pane_text(app.screen.query_one(LogTail))
            assert any(t.endswith("end59") for t in logs)


@async_test
async def test_wrap_follows_a_resize(tmp_path, runtime_dir):
    app = make_app(write_run(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await open_events(app, pilot)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.3)
        pane = app.screen.query_one(EventList)
        assert max(len(t) for t in pane_text(pane)) <= visible_width(pane)


@async_test
async def test_search_level_routine_and_escape(tmp_path, runtime_dir):
    run_dir = write_run(tmp_path)
    for size in SIZES:
        app = make_app(run_dir)
        async with app.run_test(size=size) as pilot:
            view = await open_events(app, pilot)
            events, logs = app.screen.query_one(EventList), app.screen.query_one(LogTail)
            await pilot.press("slash", *"ZEBRA", "enter")
            await pilot.pause(0.1)
            assert pane_text(events) == ["00:00:00 ERROR crash          trainer killed by SIGKILL zebra"]
            assert pane_text(logs) == []
            assert "search “ZEBRA”" in str(view.title())
            assert any(span.style == "reverse" for span in events._texts[0].spans)  # the match stands out
            await pilot.press("escape")  # clears the search, stays in the view
            await pilot.pause(0.1)
            assert view.filter == type(view.filter)() and app.screen.query(EventsView)
            assert len(pane_text(events)) > 40
            await pilot.press("v")
            await pilot.pause(0.1)
            assert "warnings+" in str(view.title())
            heads = [t for t in pane_text(events) if t[:2].isdigit()]
            assert heads[-1] == "00:00:00 ERROR crash          trainer killed by SIGKILL zebra"
            assert all(t[9:14] in ("WARN ", "ERROR") for t in heads)
            assert all("WARN" in t for t in pane_text(logs) if t.startswith("  08:"))
            await pilot.press("v", "v", "k")  # back to all levels; routine kinds hidden
            await pilot.pause(0.1)
            assert "routine hidden" in str(view.title())
            assert not any("written to ckpt" in t for t in pane_text(events))
            assert any("trainer killed" in t for t in pane_text(events))
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert not view.filter.active
            back: list = []
            app.screen.action_back = lambda: back.append(True)
            await pilot.press("escape")  # nothing left to clear: on to the screen (back to the runs)
            await pilot.pause(0.1)
            assert back == [True]


@async_test
async def test_wrap_toggle_and_horizontal_scroll(tmp_path, runtime_dir):
    app = make_app(write_run(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_events(app, pilot)
        logs = app.screen.query_one(LogTail)
        await pilot.press("w")
        await pilot.pause(0.1)
        assert "no wrap" in str(view.title())
        assert max(len(t) for t in pane_text(logs)) > visible_width(logs)  # whole lines, scrolled to
        assert logs.max_scroll_x > 0 and logs.scroll_x == 0
        await pilot.press("right", "right")
        await pilot.pause(0.1)
        assert logs.scroll_x > 0
        await pilot.press("left", "left")
        await pilot.pause(0.1)
        assert logs.scroll_x == 0
        await pilot.press("w")
        await pilot.pause(0.1)
        assert max(len(t) for t in pane_text(logs)) <= visible_width(logs)


@async_test
async def test_pause_keeps_the_view_and_counts_new_lines(tmp_path, runtime_dir):
    app = make_app(write_run(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        view = await open_events(app, pilot)
        events = app.screen.query_one(EventList)
        await pilot.press("space")
        events.scroll_to(y=0, animate=False)
        await pilot.pause(0.1)
        model = app.screen.model
        for seq in (1000, 1001, 1002):
            model.apply_event({"seq": seq, "time": tui_fakes.T0, "kind": "alert", "level": "warning",
                               "message": f"new {seq}", "data": {}})
        app.screen._request_refresh()
        await pilot.pause(0.2)
        assert "paused, 3 new" in str(view.title())
        assert events.scroll_y == 0 and "new 1002" in pane_text(events)[-1]
        await pilot.press("space")
        await pilot.pause(0.2)
        assert "following" in str(view.title()) and events.scroll_y == events.max_scroll_y


def test_new_entries_are_appended_not_rewritten():
    """500 events and a busy trainer: a refresh with one new line formats one line."""
    from tui import fmt
    from tui.model import RunModel
    model = RunModel()
    model.reset_feeds([{"seq": i, "time": 0, "kind": "eval", "level": "info", "message": f"e{i}"} for i in range(500)], [])
    pane = EventList(fmt.frozen_clock(0))
    formatted: list = []
    line = pane._line
    pane._line = lambda item: formatted.append(item) or line(item)
    pane.refresh = lambda *a, **k: None  # no app: nothing to repaint
    pane.scroll_end = lambda *a, **k: None
    assert pane.sync(model) == 0 and len(formatted) == 500 and pane.rows == 500
    pane.sync(model)
    assert len(formatted) == 500  # nothing new: nothing done
    model.apply_event({"seq": 500, "time": 0, "kind": "eval", "level": "info", "message": "e500"})
    assert pane.sync(model) == 1
    assert len(formatted) == 501 and formatted[-1]["message"] == "e500"
    assert pane.rows == 500 and pane.dropped_rows == 1  # the list keeps 500 entries


@async_test
async def test_paused_view_stays_put_while_old_lines_drop_out(tmp_path, runtime_dir):
    app = make_app(write_run(tmp_path, events=10, log_lines=5))
    async with app.run_test(size=(160, 48)) as pilot:
        await open_events(app, pilot)
        events = app.screen.query_one(EventList)
        await pilot.press("space")
        model = app.screen.model
        seq = 1000
        for batch in (500, 100, 100):  # the list keeps 500 entries: the oldest are dropped
            for _ in range(batch):
                seq += 1
                model.apply_event({"seq": seq, "time": tui_fakes.T0, "kind": "eval", "level": "info",
                                   "message": f"line {seq}", "data": {}})
            app.screen.refresh_widgets()
            await pilot.pause(0.05)
            if seq == 1500:
                events.scroll_to(y=events.max_scroll_y - 5, animate=False, immediate=True)
                await pilot.pause(0.05)
                top = events.lines[int(events.scroll_y)].text
                first = events.dropped_rows
        assert events.dropped_rows > first  # lines were dropped
        assert events.lines[int(events.scroll_y)].text == top


@async_test
async def test_the_search_box_takes_the_view_keys_as_text(tmp_path, runtime_dir):
    app = make_app(write_run(tmp_path, events=5, log_lines=5))
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_events(app, pilot)
        await pilot.press("slash", "w", "space", "v", "k", "left", "x", "3", "enter")
        await pilot.pause(0.1)
        assert view.filter == FeedFilter("w vx3k") and view.wrap and view.following
        assert app.screen.query_one("#views").active == "events"


def test_wrapped_rows_are_cut_by_cells_so_wide_characters_are_never_lost():
    """Rows were cut every `width` characters: a row of double-width characters (a CJK class
    name) held twice the cells and was cropped at the edge."""
    from rich.text import Text

    from tui.widgets.feeds import row_starts

    assert row_starts(Text("abcdefghij"), 4) == [0, 4, 8] and row_starts(Text(""), 4) == [0]
    text = Text("eval 鳥の声 ok")  # 5 + 8 + 3 cells
    starts = row_starts(text, 6)
    rows = [text.plain[a:b] for a, b in zip(starts, starts[1:] + [None])]
    assert "".join(rows) == text.plain  # nothing lost
    assert all(Text(row).cell_len <= 6 for row in rows), rows
