"""SVG snapshots (pytest-textual-snapshot) of every view at 80x24 and 160x48: the picker, the
dashboard (also of a 2-rank data-parallel run), the detail, events and system views, the help, the summary, and the dashboard after a
resize there and back (which must also draw exactly what a fresh one draws).

The run views are drawn from the synthetic stream (tests/data/recorded_stream.msgpack, made by
tests/tui_fakes.py) served by the fake daemon, and the README's picture from a real run's
recording (tests/data/real_run.msgpack, bench/record_run.py); the clock is frozen at the
recording's time in UTC, so nothing on screen depends on when or where the test runs. Update after an intended change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402
from pytest_textual_snapshot import normalize_svg  # noqa: E402
from textual.containers import VerticalScroll  # noqa: E402

from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.help import as_binding  # noqa: E402
from tui.screens.dialogs import HelpScreen  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402

SIZES = [(80, 24), (160, 48)]


async def settled(pilot) -> None:
    """Wait until every recorded frame is on screen."""
    app = pilot.app

    def done() -> bool:
        screen = app.screen
        return (isinstance(screen, RunScreen) and screen.link_state == "live" and screen.model.step == tui_fakes.LIVE_STEP
                and screen.model.logs_total == 11 and not screen._refresh_pending)

    await wait_for(pilot, done, what="the recorded stream to be shown")
    # The footer is rebuilt after the bindings change (live link), a moment after the data.
    await wait_for(pilot, lambda: app.screen.query("FooterKey"), what="the footer's keys")
    await pilot.pause(0.2)


PICKER_RUNS = [
    {"name": "audio-b0", "state": "running", "step": 6004, "total_steps": 18750, "phase": 1,
     "phase_name": "finetune", "eta": 20340.0, "last_checkpoint_age": 95.0, "dir": "/runs/audio-b0",
     "best": {"metric": "val_f1_macro", "label": "F1", "value": 0.734, "step": 5000}, "samples_per_s": 28.4},
    {"name": "audio-b2", "state": "paused", "step": 91000, "total_steps": 240000, "phase": 2,
     "phase_name": "unfreeze-all", "eta": 401000.0, "last_checkpoint_age": 3700.0, "dir": "/runs/audio-b2",
     "best": {"metric": "val_f1_macro", "label": "F1", "value": 0.812, "step": 90000}, "samples_per_s": 9.7},
    {"name": "effv2-m-4phase", "state": "interrupted", "step": 150123, "total_steps": 1000000, "phase": 0,
     "phase_name": "head", "eta": None, "last_checkpoint_age": 7 * 3600.0, "dir": "/runs/effv2-m-4phase",
     "best": {"metric": "val_auc_roc", "label": "AUC", "value": 0.951, "step": 150000}, "samples_per_s": None},
    {"name": "mfcc-mlp", "state": "finished", "step": 12000, "total_steps": 12000, "phase": 0,
     "phase_name": "train", "eta": None, "last_checkpoint_age": 3 * 86400.0, "dir": "/runs/mfcc-mlp",
     "best": {"metric": "val_loss", "label": "loss", "value": 0.0342, "step": 11000}, "samples_per_s": 412.0},
    {"name": "waveform-cnn", "state": "failed", "step": 800, "total_steps": 50000, "phase": 0,
     "phase_name": "train", "eta": None, "last_checkpoint_age": None, "dir": "/runs/waveform-cnn"},
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_picker(snap_compare, size):
    app = LonghaulApp(None, Path("/home/me/checkpoints"), clock=fmt.frozen_clock(tui_fakes.T0),
                      lister=lambda root: PICKER_RUNS)

    async def loaded(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == len(PICKER_RUNS),
                       what="the runs")

    assert snap_compare(app, terminal_size=size, run_before=loaded)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, live_run, size):
    assert snap_compare(make_app(live_run[0]), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_detail_view(snap_compare, live_run, size):
    async def detail(pilot):
        await settled(pilot)
        await pilot.press("2", "down", "down", "down")  # val_loss (after the train + val pair, train_loss_smooth, train_loss)
        await pilot.pause(0.2)

    assert snap_compare(make_app(live_run[0]), terminal_size=size, run_before=detail)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_data_parallel_dashboard(snap_compare, tmp_path, runtime_dir, live_process, size):
    """A 2-rank data-parallel run (issue 17): the ranks panel under the system panel, rank 1 the slowest."""
    from trainer.run.sockets import socket_path

    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    frames = tui_fakes.with_world(tui_fakes.read_stream(), tui_fakes.world_body())
    daemon = tui_fakes.DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        assert snap_compare(make_app(run_dir), terminal_size=size, run_before=settled)
    finally:
        daemon.close()


def test_offline_dashboard(snap_compare, tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=None)  # -> interrupted
    app = LonghaulApp(run_dir, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)

    async def loaded(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.loaded and not pilot.app.screen._refresh_pending,
                       what="the run directory")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)


def evaluated_app(tmp_path) -> LonghaulApp:
    """A finished 3-class run (offline) with a stored test evaluation (TTA included)."""
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result(classes=["normal", "benign", "malignant"]))
    return LonghaulApp(run_dir, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)


async def evaluation_loaded(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.screen.loaded and pilot.app.screen.model.evaluation
                   and not pilot.app.screen._refresh_pending, what="the run directory and its evaluation")


def test_summary_with_evaluation(snap_compare, tmp_path, runtime_dir):
    async def summary(pilot):
        await evaluation_loaded(pilot)
        await pilot.press("f")
        await wait_for(pilot, lambda: pilot.app.screen.query("#summary-confusion"), what="the summary")
        await pilot.pause(0.2)

    assert snap_compare(evaluated_app(tmp_path), terminal_size=(100, 40), run_before=summary)


def test_per_class_table(snap_compare, tmp_path, runtime_dir):
    async def per_class(pilot):
        await evaluation_loaded(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: pilot.app.screen.query("#detail-table")
                       and pilot.app.screen.query_one("#detail-table").row_count == 3, what="the table")
        await pilot.pause(0.2)

    assert snap_compare(evaluated_app(tmp_path), terminal_size=(80, 24), run_before=per_class)


# ----------------------------------------------------------------------------- every view, both sizes
LONG_CLASSES = ["normal", "benign", "malignant-melanoma-in-situ", "squamous-cell-carcinoma",
                "actinic-keratosis", "dermatofibroma", "vascular-lesion", "nevus"]


def view_keys(key: str):
    async def shown(pilot):
        await settled(pilot)
        await pilot.press(key)
        await pilot.pause(0.3)

    return shown


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_events_view(snap_compare, live_run, size):
    assert snap_compare(make_app(live_run[0]), terminal_size=size, run_before=view_keys("3"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_system_view(snap_compare, live_run, size):
    if not any(b.key == "4" for b in map(as_binding, RunScreen.BINDINGS)):
        pytest.skip("no System view (key 4) on this branch")
    assert snap_compare(make_app(live_run[0]), terminal_size=size, run_before=view_keys("4"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, live_run, size):
    async def helped(pilot):
        await settled(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), what="the help")
        await pilot.pause(0.2)

    assert snap_compare(make_app(live_run[0]), terminal_size=size, run_before=helped)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_summary_confusion(snap_compare, tmp_path, runtime_dir, size):
    """The summary scrolled to its confusion matrix: long class names, recall in view."""
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result(classes=LONG_CLASSES))
    app = LonghaulApp(run_dir, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)

    async def summary(pilot):
        await evaluation_loaded(pilot)
        await pilot.press("f")
        await wait_for(pilot, lambda: pilot.app.screen.query("#summary-confusion"), what="the summary")
        pilot.app.screen.query_one(VerticalScroll).scroll_end(animate=False)
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=size, run_before=summary)


async def resized(pilot):
    """160x48 -> 80x24 -> 160x48 once the stream is in."""
    await settled(pilot)
    for size in ((80, 24), (160, 48)):
        await pilot.resize_terminal(*size)
        await pilot.pause(0.3)
        await wait_for(pilot, lambda: not pilot.app.screen._refresh_pending, what="the repaint after a resize")
        await pilot.pause(0.3)


@async_test
async def test_resizing_there_and_back_draws_what_a_fresh_dashboard_draws(live_run):
    async def shot(resize: bool) -> str:
        app = make_app(live_run[0])
        async with app.run_test(size=(160, 48)) as pilot:
            await (resized(pilot) if resize else settled(pilot))
            return await steady_screenshot(pilot)

    fresh, after = await shot(False), await shot(True)
    assert after == fresh, ("the dashboard after 160x48 -> 80x24 -> 160x48 differs from a fresh 160x48:\n"
                            + svg_diff(fresh, after))


async def steady_screenshot(pilot, tries: int = 20) -> str:
    """The screen once two screenshots 0.2 s apart are the same (the footer and late repaints
    land a moment after the data on a busy machine)."""
    last = normalize_svg(pilot.app.export_screenshot())
    for _ in range(tries):
        await pilot.pause(0.2)
        shot = normalize_svg(pilot.app.export_screenshot())
        if shot == last:
            return shot
        last = shot
    raise AssertionError("the screen kept changing")


def svg_diff(a: str, b: str) -> str:
    """The text lines (or, when the text is the same, the first elements) that differ."""
    import difflib
    import html
    import re

    def texts(svg: str) -> list[str]:
        return [html.unescape(t).replace("\xa0", " ") for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]

    lines = list(difflib.unified_diff(texts(a), texts(b), "fresh", "resized", lineterm="", n=0))
    if not lines:
        lines = list(difflib.unified_diff(a.split("><"), b.split("><"), "fresh", "resized", lineterm="", n=0))
    return "\n".join(line[:160] for line in lines[:40])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_real_run_dashboard(snap_compare, tmp_path, runtime_dir, live_process, size):
    """The README's picture: a real run's recording (tests/data/real_run.msgpack) replayed."""
    from trainer.run.sockets import socket_path

    sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))  # last: bench/tui.py must not shadow the tui package
    import screenshot

    frames = tui_fakes.read_stream(screenshot.RECORDING)
    run_dir = tmp_path / frames[0]["run"]["name"]
    screenshot.write_run_dir(run_dir, frames[0], live_process)
    daemon = tui_fakes.DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        assert snap_compare(screenshot.recording_app(run_dir, frames), terminal_size=size,
                            run_before=lambda pilot: screenshot.replayed(pilot, frames))
    finally:
        daemon.close()
