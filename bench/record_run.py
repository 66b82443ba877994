"""Record what a real daemon sends a client: the stream the README screenshot is drawn from.

Starts a real run (the quickstart, made small: fewer and shorter clips, threads 1) in a temporary
runs root, waits until it is `--at` of the way through, connects like `longhaul attach` (the
real protocol handshake), and saves the welcome and every frame of the next `--seconds` seconds,
as wire bytes, to tests/data/real_run.msgpack. Then it stops the run and removes it.

    python bench/record_run.py [--at 0.7] [--seconds 8] [--out tests/data/real_run.msgpack]

`bench/screenshot.py` replays the recording through the fake daemon (tests/tui_fakes.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from trainer import protocol  # noqa: E402
from trainer.run.sockets import socket_path  # noqa: E402
from trainer.run.state import read_state  # noqa: E402

RUN_NAME = "quickstart"
OUT = ROOT / "tests" / "data" / "real_run.msgpack"
SMALLER = {"threads": 1, "data": {"duration": 0.5, "synthetic": {"train_per_class": 120, "val_per_class": 24}},
           "optim": {"batch_size": 16}, "checkpoint": {"interval_seconds": 30, "keep_last": 2}}
"""What the recording changes in configs/quickstart.yaml: the same model, phases and recipe, in
a few minutes of one core."""
SHOWN_ROOT = "/home/me/longhaul/checkpoints"
"""The runs root the recording shows in place of the temporary one (paths in events and logs)."""


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def longhaul(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"longhaul {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_until(run_dir: Path, fraction: float, timeout: float) -> dict:
    """state.json once the run is `fraction` through its steps (SystemExit if it ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = read_state(run_dir)
        except Exception:  # not written yet, or being replaced
            state = {}
        if state.get("state") in ("failed", "finished", "stopped", "interrupted"):
            raise SystemExit(f"the run ended ({state['state']}) before {fraction:.0%}: record earlier (--at)")
        total = state.get("total_steps") or 0
        if total and (state.get("step") or 0) >= fraction * total:
            return state
        time.sleep(0.5)
    raise SystemExit(f"the run did not reach {fraction:.0%} in {timeout:.0f} s")


def scrub(value, old: str, new: str):
    """`value` (a decoded frame) with every `old` inside its strings replaced by `new`."""
    if isinstance(value, str):
        value = value.replace(old, new)
        if value.endswith("…"):  # a process name cut short: `… /tmp/lhrec9nxf…` is the root too
            for cut in range(len(old) - 1, len(tempfile.gettempdir()) + 1, -1):
                if value.endswith(old[:cut] + "…"):
                    return value[:-cut - 1] + new + "…"
        return value
    if isinstance(value, dict):
        return {k: scrub(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, old, new) for v in value]
    return value


def record(path: Path, seconds: float, root: Path) -> list[bytes]:
    """The welcome and the frames of `seconds` seconds, each as the wire bytes of one frame."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        protocol.send_frame(sock, protocol.hello("longhaul-recorder"), protocol.MAX_CLIENT_FRAME)
        frames = [protocol.recv_frame(sock, protocol.MAX_SERVER_FRAME, timeout=30)]
        if frames[0]["type"] != "welcome":
            raise SystemExit(f"the daemon answered the hello with {frames[0]}")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frames.append(protocol.recv_frame(sock, protocol.MAX_SERVER_FRAME,
                                                  timeout=max(0.05, deadline - time.monotonic())))
            except (TimeoutError, socket.timeout):
                break
    return [protocol.encode(scrub(frame, str(root), SHOWN_ROOT), protocol.MAX_SERVER_FRAME) for frame in frames]


def stop(env: dict, sock: Path, timeout: float = 120.0) -> None:
    """Stop the run (if it still runs) and wait for its daemon to go, before its files are removed."""
    subprocess.run([sys.executable, "-m", "trainer.cli", "stop", RUN_NAME], env=env, cwd=ROOT,
                   capture_output=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, default=0.7, help="how far through the run to attach (0-1)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to record after the welcome")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for the run after this")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lhrec"))
    runtime = Path(tempfile.mkdtemp(prefix="lh"))
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)  # socket_path() here must find the daemon's socket
    env = dict(os.environ, LONGHAUL_ROOT=str(workdir / "runs"), PYTHONPATH=str(ROOT))
    config = workdir / "quickstart.yaml"
    config.write_text(yaml.safe_dump(merged(yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text()), SMALLER)))
    run_dir = workdir / "runs" / RUN_NAME
    try:
        longhaul(env, "start", str(config), "--name", RUN_NAME)
        wait_until(run_dir, args.at, args.timeout)
        frames = record(socket_path(run_dir), args.seconds, run_dir.parent)
    finally:
        stop(env, socket_path(run_dir))
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    Path(args.out).write_bytes(b"".join(frames))
    print(json.dumps({"out": args.out, "frames": len(frames), "bytes": sum(map(len, frames))}))


if __name__ == "__main__":
    main()
