"""Pilot tests of the TUI against a fake daemon (tests/tui_fakes.py) and run directories on disk."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import DaemonThread, wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from trainer.run.sockets import socket_path  # noqa: E402
from tui import fmt, messages  # noqa: E402
from tui.app import LonghaulApp, run_attach  # noqa: E402
from tui.screens.dialogs import ConfirmScreen, SummaryScreen  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.feeds import FeedTail, LogTail  # noqa: E402
from tui.widgets.alerts import AlertBar, layout  # noqa: E402
from tui.widgets.header import RunHeader  # noqa: E402
from tui.widgets.timeline import PhaseTimeline  # noqa: E402

SIZE = (120, 40)


def screen(app) -> RunScreen:
    assert isinstance(app.screen, RunScreen), f"expected the run screen, got {app.screen!r}"
    return app.screen


def header_text(app) -> str:
    return str(app.screen.query_one(RunHeader).render())


def alert_text(app) -> str:
    """Every word of the alert bar, as if it were wide enough (tests/test_tui_alerts.py checks
    what gives way when it is not)."""
    return str(layout(app.screen.query_one(AlertBar).info, 0, narrow=False))


def is_live(app, step: int = tui_fakes.LIVE_STEP) -> bool:
    return isinstance(app.screen, RunScreen) and app.screen.link_state == "live" and app.screen.model.step == step


@async_test
async def test_attach_shows_the_snapshot_and_live_frames(live_run):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.pause(0.1)
        header = header_text(app)
        assert "demo-b0" in header and "RUNNING" in header and "live" in header
        assert "step 6,004/18,750" in header and "phase 2/3 finetune" in header and "epoch 5/15" in header
        assert "ETA 5h39m" in header
        model = screen(app).model
        assert len(model.series["train_loss"]) > 100
        assert model.system["cpu_percent"] == [97.0, 88.5]
        timeline = app.screen.query_one(PhaseTimeline)
        assert [s.name for s in timeline.spans] == ["head", "finetune", "polish"]
        assert timeline.eta_labels[0] == "done" and timeline.eta_labels[1] == "3h59m"
        events = str(app.screen.query_one("#dash-events", FeedTail).render())
        assert "trainer crashed" in events and "checkpoint step 5000" in events
        # the most severe alert is visible from every view (the restart ended with the progress)
        assert "ERROR" in alert_text(app) and "trainer crashed" in alert_text(app)
        await pilot.press("a")  # acknowledged: the next one shows
        assert "swap in use" in alert_text(app) and "1 acknowledged" in alert_text(app)
        assert daemon.requests == []


@async_test
async def test_plan_sent_after_attach_fills_the_timeline(tmp_path, runtime_dir, live_process):
    run_dir = tui_fakes.write_run_dir(tmp_path / "late-plan", state="running", pid=live_process)
    frames = tui_fakes.read_stream()
    plan, config = frames[0]["snapshot"]["plan"], frames[0]["snapshot"]["config"]
    frames[0]["snapshot"]["plan"] = {}
    frames.insert(1, {"type": "plan", "plan": plan, "config": config})
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
            await pilot.pause(0.1)
            timeline = app.screen.query_one(PhaseTimeline)
            assert [s.name for s in timeline.spans] == ["head", "finetune", "polish"]
    finally:
        daemon.close()


@async_test
async def test_pause_then_resume_shows_ack_and_confirming_event(live_run):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.press("p")
        await wait_for(pilot, lambda: "✓ pause" in alert_text(app), what="pause confirmation")
        assert [r["action"] for r in daemon.requests] == ["pause"]
        await wait_for(pilot, lambda: "PAUSED" in header_text(app), what="PAUSED in the header")
        await pilot.press("p")
        await wait_for(pilot, lambda: "✓ resume" in alert_text(app), what="resume confirmation")
        assert [r["action"] for r in daemon.requests] == ["pause", "resume"]
        assert "RUNNING" in header_text(app)


@async_test
async def test_checkpoint_key_requests_a_checkpoint(live_run):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.press("c")
        await wait_for(pilot, lambda: "✓ checkpoint: checkpoint written" in alert_text(app), what="checkpoint done")
        assert [r["action"] for r in daemon.requests] == ["checkpoint"]


@async_test
async def test_stop_asks_for_confirmation_first(live_run):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirm dialog")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the dialog to close")
        await pilot.pause(0.2)
        assert daemon.requests == []
        assert "stop cancelled" in alert_text(app)
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirm dialog")
        await pilot.press("y")
        await wait_for(pilot, lambda: "✓ stop" in alert_text(app), what="stop confirmation")
        assert [r["action"] for r in daemon.requests] == ["stop"]


@async_test
async def test_refused_request_shows_the_error(tmp_path, runtime_dir, live_process):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    daemon = DaemonThread(socket_path(run_dir), run_dir, refuse=True).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
            await pilot.press("c")
            await wait_for(pilot, lambda: "checkpoint refused: cannot checkpoint now" in alert_text(app),
                           what="the refusal")
            assert "ERROR" in alert_text(app) or "refused" in alert_text(app)
    finally:
        daemon.close()


@pytest.mark.parametrize("key", ["d", "q"])
@async_test
async def test_detach_and_quit_leave_the_run_alone(live_run, key):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        await pilot.press(key)
        await pilot.pause(0.1)
    assert app.return_code == 0
    assert daemon.requests == []  # leaving never pauses or stops the run


@async_test
async def test_reconnects_after_the_daemon_restarts(live_run):
    run_dir, daemon = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        daemon.stop()
        await wait_for(pilot, lambda: "disconnected" in alert_text(app), what="the disconnected notice")
        assert "retrying" in alert_text(app)
        assert screen(app).link_state == "retrying"  # the owner process is alive: expect it back
        daemon.start()
        await wait_for(pilot, lambda: is_live(app), what="the reconnection")
        await pilot.pause(0.1)
        assert "disconnected" not in alert_text(app)
        assert daemon.connections == 1  # a fresh daemon object: one connection since it restarted


@async_test
async def test_version_mismatch_is_reported_and_not_retried(tmp_path, runtime_dir, live_process):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    refusal = ("version_mismatch", "client speaks protocol version 1, this daemon speaks 2")
    daemon = DaemonThread(socket_path(run_dir), run_dir, hello_error=refusal).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: "cannot attach" in alert_text(app), what="the refusal")
            assert "this daemon speaks 2" in alert_text(app)
            await wait_for(pilot, lambda: screen(app).loaded, what="the run directory as a fallback")
            await pilot.pause(0.6)
            assert daemon.connections == 1  # a version mismatch is not retried
            assert "offline" in header_text(app)
    finally:
        daemon.close()


@async_test
async def test_a_crashing_link_is_reported(live_run, monkeypatch):
    run_dir, _ = live_run

    async def broken_stream(self, reader):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("tui.link.DashboardLink._stream", broken_stream)
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "daemon link failed" in alert_text(app), what="the error")
        assert "simulated bug" in alert_text(app)


@async_test
async def test_offline_mode_reads_the_run_directory(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped", steps=5000)
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: screen(app).loaded, what="the run directory to load")
        await pilot.pause(0.1)
        header = header_text(app)
        assert "STOPPED" in header and "offline" in header and "step 5,000/18,750" in header
        assert "press r to resume" in alert_text(app)
        model = screen(app).model
        assert model.series["train_loss"].last_step == 5000
        assert model.series["val_f1_macro"].last_step == 5000
        events = str(app.screen.query_one("#dash-events", FeedTail).render())
        assert "checkpoint step 5000" in events
        await pilot.press("3")
        await pilot.pause(0.1)
        log = "\n".join(str(line.text) for line in app.screen.query_one("#all-log", LogTail).lines)
        assert "step 2900: loss" in log  # the tail of train.log
        assert app.screen.check_action("pause", ()) is False  # no daemon: no controls
        assert app.screen.check_action("resume_run", ()) is True


@async_test
async def test_resume_key_runs_longhaul_resume_then_connects(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=None)  # -> interrupted
    marker = tmp_path / "resumed"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ok')"]
    daemon = DaemonThread(socket_path(run_dir), run_dir)
    try:
        app = make_app(run_dir, resume_command=lambda d: command, link_retry_max=30.0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: screen(app).loaded, what="the run directory to load")
            await pilot.pause(0.1)
            assert "INTERRUPTED" in header_text(app)
            daemon.start()  # what `longhaul resume` would have started; found only after r
            await pilot.press("r")
            await wait_for(pilot, marker.exists, what="the resume command to run")
            await wait_for(pilot, lambda: is_live(app), timeout=5, what="the connection after resume")
            assert "✓ resume" in alert_text(app)
    finally:
        daemon.close()


@async_test
async def test_resume_failure_is_reported(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="failed")
    command = [sys.executable, "-c", "import sys; sys.exit('longhaul resume: no valid checkpoint')"]
    app = make_app(run_dir, resume_command=lambda d: command)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: screen(app).loaded, what="the run directory to load")
        await pilot.press("r")
        await wait_for(pilot, lambda: "resume failed" in alert_text(app), what="the failure")
        assert "no valid checkpoint" in alert_text(app)


@async_test
async def test_finished_event_shows_the_summary(tmp_path, runtime_dir, live_process):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    frames = tui_fakes.read_stream()
    finished = tui_fakes.event(900, tui_fakes.T0, "finished", "info", "finished at step 18750",
                               best={"step": 17500, "val_f1_macro": 0.91, "val_loss": 0.3},
                               last={"step": 18750, "val_f1_macro": 0.9, "val_loss": 0.31},
                               classes=tui_fakes.CLASSES, confusion=tui_fakes.confusion())
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames + [finished]).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen)
                           and app.screen.query("#summary-confusion"), what="the summary")
            table = app.screen.query_one("#summary-confusion")
            assert table.row_count == len(tui_fakes.CLASSES)
            metrics = app.screen.query_one("#summary-metrics")
            assert ["val_f1_macro", "0.9100", "0.9000"] in [[str(c) for c in metrics.get_row_at(i)]
                                                        for i in range(metrics.row_count)]
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the summary to close")
            assert "FINISHED" in header_text(app)
    finally:
        daemon.close()


@async_test
async def test_picker_lists_runs_and_enter_attaches(tmp_path, runtime_dir, live_process):
    tui_fakes.write_run_dir(tmp_path / "alpha", state="running", pid=live_process)
    tui_fakes.write_run_dir(tmp_path / "beta", state="stopped", steps=2500)
    tui_fakes.write_run_dir(tmp_path / "gamma", state="finished", steps=6000, finished=True)
    app = LonghaulApp(None, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), picker_interval=0.2, link_retry_max=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#runs")
        await wait_for(pilot, lambda: table.row_count == 3, what="three runs in the picker")
        await pilot.pause(0.1)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(3)]
        assert [r[0] for r in rows] == ["▶ alpha", "  beta", "  gamma"]  # the cursor row is marked in text
        assert [r[1] for r in rows] == ["RUNNING", "STOPPED", "FINISHED"]
        assert rows[1][4] == "2,500/18,750" and "13%" in rows[1][3]
        (tmp_path / "beta" / "state.json").write_text((tmp_path / "beta" / "state.json").read_text()
                                                       .replace('"stopped"', '"failed"'))
        await wait_for(pilot, lambda: str(table.get_row_at(1)[1]) == "FAILED", what="the live update")
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        assert app.screen.run_dir == (tmp_path / "gamma").absolute()
        await wait_for(pilot, lambda: app.screen.loaded, what="the run directory to load")
        await pilot.press("f")  # the finished run's summary, offline
        await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the summary")
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: app.screen.query("#runs"), what="back to the picker")


@async_test
async def test_progress_messages_coalesce(live_run):
    run_dir, _ = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: is_live(app), what="the live dashboard")
        run_screen = screen(app)
        handled = []
        original = run_screen.model.apply_progress
        run_screen.model.apply_progress = lambda body: (handled.append(body["step"]), original(body))
        base = dict(run_screen.model.progress)
        for step in range(7000, 7200):
            run_screen.post_message(messages.ProgressReceived(dict(base, step=step)))
        await wait_for(pilot, lambda: run_screen.model.step == 7199, what="the newest progress")
        assert handled[-1] == 7199
        assert len(handled) < 200  # queued progress frames were merged, not handled one by one
        # frames the link merged into a waiting message still add their series points
        message = messages.ProgressReceived(dict(base, step=8000, metrics={"samples_per_s": 8000.0}))
        for step in range(8001, 8010):
            message.merge(dict(base, step=step, metrics={"samples_per_s": float(step)}))
        run_screen.post_message(message)
        await wait_for(pilot, lambda: run_screen.model.step == 8009, what="the merged progress")
        series = run_screen.model.series["samples_per_s"]
        assert series.steps[-10:] == series.values[-10:] == [float(s) for s in range(8000, 8010)]


@async_test
async def test_new_data_is_painted_at_once_and_live_frames_wait_for_the_throttle(live_run, tmp_path):
    run_dir, _ = live_run
    app = make_app(run_dir, refresh_interval=30.0)
    async with app.run_test(size=SIZE) as pilot:
        # the mount painted an empty dashboard; the snapshot must not wait 30 s for the next paint
        await wait_for(pilot, lambda: "step 6,00" in header_text(app), timeout=5, what="the snapshot painted")
        run_screen = screen(app)
        run_screen.post_message(messages.ProgressReceived(dict(run_screen.model.progress, step=7000)))
        await wait_for(pilot, lambda: run_screen.model.step == 7000, what="the progress handled")
        await pilot.pause(0.3)
        assert "step 7,000/" not in header_text(app)  # progress repaints stay throttled
    offline_dir = tui_fakes.write_run_dir(tmp_path / "stopped-run", state="stopped", steps=5000)
    app = make_app(offline_dir, refresh_interval=30.0)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "step 5,000/18,750" in header_text(app), timeout=5, what="the run directory painted")


def test_run_attach_names_the_runs_that_exist(tmp_path, capsys):
    tui_fakes.write_run_dir(tmp_path / "alpha", state="stopped", steps=10)
    assert run_attach("nope", tmp_path) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "alpha" in err


# ----------------------------------------------------------------------------- the stored evaluation
def table_rows(table) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@async_test
async def test_summary_shows_the_test_evaluation_and_the_detail_view_its_per_class_table(
        tmp_path, runtime_dir, monkeypatch):
    monkeypatch.setattr(RunScreen, "EVALUATION_INTERVAL", 0.05)  # checked often: still read once
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result("val", at=tui_fakes.T0 - 60),
                               tui_fakes.evaluation_result("test", at=tui_fakes.T0 - 120))
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: screen(app).loaded and screen(app).model.evaluation, what="the evaluation")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen), what="the summary")
        title = str(app.screen.query_one("#summary-evaluation-title").render())
        assert "test split · best weights (step 6,000) · n" in title  # the test result, though val is newer
        rows = table_rows(app.screen.query_one("#summary-evaluation"))
        assert rows[0] == ["accuracy", "0.871", "0.842–0.899", "0.880"]
        assert rows[1] == ["F1 macro", "0.863", "0.831–0.892", "0.875"]
        assert rows[2] == ["AUC-ROC macro", "0.951", "0.938–0.963", "0.957"]
        assert [c.label.plain for c in app.screen.query_one("#summary-evaluation").columns.values()][2:] == [
            "95% interval", "with TTA ×6"]
        calibration = str(app.screen.query_one("#summary-calibration").render())
        assert "temperature 1.43" in calibration and "ECE 0.081 → 0.023" in calibration
        assert "NLL 0.452 → 0.382" in calibration and "ECE with TTA 0.020" in calibration
        assert app.screen.query_one("#summary-confusion").row_count == len(tui_fakes.CLASSES)
        assert app.screen.query("#summary-metrics")  # training's validation metrics stay
        assert not app.screen.query("#summary-stale")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the summary to close")
        await pilot.press("t")  # the per-class table of the newest evaluation (val)
        await wait_for(pilot, lambda: app.screen.query("#detail-table") and app.screen.query_one(
            "#detail-table").row_count == len(tui_fakes.CLASSES), what="the per-class table")
        await pilot.pause(0.1)
        table = app.screen.query_one("#detail-table")
        assert table.display and not app.screen.query_one("#detail-chart").display
        assert [c.label.plain for c in table.columns.values()] == [
            "class", "sens.", "spec.", "PPV", "NPV", "AUC-ROC", "n", "AUC-PR", "F1"]
        rows = table_rows(table)
        assert rows[0] == ["tone", "0.880", "0.980", "0.900", "0.985", "0.970", "60", "0.910", "0.890"]
        assert rows[-1][0] == "pulse" and rows[-1][7] == "–"
        assert "val split" in str(app.screen.query_one("#detail-stats").render())
        await pilot.press("down")  # val/best with TTA
        await pilot.pause(0.1)
        assert "with TTA" in str(app.screen.query_one("#detail-stats").render())
        assert table_rows(table)[0][1] == "0.890"
        await pilot.press("up", "up")  # back to a metric: the chart again
        await pilot.pause(0.1)
        assert app.screen.query_one("#detail-chart").display and not table.display
        assert screen(app).evaluation_watch.reads == 1  # one read per change of the file, not per check


@async_test
async def test_an_evaluation_written_after_the_finished_event_fills_the_open_summary(
        tmp_path, runtime_dir, live_process, monkeypatch):
    monkeypatch.setattr(RunScreen, "EVALUATION_INTERVAL", 0.1)
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    finished = tui_fakes.event(900, tui_fakes.T0, "finished", "info", "finished at step 18750",
                               best={"step": 17500, "val_f1_macro": 0.91}, last={"step": 18750, "val_f1_macro": 0.9},
                               classes=tui_fakes.CLASSES, confusion=tui_fakes.confusion())
    started = tui_fakes.event(901, tui_fakes.T0, "evaluation", "info", "evaluating the test split with best.pt",
                              what="evaluation_started")  # trainer.posthoc.after
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=tui_fakes.read_stream() + [finished, started]).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen)
                           and app.screen.query("#summary-evaluating"), what="the summary, evaluation under way")
            assert not app.screen.query("#summary-evaluation")  # nothing stored yet
            assert "predicted; last eval" in str(app.screen.query("Static")[-1].render())
            tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result(step=6000, tta=False))
            await wait_for(pilot, lambda: app.screen.query("#summary-evaluation"), what="the evaluation")
            assert not app.screen.query("#summary-evaluating")
            assert [c.label.plain for c in app.screen.query_one("#summary-evaluation").columns.values()] == [
                "metric", "value", "95% interval"]
            # best.pt moved on to step 17,500 after the evaluation of step 6,000: said so
            assert "best.pt is now from step 17,500" in str(app.screen.query_one("#summary-stale").render())
    finally:
        daemon.close()


@async_test
async def test_a_damaged_evaluation_is_reported_and_the_rest_still_shows(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped")
    (run_dir / "evaluation.json").write_text("{not json")
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "evaluation not shown" in alert_text(app), what="the problem")
        assert "evaluation.json: not JSON" in alert_text(app)
        assert app.screen.check_action("summary", ()) is False and app.screen.check_action("per_class", ()) is False
