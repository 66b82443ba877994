"""What the attached TUI costs: repaints only of what changed, and the `+`/`-` refresh rate.

The CPU figures themselves come from bench/tui.py (timed tests would fail on a busy box); these
tests count what the figures depend on: which widgets render again for a frame.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from textual.widget import Widget  # noqa: E402

from tui import messages, refresh_rate  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402

BIG = (160, 48)


@pytest.fixture
def renders(monkeypatch):
    """Counts `Widget._render_content` calls (a widget's content rebuilt) per widget."""
    counts: collections.Counter = collections.Counter()
    original = Widget._render_content

    def counting(self):
        counts[f"{type(self).__name__}#{self.id}"] += 1
        return original(self)

    monkeypatch.setattr(Widget, "_render_content", counting)
    return counts


def recorded(kind: str) -> dict:
    """The last frame of `kind` in the recording (what the screen already shows once it is live)."""
    return [f for f in tui_fakes.read_stream() if f["type"] == kind][-1]


def is_live(app) -> bool:
    return isinstance(app.screen, RunScreen) and app.screen.link_state == "live" and \
        app.screen.model.step == tui_fakes.LIVE_STEP


async def settle(pilot) -> None:
    """Let the posted messages be handled and the repaint they asked for be composed."""
    for _ in range(3):
        await pilot.pause(0.05)


@async_test
async def test_identical_frames_repaint_nothing(live_run, renders):
    """N frames that repeat what the dashboard shows must not rebuild any widget (the idle cost)."""
    run_dir, _ = live_run
    app = make_app(run_dir)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await settle(pilot)
        screen = app.screen
        painted = collections.Counter()
        original = screen.refresh_widgets
        screen.refresh_widgets = lambda: (painted.update(["refresh"]), original())
        renders.clear()
        for _ in range(5):
            screen.post_message(messages.ProgressReceived(dict(recorded("progress"))))
            screen.post_message(messages.SystemReceived(dict(recorded("system"))))
            await settle(pilot)
        assert painted["refresh"] >= 5, "the frames did not reach refresh_widgets: the test tests nothing"
        assert not renders, f"widgets rebuilt for frames that changed nothing: {dict(renders)}"


@async_test
async def test_a_new_system_sample_repaints_only_what_shows_it(live_run, renders):
    run_dir, _ = live_run
    app = make_app(run_dir)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        # A first sample of the same shape (the process table's rows decide the panel's height):
        # only a sample that changes the values, not the layout, is measured.
        app.screen.post_message(messages.SystemReceived(tui_fakes.system_sample(tui_fakes.T0 + 4, load=2.5)))
        await settle(pilot)
        renders.clear()
        app.screen.post_message(messages.SystemReceived(tui_fakes.system_sample(tui_fakes.T0 + 5, load=3.25)))
        await settle(pilot)
        assert renders["SystemPanel#system"] >= 1
        assert set(renders) <= {"SystemPanel#system", "RunHeader#header"}, dict(renders)


# ----------------------------------------------------------------------------- refresh rate (+/-)
def test_refresh_steps_like_btop():
    assert [refresh_rate.faster(s) for s in refresh_rate.STEPS] == [0.25, 0.25, 0.5, 1.0, 2.0]
    assert [refresh_rate.slower(s) for s in refresh_rate.STEPS] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert refresh_rate.faster(0.0) == 0.25 and refresh_rate.slower(0.0) == 0.25  # tests paint at 0 s
    assert refresh_rate.faster(3.0) == 2.0 and refresh_rate.slower(3.0) == 4.0  # between steps
    assert refresh_rate.label(2.0) == "2000ms" and refresh_rate.label(0.25) == "250ms"
    assert refresh_rate.DEFAULT in refresh_rate.STEPS


def footer_keys(app) -> dict[str, str]:
    from textual.widgets._footer import FooterKey

    return {key.key_display: key.description for key in app.screen.query(FooterKey)}


def rates(app) -> tuple:
    screen = app.screen
    return app.refresh_interval, screen.refresh_interval, screen.link.hold


@async_test
async def test_plus_minus_change_the_refresh_rate_shown_in_the_footer(live_run):
    run_dir, _ = live_run
    app = make_app(run_dir, refresh_interval=refresh_rate.DEFAULT)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        # The footer lists the screen's bindings a moment after the screen is live.
        await wait_for(pilot, lambda: footer_keys(app).get("+/-") == "2000ms", what="the default rate in the footer")
        await pilot.press("plus")
        await pilot.pause()
        assert rates(app) == (1.0, 1.0, 1.0)
        await wait_for(pilot, lambda: footer_keys(app).get("+/-") == "1000ms", what="the footer's rate")
        for _ in range(3):
            await pilot.press("minus")
        await pilot.pause()
        assert rates(app) == (4.0, 4.0, 4.0)  # the slowest step stays
        assert footer_keys(app).get("+/-") == "4000ms"
        for _ in range(6):
            await pilot.press("plus")
        await pilot.pause()
        assert rates(app) == (0.25, 0.25, 0.25)
        assert footer_keys(app).get("+/-") == "250ms"


@async_test
async def test_the_refresh_rate_is_kept_for_the_session(live_run):
    """A run opened later (from the picker) repaints at the rate chosen before."""
    run_dir, _ = live_run
    app = make_app(None, refresh_interval=refresh_rate.DEFAULT, lister=lambda root: [])
    async with app.run_test(size=BIG) as pilot:
        await pilot.pause()
        await pilot.press("plus")  # on the picker: not its pace, the key does nothing
        assert app.refresh_interval == refresh_rate.DEFAULT
        assert "+/-" not in footer_keys(app)
        app.attach(run_dir)
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.press("plus")
        await pilot.pause()
        assert rates(app) == (1.0, 1.0, 1.0)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunScreen), what="the picker")
        app.attach(run_dir)
        await wait_for(pilot, lambda: is_live(app), what="the dashboard again")
        assert rates(app) == (1.0, 1.0, 1.0)
        await wait_for(pilot, lambda: footer_keys(app).get("+/-") == "1000ms", what="the footer's rate")


