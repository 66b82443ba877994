"""OpenMP wait settings on a shared 2-core box: which one is good both quiet and beside a busy process?

torch's OpenMP threads (GNU libgomp in the pip wheels) spin while they wait at the end of each
parallel region. On a 2-core box with 2 training threads, any other busy process takes a core
from a spinning thread, and every parallel region then waits for the scheduler. This script
measures EfficientNet-B0 training steps (the quickstart's shape) for each setting, on a quiet
machine and beside one busy process (a `while True` loop), side by side in one run:
2 threads with the default wait, passive waiting, and GOMP_SPINCOUNT of 1k, 10k and 100k; and
1 thread with the default wait. The summary gives each setting's quiet step time against the best
quiet one, and its speed beside the busy process as a share of the best quiet speed (issue 14's
targets: within 5%, and at least 45%).

Measured here (2026-11-28): no 2-thread setting meets both: the spin counts that are fast on a
quiet box (10k-100k) are 5-15x slower beside a busy process, and passive waiting is 1.8x slower
on a quiet box and still below a fair share beside one; 1 thread beside a busy process runs at
its quiet speed. A fixed wait setting cannot do it: the thread count has to follow the load.

    python bench/omp_wait.py [--steps 12] [--rounds 2]
JSON on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = r"""
import statistics, sys, time, torch, timm
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m = timm.create_model("efficientnet_b0", num_classes=8, in_chans=1).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randn(32, 1, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 8, (32,))
times = []
for _ in range(int(sys.argv[2]) + 3):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(statistics.median(times[3:]))
"""


SETTINGS = {
    # name: (threads, environment)
    "default": (2, {}),
    "passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin1k": (2, {"GOMP_SPINCOUNT": "1000"}),
    "spin10k": (2, {"GOMP_SPINCOUNT": "10000"}),
    "spin100k": (2, {"GOMP_SPINCOUNT": "100000"}),
    "1 thread": (1, {}),
}
TARGET_QUIET = 1.05  # at most this times the best quiet step time
TARGET_BUSY_SHARE = 0.45  # beside a busy process, at least this share of the best quiet speed


def seconds_per_step(extra_env: dict, threads: int, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for busy in (False, True):
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for name, (threads, extra_env) in SETTINGS.items():
                    key = f"{'busy' if busy else 'quiet'}/{name}"
                    results.setdefault(key, []).append(seconds_per_step(extra_env, threads, args.steps))
                    print(f"{key:18s} {results[key][-1] * 1000:8.1f} ms/step", flush=True)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
    best = {k: min(v) for k, v in results.items()}
    best_quiet = min(best[f"quiet/{name}"] for name in SETTINGS)
    settings = {}
    for name in SETTINGS:
        quiet, busy = best[f"quiet/{name}"], best[f"busy/{name}"]
        settings[name] = {"quiet_ms": round(quiet * 1000, 1), "busy_ms": round(busy * 1000, 1),
                          "quiet_vs_best": round(quiet / best_quiet, 3),
                          "busy_share_of_best_quiet_speed": round(best_quiet / busy, 3),
                          "meets_both": quiet / best_quiet <= TARGET_QUIET and best_quiet / busy >= TARGET_BUSY_SHARE}
    print(json.dumps({"model": "efficientnet_b0 32x1x64x64", "settings": settings}))


if __name__ == "__main__":
    main()
