"""Render the README screenshot: docs/dashboard.svg, the dashboard drawn from the recorded stream.

A fake daemon (tests/tui_fakes.py) serves tests/data/recorded_stream.msgpack on a temporary
socket, the TUI attaches to it headless with the clock frozen at the recording's time, and the
screen is exported with Textual's `App.export_screenshot`. Re-run after changing the UI:

    python bench/screenshot.py [--size 160x48] [--view dashboard|detail|events] [--out docs/dashboard.svg]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import tui_fakes  # noqa: E402
from tui_fakes import DaemonThread, wait_for  # noqa: E402

from trainer.run.sockets import socket_path  # noqa: E402
from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402

VIEW_KEYS = {"dashboard": "1", "detail": "2", "events": "3"}


async def screenshot(run_dir: Path, size: tuple[int, int], view: str) -> str:
    app = LonghaulApp(run_dir, run_dir.parent, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)
    async with app.run_test(size=size) as pilot:
        def shown() -> bool:
            screen = app.screen
            return (isinstance(screen, RunScreen) and screen.link_state == "live"
                    and screen.model.step == tui_fakes.SNAPSHOT_STEP + 4 and not screen._refresh_pending)

        await wait_for(pilot, shown, what="the recorded stream")
        await pilot.press(VIEW_KEYS[view])
        await pilot.pause(0.3)
        return app.export_screenshot(title=f"longhaul attach {tui_fakes.RUN_NAME}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="160x48", help="terminal size WxH")
    parser.add_argument("--view", choices=sorted(VIEW_KEYS), default="dashboard")
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.svg"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    workdir = Path(tempfile.mkdtemp(prefix="lhshot"))
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="lh")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "longhaul-screenshot-owner"])
    run_dir = tui_fakes.write_run_dir(workdir / tui_fakes.RUN_NAME, state="running", pid=owner.pid)
    daemon = DaemonThread(socket_path(run_dir), run_dir).start()
    try:
        svg = asyncio.run(screenshot(run_dir, (width, height), args.view))
    finally:
        daemon.close()
        owner.kill()
        owner.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
    Path(args.out).write_text(svg)
    print(f"wrote {args.out} ({width}x{height}, {args.view} view)")


if __name__ == "__main__":
    main()