@async_test
async def test_the_daemon_is_asked_for_progress_at_the_refresh_rate(live_run):
    """The hello carries the refresh interval as `progress_every`, and +/- send the new one: a
    dashboard repainting every 2 s took ten progress frames per repaint and showed one."""
    run_dir, daemon = live_run
    app = make_app(run_dir, refresh_interval=refresh_rate.DEFAULT)
    async with app.run_test(size=BIG) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        assert daemon.daemon.paces == [refresh_rate.DEFAULT]
        await pilot.press("plus")
        await wait_for(pilot, lambda: daemon.daemon.paces[-1:] == [1.0], what="the new pace at the daemon")


# ----------------------------------------------------------------------------- the link's hold
@async_test
async def test_the_link_gathers_shown_frames_for_one_refresh_but_posts_events_at_once(tmp_path):
    import asyncio

    from tui.link import DashboardLink

    posted: list = []
    link = DashboardLink(tmp_path, posted.append, hold=0.1)
    progress = [dict(recorded("progress"), step=step) for step in range(10, 15)]
    for frame in progress:
        link._deliver(messages.ProgressReceived, frame)
    link._deliver(messages.EventsReceived, tui_fakes.event(1, tui_fakes.T0, "checkpoint", "info", "saved"))
    assert [type(m) for m in posted] == [messages.EventsReceived]  # an event answers a request: no wait
    await asyncio.sleep(0.15)
    assert [type(m) for m in posted] == [messages.EventsReceived, messages.ProgressReceived]
    merged = posted[-1]
    assert merged.progress["step"] == 14 and [f["step"] for f in merged.earlier] == [10, 11, 12, 13]

    link._deliver(messages.ProgressReceived, progress[0])  # posted, not yet taken: merged into it
    merged.take()
    link._deliver(messages.ProgressReceived, progress[1])
    await link._close()  # the last frames before a daemon exits are shown, not dropped
    assert [type(m) for m in posted][2:] == [messages.ProgressReceived] and posted[2].progress["step"] == 11
    await asyncio.sleep(0.15)
    assert len(posted) == 3  # and never twice


@async_test
async def test_a_repaint_takes_what_the_link_holds(tmp_path):
    from tui.link import DashboardLink

    posted: list = []
    link = DashboardLink(tmp_path, posted.append, hold=10.0)
    link._deliver(messages.ProgressReceived, dict(recorded("progress"), step=7))
    held = link.take_held()
    assert [m.progress["step"] for m in held] == [7] and not posted
    assert link.take_held() == []


@async_test
async def test_the_last_frames_before_the_daemon_exits_are_shown(tmp_path, runtime_dir, live_process):
    """At the default 2 s refresh the link holds frames; a run that ends within the hold must
    still show its last step (the review found them dropped with the connection)."""
    import json

    from trainer.run.sockets import socket_path

    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    frames = tui_fakes.read_stream()
    last = max(f["step"] for f in frames[1:] if f.get("type") == "progress")
    daemon = tui_fakes.DaemonThread(socket_path(run_dir), run_dir, frames).start()
    try:
        app = make_app(run_dir, refresh_interval=2.0)
        async with app.run_test(size=BIG) as pilot:
            await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
            assert app.screen.link.hold == 2.0, "the hold is what this test is about"
            state = json.loads((run_dir / "state.json").read_text())
            (run_dir / "state.json").write_text(json.dumps(dict(state, state="finished", pid=None)))
            daemon.stop()
            await wait_for(pilot, lambda: app.screen.model.step == last, timeout=6, what="the last step")
    finally:
        daemon.close()


def test_the_tiles_right_edge_moves_in_steps_of_a_sixty_fourth():
    """The evaluation tiles' points move only with the tiles' common right edge: it must not move
    at every progress frame (each move repaints every tile) yet stay within ~1.6% of the step."""
    from tui.widgets.dashboard import tiles_right_edge

    edges = {tiles_right_edge(step) for step in range(6000, 6064)}
    assert len(edges) <= 2  # 64 progress frames, at most one move
    for step in (1, 7, 63, 64, 999, 6004, 1_000_003):
        edge = tiles_right_edge(step)
        assert step <= edge <= step * 1.016 + 1
