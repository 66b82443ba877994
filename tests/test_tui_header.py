"""The header, the timeline and the footer tell the truth (issue 13): epochs capped at the total,
an ETA that keeps moving while paused, keys offered only when they work, the last known progress
across a resume, elapsed that never goes back, and what the trainer does before its first step."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.model import RunModel  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.header import HeaderInfo, RunHeader  # noqa: E402
from tui.widgets.timeline import PhaseTimeline  # noqa: E402

SIZES = ((80, 24), (160, 48))
T0 = tui_fakes.T0


class MovingClock:
    """A clock the test moves forward (the UI's `fmt.Clock` reads `now` through it)."""

    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def utc_clock(now=lambda: T0) -> fmt.Clock:
    from datetime import timezone

    return fmt.Clock(now=now, tz=timezone.utc)


def header_text(app) -> str:
    return str(app.screen.query_one(RunHeader).render())


def footer_keys(app) -> dict[str, str]:
    """key -> description of the bindings the footer shows now (hidden ones left out)."""
    return {key: active.binding.description for key, active in app.screen.active_bindings.items()
            if active.binding.show}


def running_model(**progress) -> RunModel:
    model = RunModel(name="demo", state="running", config={"model": "efficientnet_b0"},
                     plan={"total_steps": 800, "total_epochs": 8, "phases": [{"name": "all", "steps": 800}]})
    model.progress = {"step": 400, "total_steps": 800, "epoch": 4, "total_epochs": 8, "phase": 0,
                      "phase_name": "all", "elapsed": 600.0, "eta": 3600.0, **progress}
    return model


# ----------------------------------------------------------------------------- epochs
def test_a_finished_run_reads_its_last_epoch_not_one_past_it():
    model = running_model(step=800, epoch=8, eta=0.0)  # the engine's index is one past the last epoch
    model.state = "finished"
    info = HeaderInfo.from_model(model, "offline", utc_clock())
    assert info.epoch == "epoch 8/8"
    assert HeaderInfo.from_model(running_model(), "live", utc_clock()).epoch == "epoch 5/8"


# ----------------------------------------------------------------------------- paused ETA
def test_paused_eta_keeps_its_time_left_and_its_clock_time_moves():
    model = running_model()
    model.state = "paused"
    info = HeaderInfo.from_model(model, "live", utc_clock())
    assert info.eta == "ETA 1h00m paused" and info.eta_left == 3600.0
    running = HeaderInfo.from_model(running_model(), "live", utc_clock())
    assert running.eta == "ETA 1h00m"


@async_test
async def test_paused_header_ticks_and_footer_offers_resume(live_run):
    run_dir, daemon = live_run
    clock = MovingClock()
    app = LonghaulApp(run_dir, run_dir.parent, clock=utc_clock(clock), refresh_interval=0.0, link_retry_max=0.2)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.link_state == "live"
                       and app.screen.model.step == tui_fakes.LIVE_STEP, what="the live dashboard")
        await pilot.pause(0.1)
        keys = footer_keys(app)
        assert keys.get("p") == "Pause" and keys.get("s") == "Stop" and keys.get("c") == "Checkpoint"
        assert "r" not in keys and keys.get("escape") == "Runs"
        await pilot.press("p")
        await wait_for(pilot, lambda: app.screen.model.state == "paused", what="the paused state")
        await pilot.pause(0.2)
        assert footer_keys(app).get("p") == "Resume"
        before = header_text(app)
        assert "PAUSED" in before and "paused → 05:39" in before
        clock.at += 3600  # an hour paused, no frame in between: the finish moves an hour later
        await wait_for(pilot, lambda: "paused → 06:39" in header_text(app), timeout=8,
                       what="the ETA's clock time to move")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.screen.model.state == "running", what="the resumed state")
        assert [r["action"] for r in daemon.requests] == ["pause", "resume"]


@async_test
async def test_an_offline_finished_run_offers_only_what_works(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    for size in SIZES:
        app = make_app(run_dir)
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded,
                           what="the run directory to load")
            await pilot.pause(0.1)
            keys = footer_keys(app)
            assert not {"p", "s", "c", "r"} & set(keys), keys
            assert keys.get("f") == "Summary" and keys.get("escape") == "Runs"
            assert "epoch 5/15" in header_text(app)
