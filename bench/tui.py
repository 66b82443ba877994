"""Benchmark: what the attached TUI costs, and how fast it shows a big run.

1. Idle CPU. A fake daemon in its own process (tests/tui_fakes.py serve) streams what a fast real
   run sends: progress at the daemon's maximum rate (1 / Settings.progress_interval: 5 Hz), system
   samples at the default `daemon.system_interval` (0.5 Hz), a log line a second and an event
   every 10 s. The TUI runs in another process and we measure that process's CPU time over
   --seconds (default 20) after a warm-up, at the app's default refresh interval. Two variants:
   - `headless`: Textual's headless driver (everything but writing escape codes to a terminal);
   - `pty`: a real run under a pseudo-terminal of the same size, output drained by this script
     (what an SSH session costs, terminal output included).
2. Time to full dashboard for a run with --steps (default 1,000,000) logged steps, measured in a
   fresh process from its first line (imports included) until every dashboard widget holds data:
   - `offline`: no daemon, the run directory is read: with the series cache a finished run's
     daemon leaves behind, and `offline_uncached` without it (load_series over the whole file);
   - `snapshot`: a daemon serves a welcome whose series were downsampled (<= 1000 points each).

Prints a human summary, then one JSON line last.

    python bench/tui.py [--seconds 20] [--steps 1000000] [--size 160x48] [--skip-cpu] [--skip-load] [--app DIR]
        [--refresh SECONDS]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()  # the first line of a child process: "time to dashboard" counts from here
ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "tui_fakes.py"  # the fake daemon and runs always come from this tree
APP_ROOT = Path(os.environ.get("LONGHAUL_BENCH_APP", ROOT))  # the TUI measured (--app: another checkout)
sys.path[:0] = [str(APP_ROOT), str(ROOT / "tests")]


# ----------------------------------------------------------------------------- helpers
def start_daemon(socket: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """The fake daemon in its own process; returns once it listens."""
    proc = subprocess.Popen([sys.executable, str(FAKES), "serve", str(socket), str(run_dir), *extra],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"fake daemon did not start (said {line!r})")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_run(root: Path, name: str, steps: int, state: str, pid) -> Path:
    """A run directory; for big runs the history is written once and reused across benchmark runs."""
    import tui_fakes

    run_dir = tui_fakes.write_run_dir(root / name, state=state, pid=pid, steps=min(steps, 2000))
    if steps > 2000:
        cache = Path(tempfile.gettempdir()) / f"longhaul-bench-history-{steps}.msgpack"
        if not cache.exists():
            print(f"writing a {steps:,}-step history to {cache} (once)...", file=sys.stderr)
            tui_fakes.write_big_history(cache.with_suffix(".tmp"), steps)
            cache.with_suffix(".tmp").rename(cache)
        shutil.copyfile(cache, run_dir / "history.msgpack")
        plan = tui_fakes.demo_plan(steps_per_epoch=max(1, steps // 15))
        (run_dir / "plan.json").write_text(json.dumps({"plan": plan.to_dict(), "config": tui_fakes.config_summary()}))
        state_file = json.loads((run_dir / "state.json").read_text())
        state_file.update(step=steps, total_steps=plan.total_steps)
        (run_dir / "state.json").write_text(json.dumps(state_file))
    return run_dir


def stream_rates() -> list[str]:
    """The fake daemon's options for a live stream like a fast real run's (see the docstring)."""
    from trainer.config import DaemonConfig
    from trainer.daemon.settings import Settings

    progress_hz = 1 / Settings().progress_interval
    system_hz = 1 / DaemonConfig().system_interval
    return ["--progress-hz", f"{progress_hz:g}", "--system-hz", f"{system_hz:g}", "--log-hz", "1", "--event-hz", "0.1"]


def refresh_option() -> dict:
    """The app's keyword options from --refresh (none: the app's default refresh interval)."""
    return json.loads(os.environ.get("LONGHAUL_BENCH_APP_OPTIONS", "{}"))


def owner_process() -> subprocess.Popen:
    """A live process whose argv says longhaul, so state.json's pid reads as a running run."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "longhaul-bench-owner"])


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ----------------------------------------------------------------------------- child modes
def child_headless(run_dir: str, size: str, warmup: float, seconds: float) -> None:
    """Run the app headless against the daemon; print the CPU seconds used over `seconds`."""
    from tui.app import LonghaulApp
    from tui.screens.run import RunScreen

    width, height = (int(v) for v in size.split("x"))
    app = LonghaulApp(Path(run_dir), Path(run_dir).parent, **refresh_option())
    result = {}

    async def measure() -> None:
        import asyncio

        while not (app.screen_stack and isinstance(app.screen, RunScreen) and app.screen.link_state == "live"):
            await asyncio.sleep(0.05)
        await asyncio.sleep(warmup)
        before, wall = time.process_time(), time.perf_counter()
        step_before = app.screen.model.step
        await asyncio.sleep(seconds)
        result.update(cpu_s=time.process_time() - before, wall_s=time.perf_counter() - wall,
                      steps_seen=app.screen.model.step - step_before)
        app.exit()

    async def main() -> None:
        import asyncio

        task = asyncio.create_task(app.run_async(headless=True, size=(width, height)))
        await asyncio.sleep(0)
        await measure()
        await task

    import asyncio

    asyncio.run(main())
    print(json.dumps(result))


