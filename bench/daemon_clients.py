"""Does attaching clients slow training down? Steps/s with no client, 8 reading clients, and one
client that never reads, side by side.

    python bench/daemon_clients.py                      # fake worker (tests/fake_worker.py)
    python bench/daemon_clients.py --config CONFIG.yaml # the real engine on a config

Each scenario starts a fresh run through `launch_daemon`, attaches its clients, and waits for
the run to finish. Steps/s comes from the train records' timestamps in history.msgpack (the
same measure for the fake and the real trainer). The fake worker burns `--step-ms` of CPU per
step and prints a log line per step, so the daemon has real relaying work to do. The last line
of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import daemon, history, protocol  # noqa: E402
from trainer.run.liveness import pid_alive  # noqa: E402
from trainer.run.locate import create_run_dir  # noqa: E402
from trainer.run.sockets import socket_path  # noqa: E402
from trainer.run.state import StateFile  # noqa: E402

FAKE_WORKER = ROOT / "tests" / "fake_worker.py"


class Reader(threading.Thread):
    """A client that reads everything (like the TUI) and counts frames."""

    def __init__(self, path: Path, read: bool = True):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        protocol.send_frame(self.sock, protocol.hello("bench"), protocol.MAX_CLIENT_FRAME)
        self.read = read
        self.frames = 0
        self.dropped = False

    def run(self) -> None:
        if not self.read:
            return
        while True:
            try:
                protocol.recv_frame(self.sock, protocol.MAX_SERVER_FRAME)
            except (EOFError, OSError):
                return
            self.frames += 1

    def check_dropped(self) -> bool:
        """For the stuck client: drain what the daemon managed to send; True if it then closed."""
        self.sock.settimeout(2.0)
        try:
            while self.sock.recv(1 << 20):
                pass
            return True
        except ConnectionResetError:
            return True
        except OSError:
            return False


def steps_per_second(run_dir: Path) -> tuple[float, int]:
    times = [(r["step"], r["time"]) for r in history.read_history(run_dir / "history.msgpack") if r["kind"] == "train"]
    if len(times) < 2:
        return 0.0, len(times)
    (s0, t0), (s1, t1) = times[0], times[-1]
    return (s1 - s0) / (t1 - t0), len(times)


def make_run(root: Path, name: str, args) -> Path:
    run_dir = create_run_dir(root, name)
    if args.config:
        from trainer.config import dump_config, load_config

        (run_dir / "config.yaml").write_text(dump_config(load_config(args.config)))
    else:
        (run_dir / "config.yaml").write_text(json.dumps({"name": name}))
        (run_dir / "fake.json").write_text(json.dumps({
            "steps": args.steps, "step_time": args.step_ms / 1000, "log_every": 1, "log_bytes": args.log_bytes,
            "event_every": 10, "steps_per_epoch": 100}))
    return run_dir


def scenario(root: Path, name: str, readers: int, stuck: int, args) -> dict:
    run_dir = make_run(root, name, args)
    worker = None if args.config else FAKE_WORKER
    pid = daemon.launch_daemon(run_dir, worker_script=worker, wait=5.0)
    path = socket_path(run_dir)
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: no daemon socket after 30 s; see {run_dir / 'daemon.log'}")
        time.sleep(0.02)
    clients = [Reader(path) for _ in range(readers)] + [Reader(path, read=False) for _ in range(stuck)]
    for client in clients:
        client.start()
    while pid_alive(pid):
        time.sleep(0.1)
    rate, records = steps_per_second(run_dir)
    state = StateFile(run_dir).read().get("state")
    result = {"steps_per_s": round(rate, 2), "train_records": records, "state": state,
              "frames_per_reader": [c.frames for c in clients if c.read]}
    if stuck:
        result["stuck_client_dropped"] = all(c.check_dropped() for c in clients if not c.read)
    return result


def paired_ratio(items: list[dict], baseline: list[dict]) -> float:
    """Median over rounds of steps/s in a scenario divided by no_client's in the same round."""
    ratios = sorted(a["steps_per_s"] / b["steps_per_s"] for a, b in zip(items, baseline) if b["steps_per_s"])
    return ratios[len(ratios) // 2] if ratios else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run the real engine on this config instead of the fake worker")
    parser.add_argument("--steps", type=int, default=2000, help="fake worker: steps per scenario")
    parser.add_argument("--step-ms", type=float, default=2.0, help="fake worker: CPU milliseconds per step")
    parser.add_argument("--log-bytes", type=int, default=200, help="fake worker: length of its per-step log line")
    parser.add_argument("--rounds", type=int, default=3, help="scenarios run interleaved this many times; medians reported")
    args = parser.parse_args()
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="lh-bench-xdg-")
    root = Path(tempfile.mkdtemp(prefix="lh-bench-"))
    try:
        load_before = os.getloadavg()[0]
        rounds: dict[str, list[dict]] = {}
        for i in range(args.rounds):
            for name, readers, stuck in (("no_client", 0, 0), ("8_clients", 8, 0), ("1_stuck_client", 0, 1)):
                result = scenario(root, f"{name}-{i}", readers, stuck, args)
                rounds.setdefault(name, []).append(result)
                print(f"round {i} {name:16} {result['steps_per_s']:9.1f} steps/s   {json.dumps(result)}", flush=True)
        results = {}
        for name, items in rounds.items():
            rates = sorted(r["steps_per_s"] for r in items)
            results[name] = {"steps_per_s": rates[len(rates) // 2], "all_steps_per_s": [r["steps_per_s"] for r in items],
                             "states": [r["state"] for r in items]}
            if "stuck_client_dropped" in items[0]:
                results[name]["stuck_client_dropped"] = all(r["stuck_client_dropped"] for r in items)
            if items[0]["frames_per_reader"]:
                results[name]["frames_per_reader"] = items[0]["frames_per_reader"]
        base = results["no_client"]["steps_per_s"] or float("nan")
        summary = {
            "worker": "engine" if args.config else "fake",
            "config": args.config,
            "fake": None if args.config else {"steps": args.steps, "step_ms": args.step_ms, "log_bytes": args.log_bytes},
            "cpus": os.cpu_count(),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "rounds": args.rounds,
            "scenarios": results,
            "relative_to_no_client": {k: round(v["steps_per_s"] / base, 3) for k, v in results.items()},
            # paired within a round, so slow drift of the shared machine cancels out
            "relative_per_round_median": {k: round(paired_ratio(rounds[k], rounds["no_client"]), 3) for k in rounds},
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
