"""Render the README screenshot: docs/dashboard.svg (and .png), drawn from a real run's recording.

A fake daemon (tests/tui_fakes.py) serves the recording (tests/data/real_run.msgpack, made by
`bench/record_run.py` from a real daemon: its welcome and the frames that followed) on a
temporary socket, the TUI attaches to it headless with the clock frozen at the recording's last
frame, and the screen is exported with Textual's `App.export_screenshot`, then converted to PNG
with rsvg-convert (skipped, with a note, where it is not installed). Re-run after changing the UI:

    python bench/screenshot.py [--size 160x48] [--view dashboard|detail|events|system] [--out docs/dashboard.svg]
"""
from __future__ import annotations

import argparse
import asyncio
import json
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

RECORDING = ROOT / "tests" / "data" / "real_run.msgpack"
VIEW_KEYS = {"dashboard": "1", "detail": "2", "events": "3", "system": "4"}


def recording_end(frames: list[dict]) -> tuple[float, int]:
    """(time of the last frame, last step) of a recording: the frozen clock and what to wait for."""
    snapshot = frames[0]["snapshot"]
    times = [f["time"] for f in frames[1:] if isinstance(f.get("time"), (int, float))]
    steps = [f["step"] for f in frames[1:] if f["type"] == "progress"]
    return max(times or [snapshot["progress"]["time"]]), (steps or [snapshot["progress"]["step"]])[-1]


def recording_app(run_dir: Path, frames: list[dict]) -> LonghaulApp:
    """The app as a user starts it (the default refresh rate shows in the footer), on the
    recording's clock."""
    return LonghaulApp(run_dir, run_dir.parent, clock=fmt.frozen_clock(recording_end(frames)[0]))


async def replayed(pilot, frames: list[dict]) -> None:
    """Wait until the whole recording is on screen."""
    last_step = recording_end(frames)[1]

    def shown() -> bool:
        screen = pilot.app.screen
        return (isinstance(screen, RunScreen) and screen.link_state == "live"
                and screen.model.step == last_step and not screen._refresh_pending
                and bool(screen.query("FooterKey")))

    await wait_for(pilot, shown, what="the recording")
    await pilot.pause(0.3)


async def screenshot(run_dir: Path, frames: list[dict], size: tuple[int, int], view: str) -> str:
    app = recording_app(run_dir, frames)
    async with app.run_test(size=size) as pilot:
        await replayed(pilot, frames)
        await pilot.press(VIEW_KEYS[view])
        await pilot.pause(0.3)
        return app.export_screenshot(title=f"longhaul attach {run_dir.name}")


def write_run_dir(run_dir: Path, welcome: dict, pid: int) -> None:
    """The run directory a client looks at before it connects: a state.json naming a live owner
    (the recording itself holds everything the screen shows)."""
    run_dir.mkdir(parents=True)
    progress = welcome["snapshot"]["progress"]
    (run_dir / "state.json").write_text(json.dumps({
        "name": run_dir.name, "state": "running", "pid": pid, "step": progress["step"],
        "total_steps": progress["total_steps"], "updated": progress["time"]}))


def to_png(svg: Path) -> None:
    """`svg` as a PNG beside it, in 128 colours (a quarter of the bytes, the same picture: a
    terminal has few colours)."""
    if shutil.which("rsvg-convert") is None:
        print("rsvg-convert not found: no PNG (apt install librsvg2-bin)")
        return
    png = svg.with_suffix(".png")
    subprocess.run(["rsvg-convert", "-o", str(png), str(svg)], check=True)
    from PIL import Image

    Image.open(png).convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="160x48", help="terminal size WxH")
    parser.add_argument("--view", choices=sorted(VIEW_KEYS), default="dashboard")
    parser.add_argument("--recording", default=str(RECORDING))
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.svg"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = tui_fakes.read_stream(Path(args.recording))

    workdir = Path(tempfile.mkdtemp(prefix="lhshot"))
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="lh")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "longhaul-screenshot-owner"])
    run_dir = workdir / frames[0]["run"]["name"]
    write_run_dir(run_dir, frames[0], owner.pid)
    daemon = DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        svg = asyncio.run(screenshot(run_dir, frames, (width, height), args.view))
    finally:
        daemon.close()
        owner.kill()
        owner.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
    out = Path(args.out)
    out.write_text(svg)
    to_png(out)
    print(f"wrote {out} ({width}x{height}, {args.view} view, from {args.recording})")


if __name__ == "__main__":
    main()
