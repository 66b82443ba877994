"""The quickstart through the engine, quiet and beside a busy process: threads that follow the
load against 2 and 1 pinned threads (issue 14's targets: the default within 5% of the best quiet
speed, and beside one busy process at least 45% of it).

Each case is `longhaul train configs/quickstart.yaml --set max_steps=N` in a fresh runs root;
its speed is the median samples/s of the history's train records after the first `--settle`
seconds (the follower needs two 5-second windows to act, and the first steps warm up).

    python bench/threads_load.py [--steps 200] [--settle 25]
JSON on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"follow load (default)": ["threads=2"],
         "2 threads pinned": ["threads=2", "threads_follow_load=false"],
         "1 thread": ["threads=1"]}


def samples_per_s(sets: list[str], steps: int, settle: float) -> tuple[float, list[str]]:
    sys.path.insert(0, str(ROOT))
    from trainer.history import read_history

    with tempfile.TemporaryDirectory() as root:
        cmd = [sys.executable, "-m", "trainer.cli", "--root", root, "train", str(ROOT / "configs/quickstart.yaml"),
               "--name", "bench", "--quiet", "--set", f"max_steps={steps}"]
        for item in sets:
            cmd += ["--set", item]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        records = [r for r in read_history(Path(root) / "bench" / "history.msgpack") if r.get("kind") == "train"]
        later = [r["samples_per_s"] for r in records if r.get("elapsed", 0.0) >= settle]
        changes = [line.strip() for line in out.splitlines() if "threads " in line and "->" in line]
        return statistics.median(later or [r["samples_per_s"] for r in records[len(records) // 2:]]), changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--settle", type=float, default=25.0)
    args = parser.parse_args()
    result: dict[str, dict] = {}
    for busy in (False, True):
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for name, sets in CASES.items():
                rate, changes = samples_per_s(sets, args.steps, args.settle)
                result.setdefault(name, {})["busy" if busy else "quiet"] = round(rate, 1)
                if changes:
                    result[name].setdefault("changes", []).extend(changes)
                print(f"{'busy ' if busy else 'quiet'} {name:24s} {rate:7.1f} samples/s {changes}", flush=True)
        finally:
            if competitor:
                competitor.kill()
                competitor.wait()
    best_quiet = max(r["quiet"] for r in result.values())
    for r in result.values():
        r["quiet_vs_best"] = round(r["quiet"] / best_quiet, 3)
        r["busy_share_of_best_quiet"] = round(r["busy"] / best_quiet, 3)
    print(json.dumps({"config": "configs/quickstart.yaml", "steps": args.steps, "cases": result}))


if __name__ == "__main__":
    main()