def child_dashboard(run_dir: str, mode: str) -> None:
    """Start the app (headless) and print the seconds from process start until the dashboard is full."""
    import asyncio

    from tui.app import LonghaulApp
    from tui.screens.run import RunScreen
    from tui.widgets.charts import MetricTile

    imported = time.perf_counter() - STARTED
    app = LonghaulApp(Path(run_dir), Path(run_dir).parent)

    def full() -> bool:
        if not app.screen_stack:
            return False
        screen = app.screen
        if not isinstance(screen, RunScreen) or not screen.loaded:
            return False
        if mode == "snapshot" and screen.link_state != "live":
            return False
        tiles = [t for t in screen.query(MetricTile) if t.display]
        timeline = screen.query_one("#timeline")
        return bool(timeline.spans) and all(t.series is not None and len(t.series) for t in tiles)

    async def main() -> float:
        task = asyncio.create_task(app.run_async(headless=True, size=(160, 48)))
        while not full():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)  # let the refresh that filled the widgets paint
        shown = time.perf_counter() - STARTED
        points = max(len(s) for s in app.screen.model.series.values())
        app.exit()
        await task
        return shown, points

    shown, points = asyncio.run(main())
    print(json.dumps({"import_s": imported, "dashboard_s": shown, "max_points_per_series": points}))


