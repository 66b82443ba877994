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


# ----------------------------------------------------------------------------- before the first step
def setup_event(seq: int, stage: str, message: str, started: float) -> dict:
    body = tui_fakes.event(seq, started, "setup", "info", message, stage=stage, started=started)
    body.pop("type", None)
    return body


def starting_frames(events: list[dict]) -> list[dict]:
    """A daemon whose worker has not trained yet: no plan, no progress, just `events`."""
    frames = tui_fakes.read_stream()
    snapshot = frames[0]["snapshot"]
    snapshot.update(state="starting", plan={}, progress=None, series={}, system=None,
                    eval={"last": None, "best": None}, events=events, logs=[])
    return frames[:1]


def starting_run(tmp_path, live_process, events: list[dict]):
    from trainer.run.sockets import socket_path

    run_dir = tmp_path / "demo-b0"
    run_dir.mkdir()
    (run_dir / "state.json").write_text('{"state": "starting", "pid": %d}' % live_process)
    return run_dir, tui_fakes.DaemonThread(socket_path(run_dir), run_dir, frames=starting_frames(events)).start()


def timeline_text(app) -> str:
    return str(app.screen.query_one(PhaseTimeline).render())


@async_test
async def test_setup_stages_replace_phase_plan_not_known_yet(tmp_path, runtime_dir, live_process):
    events = [setup_event(1, "data", "checking data: 1,234 files", T0 - 15),
              setup_event(2, "model", "building model efficientnet_b0", T0 - 12)]
    run_dir, daemon = starting_run(tmp_path, live_process, events)
    try:
        for size in SIZES:
            app = make_app(run_dir)
            async with app.run_test(size=size) as pilot:
                await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.link_state == "live",
                               what="the live dashboard")
                await pilot.pause(0.1)
                assert "setting up: building model efficientnet_b0" in header_text(app)
                timeline = timeline_text(app)
                assert "setting up: building model efficientnet_b0 (12s)" in timeline, timeline
                assert "✓ data 3s" in timeline and "phase plan not known" not in timeline
                if size == (160, 48):
                    assert "setting up: building model efficientnet_b0 (12s)" in header_text(app)
    finally:
        daemon.close()


@async_test
async def test_a_worker_that_said_nothing_yet_reads_starting_worker(tmp_path, runtime_dir, live_process):
    starting = tui_fakes.event(1, T0 - 2, "state", "info", "daemon started (pid 4242)", state="starting", pid=4242)
    starting.pop("type", None)
    run_dir, daemon = starting_run(tmp_path, live_process, [starting])
    try:
        app = make_app(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.link_state == "live",
                           what="the live dashboard")
            await pilot.pause(0.1)
            assert "starting worker…" in header_text(app) and "starting worker…" in timeline_text(app)
    finally:
        daemon.close()


def test_setup_ends_with_ready_or_the_first_progress_and_starts_again_with_a_new_worker():
    model = RunModel(name="demo", state="starting")
    clock = utc_clock()
    assert HeaderInfo.from_model(model, "live", clock).phase == "starting worker…"
    model.apply_event(setup_event(1, "data", "checking data: 10 files", T0 - 5))
    info = HeaderInfo.from_model(model, "live", clock)
    assert info.phase == "setting up: checking data: 10 files" and info.since == T0 - 5
    model.apply_event(setup_event(2, "data", "checking data: 1,234 files", T0 - 3))  # the same stage, more said
    assert model.setup.current.message == "checking data: 1,234 files" and model.setup.current.started == T0 - 5
    model.apply_event(setup_event(3, "ready", "ready", T0 - 1))
    assert model.setup.status("starting", True) is None  # ready: no longer "starting worker…"
    assert model.setup.done() == (("data", 4.0),)
    model.apply_progress({"step": 1, "total_steps": 10, "phase": 0, "phase_name": "all", "eta": 9.0})
    assert HeaderInfo.from_model(model, "live", clock).phase == "phase 1/1 all"
    restart = tui_fakes.event(4, T0, "state", "warning", "restarting after a crash in 5 s", state="starting")
    model.apply_event(restart)  # a new worker: its stages come next
    assert HeaderInfo.from_model(model, "live", clock).phase == "starting worker…"
    model.state = "failed"
    assert HeaderInfo.from_model(model, "offline", clock).phase == "phase 1/1 all"


# ----------------------------------------------------------------------------- across a resume
def resumed_state(run_dir: Path, **fields) -> None:
    """state.json as a stopped run leaves it: step 30 of 50, epoch index 2, phase 0, 100 s trained."""
    import json

    (run_dir / "state.json").write_text(json.dumps({
        "name": run_dir.name, "state": "stopped", "step": 30, "total_steps": 50, "epoch": 2, "phase": 0,
        "phase_name": "train", "elapsed": 100.0, "eta": 60.0, "updated": T0, **fields}))


