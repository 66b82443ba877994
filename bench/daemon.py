"""The daemon's three targets in one run, JSON on the last line.

1. Checkpoint stall: tf_efficientnetv2_s + AdamW state, the training loop's stall with the
   background writer beside a synchronous torch.save of the same state (bench/checkpoint_stall.py).
   Target: p50 stall <= 10% of the synchronous save.
2. Attach cost of a run with 1,000,000 logged steps: snapshot size and time from connect to the
   complete welcome frame, against a live daemon (fake trainer so the box stays quiet).
   Target: <= 1 s.
3. Training steps/s with no client, 8 attached clients, and one client that never reads
   (bench/daemon_clients.py). Target: within 1% of no client.

    python bench/daemon.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer import daemon, protocol  # noqa: E402
from trainer.run.locate import create_run_dir  # noqa: E402
from trainer.run.sockets import socket_path  # noqa: E402

FAKE_WORKER = ROOT / "tests" / "fake_worker.py"


def last_json(cmd: list[str]) -> dict:
    """Run a bench script, echo its output, return the JSON object on its last line."""
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    print(out.rstrip(), flush=True)
    return json.loads(out.strip().splitlines()[-1])


def first_frame(steps: int, repeats: int) -> dict:
    """Time to the welcome frame of a live daemon whose run has `steps` logged steps."""
    from history_load import write_history

    root = Path(tempfile.mkdtemp(prefix="lh-bench-attach-"))
    run_dir = create_run_dir(root, "big")
    write_history(str(run_dir / "history.msgpack"), steps, eval_every=1000)
    (run_dir / "config.yaml").write_text(json.dumps({"name": "big"}))
    (run_dir / "fake_ckpt").write_text(str(steps))
    (run_dir / "fake.json").write_text(json.dumps({"steps": steps * 2, "step_time": 0.05, "steps_per_epoch": 5000}))
    started = time.perf_counter()
    pid = daemon.launch_daemon(run_dir, worker_script=FAKE_WORKER, wait=30.0)
    path = socket_path(run_dir)
    while not path.exists():
        time.sleep(0.01)
    ready = time.perf_counter() - started
    times, sizes = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            protocol.send_frame(sock, protocol.hello("bench"), protocol.MAX_CLIENT_FRAME)
            welcome = protocol.recv_frame(sock, protocol.MAX_SERVER_FRAME, timeout=30)
            times.append(time.perf_counter() - t0)
        sizes.append(len(protocol.encode(welcome, protocol.MAX_SERVER_FRAME)))
        points = {k: len(v["step"]) for k, v in welcome["snapshot"]["series"].items()}
        time.sleep(0.2)
    os.kill(pid, 15)
    result = {"logged_steps": steps, "daemon_ready_s": round(ready, 3),
              "first_frame_s_median": round(statistics.median(times), 4),
              "first_frame_s_max": round(max(times), 4), "snapshot_bytes": max(sizes),
              "points_per_series_max": max(points.values()), "series": len(points)}
    print(f"attach to a {steps:,}-step run: welcome in {result['first_frame_s_median'] * 1000:.1f} ms "
          f"(max {result['first_frame_s_max'] * 1000:.1f} ms), snapshot {result['snapshot_bytes'] / 1024:.0f} KiB, "
          f"daemon start incl. history load {ready:.2f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run of the script)")
    args = parser.parse_args()
    py = sys.executable
    stall = last_json([py, "bench/checkpoint_stall.py"] + (["--checkpoints", "4", "--sync", "2"] if args.quick else []))
    attach = first_frame(100_000 if args.quick else 1_000_000, repeats=3 if args.quick else 10)
    clients = last_json([py, "bench/daemon_clients.py"] + (["--rounds", "1", "--steps", "500"] if args.quick else []))
    summary = {"checkpoint": stall, "attach": attach, "clients": clients}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
