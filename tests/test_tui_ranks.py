"""The ranks panel of a data-parallel run (issue 17, tui/widgets/ranks.py): its rows (the slowest
marked, `–` for an allreduce share not measured, big worlds capped to their slowest ranks), and in
a real app (pilot) shown only while the progress has a `world`, the marker following the slowest."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import DaemonThread, wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from trainer import protocol  # noqa: E402
from trainer.run.sockets import socket_path  # noqa: E402
from tui import fmt, messages  # noqa: E402
from tui.model import RunModel  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.ranks import RanksPanel, lines_needed, ranks_lines, shown_rows, world_rows  # noqa: E402


def plain(world, max_rows: int = 10, width: int = 38) -> list[str]:
    return [line.plain for line in ranks_lines(world, max_rows, width)]


def big_world(n: int) -> dict:
    """`n` ranks, rank i taking 400 + i ms (the last the slowest), allreduce measured on every third."""
    return tui_fakes.world_body(step_seconds=[0.4 + 0.001 * i for i in range(n)], hosts=[f"node{i:02d}" for i in range(n)],
                                data_shares=[0.05] * n, allreduce_shares=[None if i % 3 else 0.03 for i in range(n)])


# ----------------------------------------------------------------------------- the rows
def test_rows_of_two_ranks_mark_the_slowest():
    lines = plain(tui_fakes.world_body())
    assert lines[0].startswith("ranks · world 2") and "step" in lines[0] and "data" in lines[0]
    assert lines[1].split() == ["0", "boxa", "412ms", "8.0%", "5.0%"]
    assert lines[2].split() == ["1", "boxb", "530ms", "21.0%", "2.0%", "◀"]
    assert len(lines) == 3
    # roomier: the marker says what it marks, the heading names the allreduce
    wide = plain(tui_fakes.world_body(), width=60)
    assert wide[2].endswith("◀ slowest") and "allreduce" in wide[0] and "slowest" not in wide[1]


def test_columns_line_up_under_the_heading():
    lines = plain(tui_fakes.world_body(), width=38)
    for label, value in (("step", "412ms"), ("data", "8.0%"), ("allred", "5.0%")):
        assert lines[0].index(label) + len(label) == lines[1].index(value) + len(value), label
    assert all(len(line) <= 38 for line in lines)


def test_allreduce_not_measured_reads_as_a_dash():
    world = tui_fakes.world_body(allreduce_shares=(None, 0.02))
    assert plain(world)[1].split()[-1] == fmt.MISSING == "–"
    assert world_rows(world)[0].allreduce_share is None


def test_the_slowest_is_the_largest_step_time_whatever_its_rank():
    rows = world_rows(tui_fakes.world_body(step_seconds=(0.9, 0.5)))
    assert [r.slowest for r in rows] == [True, False]
    # a tie: one marker, on the lower rank
    rows = world_rows(tui_fakes.world_body(step_seconds=(0.5, 0.5)))
    assert [r.slowest for r in rows] == [True, False]
    # ranks arrive in any order and are shown in rank order
    world = tui_fakes.world_body(step_seconds=(0.4, 0.6, 0.5), hosts=("a", "b", "c"), data_shares=(0, 0, 0),
                                 allreduce_shares=(0, 0, 0))
    world["ranks"].reverse()
    assert [r.rank for r in world_rows(world)] == [0, 1, 2]
    assert [r.host for r in world_rows(world) if r.slowest] == ["b"]


def test_a_big_world_shows_its_slowest_ranks_and_counts_the_others():
    lines = plain(big_world(64), max_rows=10)
    assert len(lines) == 10 == lines_needed(big_world(64), 10)
    assert "world 64" in lines[0]
    assert [line.split()[0] for line in lines[1:9]] == [str(r) for r in range(63, 55, -1)]  # slowest first
    assert lines[1].endswith("◀") and not any(line.endswith("◀") for line in lines[2:])
    assert lines[9] == "… 56 more"
    # the short layout: the two slowest and the count
    short = plain(big_world(64), max_rows=4)
    assert [line.split()[0] for line in short[1:3]] == ["63", "62"] and short[3] == "… 62 more"
    # a world that fits keeps rank order
    assert [line.split()[0] for line in plain(big_world(3), max_rows=4)[1:]] == ["0", "1", "2"]
    rows, more = shown_rows(world_rows(big_world(9)), 9)
    assert more == 0 and [r.rank for r in rows] == list(range(9))


def test_no_world_draws_nothing_and_bad_entries_are_skipped():
    assert plain(None) == [] and lines_needed(None, 10) == 0
    assert plain({"world_size": 2, "ranks": []}) == []
    world = tui_fakes.world_body()
    world["ranks"].append("garbage")
    world["ranks"][0]["step_seconds"] = None
    lines = plain(world)
    assert len(lines) == 3 and lines[1].split()[2] == "–" and lines[2].endswith("◀")


def test_step_time_format():
    assert [fmt.step_time(s) for s in (0.0004, 0.412, 0.9996, 1.534, 12.44, 125.0, None, float("nan"))] == [
        "0ms", "412ms", "1.00s", "1.53s", "12.4s", "2m05s", "–", "–"]


def test_the_model_has_a_world_only_for_a_data_parallel_progress():
    model = RunModel()
    assert model.world is None
    model.apply_progress({"step": 1, "metrics": {}})
    assert model.world is None
    model.apply_progress({"step": 2, "metrics": {}, "world": tui_fakes.world_body()})
    assert model.world["world_size"] == 2
    model.apply_progress({"step": 3, "metrics": {}})  # the group restarted as one process
    assert model.world is None


def test_the_world_is_a_valid_progress_field():
    frame = tui_fakes.with_world(tui_fakes.read_stream(), tui_fakes.world_body())[1]
    assert frame["type"] == "progress"
    protocol.validate(frame, protocol.DAEMON_TO_CLIENT)  # the frames the fake daemon sends are what rank 0 may send
    with pytest.raises(protocol.ProtocolError):
        protocol.validate(dict(frame, world={"world_size": 2, "ranks": [{"rank": 0}]}), protocol.DAEMON_TO_CLIENT)


# ----------------------------------------------------------------------------- in the app
def panel_lines(app) -> list[str]:
    panel = app.screen.query_one(RanksPanel)
    return [line.plain for line in panel._shown or []] if panel.display else []


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
@async_test
async def test_the_panel_comes_with_the_world_and_follows_the_slowest(tmp_path, runtime_dir, live_process, size):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    frames = tui_fakes.with_world(tui_fakes.read_stream(), tui_fakes.world_body())
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    app = make_app(run_dir)
    try:
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.model.step == tui_fakes.LIVE_STEP
                           and not app.screen._refresh_pending and panel_lines(app), what="the ranks")
            screen = app.screen
            lines = panel_lines(app)
            assert "world 2" in lines[0] and lines[2].startswith("1 boxb") and "◀" in lines[2] and "◀" not in lines[1]
            lr_chart = screen.query_one("#lr-chart")
            assert lr_chart.display == (size[1] >= 36)  # a short dashboard gives the LR chart's rows to the ranks
            base = {k: v for k, v in screen.model.progress.items() if k != "world"}

            def send(step: int, world=None) -> None:
                frame = dict(base, step=step, **({"world": world} if world else {}))
                screen.post_message(messages.ProgressReceived(frame))

            send(tui_fakes.LIVE_STEP + 1, tui_fakes.world_body(step_seconds=(0.7, 0.53)))  # rank 0 slows down
            await wait_for(pilot, lambda: "◀" in (panel_lines(app) or ["", ""])[1], what="the marker on rank 0")
            lines = panel_lines(app)
            assert lines[1].startswith("0 boxa") and "700ms" in lines[1] and "◀" not in lines[2]
            send(tui_fakes.LIVE_STEP + 2)  # one process again: no world, no panel, the LR chart back
            await wait_for(pilot, lambda: not screen.query_one(RanksPanel).display, what="the panel to hide")
            assert lr_chart.display
    finally:
        daemon.close()


@async_test
async def test_a_single_process_run_has_no_panel(live_run):
    app = make_app(live_run[0])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.model.step == tui_fakes.LIVE_STEP
                       and not app.screen._refresh_pending, what="the recorded stream")
        await pilot.pause(0.1)
        assert not app.screen.query_one(RanksPanel).display
        assert app.screen.query_one("#lr-chart").display


@async_test
async def test_a_lost_node_shows_in_the_alert_bar_and_the_events(tmp_path, runtime_dir, live_process):
    from tui.widgets.alerts import AlertBar
    from tui.widgets.feeds import FeedTail

    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    frames = tui_fakes.with_world(tui_fakes.read_stream(), tui_fakes.world_body())
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    app = make_app(run_dir)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.model.step == tui_fakes.LIVE_STEP
                           and not app.screen._refresh_pending, what="the recorded stream")
            lost = tui_fakes.event(3000, tui_fakes.T0 + 5, "alert", "error", "rank 1 (boxb) stopped answering",
                                   what="node_lost", host="boxb", rank=1)
            message = messages.EventsReceived(lost)
            message.merge(tui_fakes.event(3001, tui_fakes.T0 + 6, "restart", "warning",
                                          "restarting the group from the last checkpoint (attempt 1 of 5)",
                                          attempt=1, delay=2.0, max_restarts=5))
            app.screen.post_message(message)
            bar = app.screen.query_one(AlertBar)
            await wait_for(pilot, lambda: "node lost" in str(bar.render()), what="the alert")
            line = str(bar.render())
            assert line.startswith("ERROR 00:00:05 node lost: rank 1 (boxb)") and len(line) <= 78, line
            events = app.screen.query_one("#dash-events", FeedTail)
            await wait_for(pilot, lambda: "stopped answering" in str(events.render()) and "restarting the group"
                           in str(events.render()), what="the events")
    finally:
        daemon.close()
