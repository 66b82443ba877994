"""The System view (`4`) and the dashboard's system panel: the process table, the trainer's
threads, the top processes when there is room, `temp n/a`, and the empty panel at 80x24."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import DaemonThread, wait_for  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from textual.geometry import Region  # noqa: E402

from trainer.run.sockets import socket_path  # noqa: E402
from tui import messages  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.processes import SystemView  # noqa: E402
from tui.widgets.system import SystemPanel  # noqa: E402

SMALL, LARGE = (80, 24), (160, 48)


def system_body(**changes) -> dict:
    body = {k: v for k, v in tui_fakes.system_sample(tui_fakes.T0).items() if k != "type"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def frames_with(body: dict) -> list[dict]:
    """The recorded stream with every system sample replaced by `body`."""
    frames = tui_fakes.read_stream()
    frames[0]["snapshot"]["system"] = body
    return [f if f.get("type") != "system" else {"type": "system", **body} for f in frames]


def live(app) -> bool:
    return isinstance(app.screen, RunScreen) and app.screen.link_state == "live" and app.screen.model.system


def lines(widget) -> list[str]:
    return str(widget.render()).splitlines()


async def open_view(app, pilot) -> SystemView:
    await wait_for(pilot, lambda: live(app), what="the live dashboard")
    await pilot.press("4")
    await wait_for(pilot, lambda: app.screen.query(SystemView), what="the system view")
    view = app.screen.query_one(SystemView)
    await wait_for(pilot, lambda: view.system is not None, what="a sample in the system view")
    await pilot.pause(0.1)
    return view


def serve(tmp_path, live_process, body: dict):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    return run_dir, DaemonThread(socket_path(run_dir), run_dir, frames=frames_with(body)).start()


@async_test
async def test_system_view_shows_processes_and_threads_at_both_sizes(tmp_path, runtime_dir, live_process):
    run_dir, daemon = serve(tmp_path, live_process, system_body())
    try:
        for size in (SMALL, LARGE):
            app = make_app(run_dir)
            async with app.run_test(size=size) as pilot:
                view = await open_view(app, pilot)
                text = lines(view)
                assert text[0].startswith("2 cores  load 1.90 1.85 1.80  temp 71°C  ram"), text[0]
                assert any(line.startswith("cpu0") and "97%" in line and "cpu1" in line for line in text), text
                trainer = next(line for line in text if "48213" in line)
                assert "trainer" in trainer and "python" in trainer and "104.0" in trainer and "1.1 GiB" in trainer
                assert text.index(trainer) < text.index(next(line for line in text if "ffmpeg" in line))
                assert any("loader" in line and "48230" in line for line in text)
                assert "other processes: 66% of one core, 1.3 of 2 cores left for the trainer" in text
                assert "trainer threads: 2 busy of 3 shown, `threads: 2` in the config" in text
                assert all(len(line) <= view.size.width for line in text), (size, text)
                # what the widget draws is what the terminal shows: nothing is cut at 80 columns
                assert all(not line.endswith("…") for line in text)
                # threads_follow_load cut the count: the line says so, and still fits
                app.screen.model.apply_event({"seq": 10 ** 6, "time": tui_fakes.T0, "kind": "threads", "level": "info",
                                              "message": "threads 2 -> 1", "data": {"threads": 1, "configured": 2}})
                app.screen.refresh_widgets()
                await wait_for(pilot, lambda: any("using 1 of" in line for line in lines(view)), what="threads in use")
                assert "trainer threads: 2 busy of 3 shown, using 1 of `threads: 2`: the box is busy" in lines(view)
                assert all(len(line) <= view.size.width for line in lines(view)), (size, lines(view))
    finally:
        daemon.close()


@async_test
async def test_tab_reaches_the_system_view(live_run):
    run_dir, _ = live_run
    app = make_app(run_dir)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: live(app), what="the live dashboard")
        for _ in range(3):
            await pilot.press("tab")
        await pilot.pause(0.1)
        assert app.screen.query_one("#views").active == "system"


@async_test
async def test_no_temperature_sensor_reads_n_a(tmp_path, runtime_dir, live_process):
    run_dir, daemon = serve(tmp_path, live_process, system_body(cpu_temp=None))
    try:
        for size in (SMALL, LARGE):
            app = make_app(run_dir)
            async with app.run_test(size=size) as pilot:
                await wait_for(pilot, lambda: live(app), what="the live dashboard")
                await pilot.pause(0.1)
                panel = app.screen.query_one(SystemPanel)
                assert any("load 1.90 1.85 1.80" in line and line.rstrip().endswith("temp n/a")
                           for line in lines(panel)), (size, lines(panel))
                view = await open_view(app, pilot)
                assert "temp n/a" in lines(view)[0]
    finally:
        daemon.close()


@async_test
async def test_top_processes_in_the_panel_only_when_there_is_room(live_run):
    run_dir, _ = live_run
    body = system_body()
    for size, shown in ((LARGE, True), (SMALL, False)):
        app = make_app(run_dir)
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: live(app), what="the live dashboard")
            app.screen.model.apply_system(body)  # the recorded stream predates the process table
            app.screen.refresh_widgets()
            panel = app.screen.query_one(SystemPanel)

            def process_rows() -> list[str]:
                return [line for line in lines(panel) if "% " in line and ("python" in line or "ffmpeg" in line)]

            if shown:  # the panel grows to its new height in a later layout pass: wait for it, not 0.1 s
                await wait_for(pilot, lambda: panel.size.height == 10 and process_rows(), what="the process rows")
            else:
                await pilot.pause(0.1)
            text = lines(panel)
            rows = process_rows()
            if shown:
                assert len(rows) == 3 and "trainer" in rows[0] and "ffmpeg" in rows[1], text
                assert panel.size.height == len(text) == 10
            else:
                assert rows == [] and len(text) == 5, text


@async_test
async def test_empty_panel_text_fits_at_80x24(tmp_path, runtime_dir, live_process):
    offline = tui_fakes.write_run_dir(tmp_path / "old", state="stopped")
    app = make_app(offline)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.screen.loaded, what="the offline run")
        await pilot.pause(0.2)
        panel = app.screen.query_one(SystemPanel)
        assert str(panel.render()) == "system: live runs only"
        panel.system = tui_fakes.system_sample(tui_fakes.T0)  # a run directory's last sample
        assert str(panel.render()) == "system: live runs only"  # is not now: not shown offline
        assert panel.content_region.width >= len("system: waiting for a sample")
        await pilot.press("4")
        await pilot.pause(0.2)
        assert lines(app.screen.query_one(SystemView)) == ["system samples come from a live run"]


@async_test
async def test_sample_from_an_older_daemon_without_the_table(tmp_path, runtime_dir, live_process):
    run_dir, daemon = serve(tmp_path, live_process, system_body(processes=..., trainer_threads=..., cores=...))
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SMALL) as pilot:
            view = await open_view(app, pilot)
            text = lines(view)
            assert text[0].startswith("2 cores") and "no process table (the daemon is older than this TUI)" in text
            assert not any("trainer threads" in line for line in text)
    finally:
        daemon.close()


@async_test
async def test_active_contention_alert_is_shown_whole_in_the_view(tmp_path, runtime_dir, live_process):
    message = ("oversubscribed: load 3.9 on 2 cores and samples/s fell to 6 (best 19); busiest other processes: "
               "ffmpeg (pid 48102, 62% CPU). Fix: stop ffmpeg, or start the next run with `threads: 1` in its config")
    frames = frames_with(system_body())
    frames.append(tui_fakes.event(900, tui_fakes.T0, "contention", "warning", message, alert="oversubscribed"))
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=SMALL) as pilot:
            view = await open_view(app, pilot)
            await wait_for(pilot, lambda: view.contention == message, what="the alert in the view")
            await pilot.pause(0.1)
            strips = view.render_lines(Region(0, 0, view.size.width, view.size.height))
            shown = " ".join(strip.text.strip() for strip in strips)
            assert "Fix: stop ffmpeg, or start the next run with `threads: 1` in its config" in shown
            app.screen.model.apply_event({**tui_fakes.event(901, tui_fakes.T0, "contention", "info", "contention over",
                                                            resolves="oversubscribed"), "seq": 901})
            app.screen.refresh_widgets()
            assert view.contention is None
    finally:
        daemon.close()


@async_test
async def test_contention_alert_shows_in_the_bar_and_ends_with_its_resolution(tmp_path, runtime_dir, live_process):
    from tui.widgets.alerts import AlertBar

    message = "oversubscribed: load 3.9 on 2 cores and samples/s fell to 6 (best 19); busiest other processes: x"
    frames = frames_with(system_body())
    frames.append(tui_fakes.event(900, tui_fakes.T0 + 1, "contention", "warning", message, alert="oversubscribed"))
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        app = make_app(run_dir)
        async with app.run_test(size=LARGE) as pilot:
            await wait_for(pilot, lambda: live(app), what="the live dashboard")

            def bar() -> str:
                return str(app.screen.query_one(AlertBar).render())

            await wait_for(pilot, lambda: "oversubscribed" in app.screen.query_one(AlertBar).book.active,
                           what="the alert in the bar's book")
            await pilot.press("a")  # the recording's crash (an error) goes first; acknowledged, it steps aside
            await wait_for(pilot, lambda: "oversubscribed: load 3.9" in bar(), what="the alert in the bar")
            end = tui_fakes.event(901, tui_fakes.T0 + 2, "contention", "info", "contention over: samples/s back to 18",
                                  resolves="oversubscribed")
            app.screen.post_message(messages.EventsReceived(end))
            await wait_for(pilot, lambda: "oversubscribed" not in bar(), what="the alert ended")
    finally:
        daemon.close()


@async_test
async def test_many_cores_take_few_rows():
    from textual.app import App

    class Host(App):
        def compose(self):
            yield SystemView()

    app = Host()
    async with app.run_test(size=SMALL) as pilot:
        view = app.query_one(SystemView)
        view.system = system_body(cpu_percent=[float(i % 100) for i in range(64)], cores=64)
        await pilot.pause()
        core_lines = [line for line in lines(view) if line.startswith("cpu")]
        assert len(core_lines) == 2 and core_lines[-1].endswith("% avg"), core_lines
        assert all(len(line) <= 78 for line in core_lines), core_lines
        view.system = system_body(cpu_percent=[50.0] * 6, cores=6)  # three bars a row at 80 columns: two rows
        await pilot.pause()
        assert [line[:4] for line in lines(view) if line.startswith("cpu")] == ["cpu0", "cpu3"]


def test_disk_is_low_only_when_it_really_is():
    """Seen: `disk space LOW: 25 GiB free` on a 252 GiB disk (10%), also on a finished run."""
    from tui.widgets.system import disk_is_low

    gib = 1024**3
    assert not disk_is_low({"disk_free": 25 * gib, "disk_total": 252 * gib})
    assert disk_is_low({"disk_free": 4 * gib, "disk_total": 2000 * gib})  # under 5 GiB: always
    assert disk_is_low({"disk_free": 10 * gib, "disk_total": 400 * gib})  # 2.5% and under 20 GiB
    assert not disk_is_low({"disk_free": 60 * gib, "disk_total": 2000 * gib})  # 3%, but 60 GiB
    assert not disk_is_low({"disk_free": None, "disk_total": None})


def test_the_run_model_follows_the_threads_events():
    from tui.model import RunModel

    model = RunModel()
    event = lambda seq, kind, **data: {"seq": seq, "time": tui_fakes.T0, "kind": kind, "level": "info",
                                       "message": kind, "data": data}
    assert model.threads_now is None
    model.apply_event(event(1, "threads", threads=1, configured=2, others_cores=1.0))
    assert model.threads_now == 1
    model.apply_event(event(2, "state", state="starting"))  # a new worker starts with the configured count
    assert model.threads_now is None


GPUS = [{"index": 0, "name": "NVIDIA H200", "util_percent": 87.0, "mem_used": 40 * 2**30, "mem_total": 141 * 2**30,
         "temp_c": 64.0},
        {"index": 1, "name": "NVIDIA L4", "util_percent": None, "mem_used": 512 * 2**20, "mem_total": 24 * 2**30,
         "temp_c": None}]


@async_test
async def test_panel_shows_one_line_per_gpu_and_nothing_without_them():
    from textual.app import App

    class Host(App):
        def compose(self):
            yield SystemPanel()

    app = Host()
    async with app.run_test(size=LARGE) as pilot:
        panel = app.query_one(SystemPanel)
        panel.live = True
        for max_rows, detailed in ((5, False), (40, True)):
            panel.max_rows = max_rows
            panel.system = system_body(gpus=GPUS, processes=[])
            await pilot.pause()
            text = lines(panel)
            assert text[-2:] == ["gpu0 87%  mem 40 GiB/141 GiB  64°C",
                                 "gpu1 n/a  mem 512 MiB/24 GiB  temp n/a"], (max_rows, text)
            assert panel.rows_needed() == len(text) == (2 + 5 + 2 if detailed else 5 + 2), text
            assert any(line.startswith("cpu0") for line in text) == detailed
            panel.system = system_body(processes=[])  # a CPU box (or an older daemon): as before
            await pilot.pause()
            text = lines(panel)
            assert not any(line.startswith("gpu") for line in text) and len(text) == (7 if detailed else 5), text


@async_test
async def test_gpu_lines_on_the_dashboard_at_both_sizes(tmp_path, runtime_dir, live_process):
    run_dir, daemon = serve(tmp_path, live_process, system_body(gpus=GPUS[:1]))
    try:
        for size in (SMALL, LARGE):
            app = make_app(run_dir)
            async with app.run_test(size=size) as pilot:
                await wait_for(pilot, lambda: live(app), what="the live dashboard")
                panel = app.screen.query_one(SystemPanel)
                await wait_for(pilot, lambda: any(line.startswith("gpu0 87%") for line in lines(panel)),
                               what="the GPU line")
                await wait_for(pilot, lambda: panel.size.height == panel.rows_needed(), what="the panel's height")
                assert "gpu0 87%  mem 40 GiB/141 GiB  64°C" in lines(panel), (size, lines(panel))
    finally:
        daemon.close()