def test_carried_progress_is_a_protocol_progress_body_and_none_before_training():
    from trainer import protocol
    from trainer.run.snapshot import carried_progress, progress_from_state

    plan = {"total_steps": 50, "total_epochs": 5,
            "phases": [{"name": "train", "start_step": 0, "start_epoch": 0, "steps_per_epoch": 10}]}
    state = {"step": 30, "total_steps": 50, "epoch": 2, "phase": 0, "phase_name": "train", "elapsed": 100.0}
    body = carried_progress(progress_from_state(state, plan), plan, now=T0)
    protocol.validate({"type": "progress", **body})
    assert (body["step"], body["epoch"], body["epoch_step"], body["elapsed"]) == (30, 2, 10, 100.0)
    assert carried_progress(progress_from_state({"step": 30, "epoch": 2, "phase": 0}, None), None, now=T0)
    assert carried_progress(progress_from_state({}, plan), plan) is None  # a fresh run: nothing to carry
    assert carried_progress(progress_from_state({"step": 30}, plan), plan) is None  # no epoch/phase: not a frame


def test_a_resumed_daemon_snapshot_keeps_the_last_progress_until_the_worker_reports(tmp_path, runtime_dir, launcher):
    from daemon_helpers import RawClient, make_run
    from trainer.run.sockets import socket_path

    # the fake worker "prepares data" for ~2 s before its first progress frame
    run_dir = make_run(tmp_path / "runs", "resumed", fake={"steps": 50, "preparing_items": 400})
    resumed_state(run_dir)
    launcher.start(run_dir)
    client = RawClient(socket_path(run_dir))
    try:
        snapshot = client.hello()["snapshot"]
    finally:
        client.close()
    progress = snapshot["progress"]
    assert progress is not None, "the header would read step 0, phase –, epoch –"
    assert (progress["step"], progress["epoch"], progress["phase"], progress["elapsed"]) == (30, 2, 0, 100.0)
    model = RunModel(name="resumed")
    model.load_snapshot(snapshot)
    model.preparing = None  # what the header shows once the store is ready, before the first step
    info = HeaderInfo.from_model(model, "live", utc_clock())
    assert info.step.startswith("step 30/50") and info.epoch == "epoch 3/?" and "elapsed 1m40s" == info.elapsed


def test_elapsed_after_a_crash_starts_from_what_state_json_recorded(tmp_path):
    import json

    from tests.run_configs import MFCC_MLP, RESNET_TINY, run_config
    from trainer.engine import Trainer

    cfg = run_config(RESNET_TINY, **MFCC_MLP, max_steps=6, **{"checkpoint.interval_seconds": 3600})
    assert Trainer(cfg, tmp_path).run() == "finished"
    crashed_at = 10_000.0  # what the daemon last wrote: it trained on after the checkpoint, then died
    (tmp_path / "state.json").write_text(json.dumps({"state": "interrupted", "step": 6, "elapsed": crashed_at}))
    trainer = Trainer(cfg, tmp_path)
    trainer.setup()
    try:
        assert trainer.state.elapsed >= crashed_at  # the checkpoint's own elapsed is a few seconds
    finally:
        trainer.checkpoints.store.close()


@async_test
async def test_escape_goes_to_the_run_list_even_when_attached_by_name(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped")
    app = make_app(run_dir, lister=lambda root: [])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, what="the run")
        assert footer_keys(app).get("escape") == "Runs" and footer_keys(app).get("r") == "Resume run"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.query("#runs"), what="the run list")


@async_test
async def test_the_footer_fits_80_columns_and_offers_ack_only_with_an_alert(live_run):
    """At 80x24 the footer was wider than the terminal (`? Help` cut off): it is compact below
    120 columns, and `a Ack` is offered only while an alert is in front."""
    from textual.widgets._footer import FooterKey

    run_dir, _ = live_run
    app = make_app(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.link_state == "live",
                       what="the live dashboard")
        await pilot.pause(0.1)
        bar = app.screen.query_one("AlertBar")
        assert bar.book.top() is not None, "the recorded stream has a crash alert: the test needs one"
        assert footer_keys(app).get("a") == "Ack"
        keys = list(app.screen.query(FooterKey))
        assert {k.description for k in keys} >= {"Help", "Ack", "Runs", "Stop"}
        assert max(k.region.right for k in keys) <= 80, [(k.description, k.region) for k in keys]
        while bar.book.top() is not None:
            await pilot.press("a")
            await pilot.pause(0.05)
        await wait_for(pilot, lambda: "a" not in footer_keys(app), what="the ack key to go")
