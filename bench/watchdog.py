"""What the stall watchdog and the threshold alerts cost the daemon, and how fast a stall is
alerted. JSON on the last line.

1. Daemon CPU while a (fake) trainer steps 5 times a second with no client attached, measured
   over the same seconds in alternating rounds: the daemon as it is (watchdog and every threshold
   on) against the same daemon with every threshold off and no stall limit in reach, and, with
   `--before DIR` (a checkout of an older commit, e.g. `git worktree add /tmp/before aaf5421`),
   against that commit's daemon. Target: unchanged within noise.
2. Seconds from SIGSTOP of the trainer to the `stalled` alert in events.jsonl, with
   `watchdog.stall_seconds` = STALL and the default 2 s system interval (expected: STALL plus at
   most one interval).

    python bench/watchdog.py [--seconds 30] [--rounds 3] [--before DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from tests.daemon_helpers import fake_run_config, read_events, wait_for  # noqa: E402
from trainer.run.locate import create_run_dir  # noqa: E402
from trainer.run.state import StateFile  # noqa: E402

FAKE_WORKER = ROOT / "tests" / "fake_worker.py"
STALL = 5.0
QUIET = {"alerts": {"cpu_temp_c": None, "mem_percent": None, "swap_percent": None, "disk_free_gb": None,
                    "throughput_share": None, "loss_spike_factor": None},
         "watchdog": {"stall_seconds": 1e9, "setup_seconds": 1e9}}


def start(tree: Path, root: Path, name: str, sections: dict, fake: dict) -> tuple[int, Path]:
    """A daemon of the code in `tree` on the fake trainer; (daemon pid, run dir)."""
    run_dir = create_run_dir(root, name)
    (run_dir / "config.yaml").write_text(fake_run_config(name, sections, system_interval=2.0))
    (run_dir / "fake.json").write_text(json.dumps(fake))
    code = ("import sys; from trainer import daemon; "
            f"print(daemon.launch_daemon(sys.argv[1], worker_script={str(FAKE_WORKER)!r}))")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]), run_dir


def stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def daemon_cpu(trees: dict, seconds: float, rounds: int, root: Path) -> dict:
    """CPU % of one core of each daemon, all running side by side, summed over the rounds."""
    fake = {"steps": 10**7, "step_time": 0.2, "log_every": 10, "steps_per_epoch": 500}
    daemons = {label: start(tree, root, label, sections, fake)[0] for label, (tree, sections) in trees.items()}
    try:
        time.sleep(5.0)  # past start-up
        used = {label: 0.0 for label in daemons}
        for _ in range(rounds):
            before = {label: sum(psutil.Process(pid).cpu_times()[:2]) for label, pid in daemons.items()}
            time.sleep(seconds)
            for label, pid in daemons.items():
                used[label] += sum(psutil.Process(pid).cpu_times()[:2]) - before[label]
        return {label: round(100.0 * cpu / (seconds * rounds), 3) for label, cpu in used.items()}
    finally:
        for pid in daemons.values():
            stop(pid)


def stall_latency(root: Path, repeats: int) -> list[float]:
    """Seconds from SIGSTOP of the trainer to the `stalled` alert."""
    seconds = []
    for i in range(repeats):
        fake = {"steps": 10**7, "step_time": 0.05, "log_every": 0}
        pid, run_dir = start(ROOT, root, f"stall{i}", {"watchdog": {"stall_seconds": STALL}}, fake)
        try:
            wait_for(lambda: (StateFile(run_dir).read().get("step") or 0) > 20, 60, "steps")
            worker = int((run_dir / "fake_runs").read_text().split()[-1])
            os.kill(worker, signal.SIGSTOP)
            stopped = time.monotonic()
            wait_for(lambda: any(e["data"].get("what") == "stalled" for e in read_events(run_dir)), 60, "the alert")
            seconds.append(round(time.monotonic() - stopped, 2))
        finally:
            stop(pid)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per CPU round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of an older commit to compare with")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lh-bench-watchdog-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="lh-", dir="/tmp"))
    trees = {"watch_on": (ROOT, {}), "watch_off": (ROOT, QUIET)}
    if args.before:
        trees["before"] = (args.before.resolve(), {})
    cpu = daemon_cpu(trees, args.seconds, args.rounds, root)
    print(f"daemon CPU (% of one core): {cpu}", flush=True)
    latency = stall_latency(root, 3)
    print(f"stall alerted after {latency} s (stall_seconds {STALL})", flush=True)
    print(json.dumps({"daemon_cpu_percent": cpu, "stall_to_alert_s": latency, "stall_seconds": STALL,
                      "seconds": args.seconds * args.rounds}))


if __name__ == "__main__":
    main()