# ----------------------------------------------------------------------------- parent
def run_child(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cpu_headless(root: Path, env: dict, size: str, seconds: float) -> dict:
    from trainer.run.sockets import socket_path

    owner = owner_process()
    run_dir = make_run(root, "idle-headless", 2000, "running", owner.pid)
    daemon = start_daemon(socket_path(run_dir), run_dir, *stream_rates())
    try:
        result = run_child("--child-headless", str(run_dir), size, "3", str(seconds), env=env)
    finally:
        stop(daemon)
        owner.kill()
    result["cpu_percent_of_one_core"] = 100 * result["cpu_s"] / result["wall_s"]
    return result


class PtyProcess:
    """A command under a pseudo-terminal of `size` (WxH), its output read and thrown away by a
    thread (what a terminal costs, escape codes included); `received` counts the bytes."""

    def __init__(self, argv: list[str], env: dict, size: str) -> None:
        import fcntl
        import pty
        import termios

        width, height = (int(v) for v in size.split("x"))
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env=dict(env, TERM="xterm-256color", COLUMNS=str(width), LINES=str(height)))
        os.close(slave)
        self.received = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args[:4]} exited early with {self.proc.returncode}")

    def stop(self) -> None:
        """SIGTERM to its process group (SIGKILL after 5 s), then close the terminal."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            self.proc.wait()
        os.close(self.master)


def bench_cpu_pty(root: Path, env: dict, size: str, seconds: float, warmup: float = 5.0) -> dict:
    """The real app in a pseudo-terminal; its output is read and thrown away by a thread."""
    from trainer.run.sockets import socket_path

    owner = owner_process()
    run_dir = make_run(root, "idle-pty", 2000, "running", owner.pid)
    daemon = start_daemon(socket_path(run_dir), run_dir, *stream_rates())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from tui.app import LonghaulApp; "
            "import json, os; LonghaulApp(Path(sys.argv[2]), Path(sys.argv[2]).parent, "
            "**json.loads(os.environ.get('LONGHAUL_BENCH_APP_OPTIONS', '{}'))).run()")
    app = PtyProcess([sys.executable, "-c", code, str(APP_ROOT), str(run_dir)], env, size)
    try:
        time.sleep(warmup)
        app.check_running()
        before, bytes_before, wall = cpu_seconds(app.proc.pid), app.received, time.perf_counter()
        time.sleep(seconds)
        cpu, wall = cpu_seconds(app.proc.pid) - before, time.perf_counter() - wall
        out_bytes = app.received - bytes_before
    finally:
        app.stop()
        stop(daemon)
        owner.kill()
    return {"cpu_s": cpu, "wall_s": wall, "cpu_percent_of_one_core": 100 * cpu / wall,
            "terminal_bytes_per_s": out_bytes / wall}


def bench_dashboard(root: Path, env: dict, steps: int) -> dict:
    from trainer.run.sockets import socket_path

    results = {}
    from trainer.run.rundir import RunDir

    offline_dir = make_run(root, "big-offline", steps, "stopped", None)
    cold = []
    for _ in range(3):  # no series cache: the history is downsampled (and the cache written)
        RunDir(offline_dir).series_cache.unlink(missing_ok=True)
        cold.append(run_child("--child-dashboard", str(offline_dir), "offline", env=env))
    results["offline_uncached"] = min(cold, key=lambda r: r["dashboard_s"])
    # what a finished or stopped run looks like: its daemon left the cache at exit
    results["offline"] = min((run_child("--child-dashboard", str(offline_dir), "offline", env=env) for _ in range(3)),
                             key=lambda r: r["dashboard_s"])
    owner = owner_process()
    live_dir = make_run(root, "big-live", steps, "running", owner.pid)
    daemon = start_daemon(socket_path(live_dir), live_dir, "--history", str(live_dir / "history.msgpack"), str(steps))
    try:
        results["snapshot"] = min((run_child("--child-dashboard", str(live_dir), "snapshot", env=env) for _ in range(3)),
                                  key=lambda r: r["dashboard_s"])
    finally:
        stop(daemon)
        owner.kill()
    from trainer.history import load_series

    started = time.perf_counter()
    load_series(offline_dir / "history.msgpack")
    results["load_series_s"] = time.perf_counter() - started
    results["history_bytes"] = (offline_dir / "history.msgpack").stat().st_size
    return results


def main() -> None:
    global APP_ROOT
    if sys.argv[1:2] == ["--child-headless"]:
        child_headless(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return
    if sys.argv[1:2] == ["--child-dashboard"]:
        child_dashboard(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU measurement window")
    parser.add_argument("--steps", type=int, default=1_000_000, help="logged steps of the big run")
    parser.add_argument("--size", default="160x48", help="terminal size WxH")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--refresh", type=float, help="the TUI's refresh interval (default: the app's default)")
    parser.add_argument("--app", metavar="DIR", help="measure the TUI of another checkout (e.g. the code before a "
                        "change) with this tree's benchmark and fake daemon")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lhbench"))
    runtime = tempfile.mkdtemp(prefix="lh")
    if args.app:  # before anything uses APP_ROOT: this process (the pty variant) and the children
        APP_ROOT = Path(args.app).resolve()
        os.environ["LONGHAUL_BENCH_APP"] = str(APP_ROOT)
    if args.refresh is not None:
        os.environ["LONGHAUL_BENCH_APP_OPTIONS"] = json.dumps({"refresh_interval": args.refresh})
    env = dict(os.environ, XDG_RUNTIME_DIR=runtime, PYTHONPATH=str(APP_ROOT))
    os.environ["XDG_RUNTIME_DIR"] = runtime
    summary: dict = {"app": str(APP_ROOT), "refresh": args.refresh or "default", "size": args.size, "seconds": args.seconds, "steps": args.steps, "cpus": os.cpu_count(),
                     "load_average_1m_before": round(os.getloadavg()[0], 2)}
    try:
        if not args.skip_cpu:
            summary["idle_headless"] = bench_cpu_headless(root, env, args.size, args.seconds)
            print(f"idle, headless: {summary['idle_headless']['cpu_percent_of_one_core']:.2f}% of one core "
                  f"({summary['idle_headless']['steps_seen']} progress frames seen)")
            summary["idle_pty"] = bench_cpu_pty(root, env, args.size, args.seconds)
            print(f"idle, real terminal (pty): {summary['idle_pty']['cpu_percent_of_one_core']:.2f}% of one core, "
                  f"{summary['idle_pty']['terminal_bytes_per_s']:.0f} bytes/s to the terminal")
        if not args.skip_load:
            summary["dashboard"] = bench_dashboard(root, env, args.steps)
            d = summary["dashboard"]
            print(f"{args.steps:,}-step run ({d['history_bytes'] / 1e6:.0f} MB history): full dashboard in "
                  f"{d['offline']['dashboard_s']:.2f} s offline ({d['offline_uncached']['dashboard_s']:.2f} s without "
                  f"the series cache), {d['snapshot']['dashboard_s']:.2f} s via snapshot "
                  f"(imports {d['offline']['import_s']:.2f} s; load_series alone {d['load_series_s']:.2f} s)")
        print(json.dumps(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
