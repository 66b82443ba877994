"""Benchmark: how long attach needs to turn a big metric history into downsampled series.

Writes a synthetic history (default 1,000,000 train records and one eval record every 1000
steps, as a long run with log_every=1 would produce) with HistoryWriter, then times
load_series on it (best of --repeat runs, file in the page cache) and, for comparison, a plain
decode of every record with read_history. Prints a human summary, then one JSON line last.

    python bench/history_load.py [--records 1000000] [--eval-every 1000] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.history import HistoryWriter, load_series, read_history  # noqa: E402
from trainer.monitor import Monitor  # noqa: E402

CLASSES = [f"class_{i}" for i in range(10)]


def write_history(path: str, records: int, eval_every: int, seed: int = 0) -> float:
    """Write the synthetic history; return the seconds it took (HistoryWriter.append per record)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    with HistoryWriter(path) as writer:
        for step in range(1, records + 1):
            epoch, t = step // 5000, 1.7e9 + 0.3 * step
            writer.append({
                "kind": "train", "step": step, "epoch": epoch, "phase": 0 if step < records // 2 else 1,
                "time": t, "train_loss": 2.3 * math.exp(-step / records * 3) + 0.1 * rng.random(),
                "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * step / records)), "grad_norm": 1 + rng.random(),
                "samples_per_s": 110 + 5 * rng.random(), "data_share": 0.1 * rng.random(),
            })
            if step % eval_every == 0:
                k = len(CLASSES)
                writer.append({
                    "kind": "eval", "step": step, "epoch": epoch, "phase": 0, "time": t + 1,
                    "val_loss": rng.random(), "val_accuracy": rng.random(), "val_f1_macro": rng.random(),
                    "val_f1_weighted": rng.random(),
                    "per_class": {"precision": [rng.random()] * k, "recall": [rng.random()] * k, "f1": [rng.random()] * k},
                    "confusion": [[rng.randrange(50) for _ in range(k)] for _ in range(k)], "classes": CLASSES,
                })
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="write the history here and keep it (default: a temp file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "history.msgpack")
        if os.path.exists(path):
            os.remove(path)
        write_s = write_history(path, args.records, args.eval_every)
        size = os.path.getsize(path)

        load_times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            series = load_series(path, Monitor("val_f1_macro", "max"))
            load_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        decoded = sum(1 for _ in read_history(path))
        decode_s = time.perf_counter() - started

    points = {name: len(s) for name, s in series.series.items()}
    result = {
        "records": args.records, "eval_every": args.eval_every, "bytes": size,
        "write_s": round(write_s, 3), "load_series_s": round(min(load_times), 3),
        "load_series_all_s": [round(t, 3) for t in load_times],
        "read_history_all_records_s": round(decode_s, 3), "records_decoded": decoded,
        "series": len(points), "max_points_per_series": max(points.values()),
        "valid_length": series.valid_length,
    }
    print(f"{args.records} train records ({size / 1e6:.1f} MB): written in {write_s:.2f} s, "
          f"load_series {min(load_times):.3f} s (best of {args.repeat}), "
          f"decoding every record with read_history {decode_s:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
