"""Engine throughput against hand-written PyTorch loops, side by side in one process.

Trains the quickstart model (EfficientNet-B0 on 64-band log-mel spectrograms of the synthetic
dataset) on the same data, batch size and thread count three ways, interleaved over several
rounds so that machine noise hits all three alike:

- engine: longhaul's Trainer (history, progress, EMA/early-stopping bookkeeping, controls);
- fast:   the fastest plain loop we could write with the same options (channels_last, fp32,
          AdamW, clipping, label smoothing, same DataLoader and augmentation);
- naive:  the same loop with the default memory layout and no tricks.

Prints samples/s per round, medians, ratios and peak RSS; the JSON object is the last line.
    python bench/engine.py [--steps 30] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer import models  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.data import EpochSampler, build_datasets, make_loader  # noqa: E402
from trainer.engine import Trainer  # noqa: E402


def plain_loop(cfg, bundle, steps: int, warmup: int, channels_last: bool) -> float:
    """samples/s of a hand-written loop over the same loader (optimizer steps of
    `batch_size * accum_steps` samples); timing starts after `warmup` steps."""
    torch.manual_seed(cfg.seed)
    cfg.model.channels_last = channels_last
    model = models.build_model(cfg, len(bundle.classes), bundle.in_chans, bundle.input_shape)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    batch, accum = cfg.optim.batch_size, cfg.optim.accum_steps
    sampler = EpochSampler(len(bundle.train), cfg.seed, 0, 0, (steps + warmup) * batch * accum)
    loader = make_loader(bundle.train, batch, sampler=sampler, num_workers=cfg.data.num_workers)
    start = None
    for i, (x, y) in enumerate(loader):
        if i == warmup * accum:
            start = time.perf_counter()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.loss.label_smoothing)
        (loss / accum).backward()
        if (i + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return steps * batch * accum / (time.perf_counter() - start)


class StepClock:
    """Publisher that timestamps each logged step."""

    def __init__(self):
        self.times: dict[int, float] = {}

    def progress(self, body):
        pass

    def event(self, kind, level, message, **data):
        pass

    def plan(self, body):
        pass

    def record(self, record):
        if record["kind"] == "train":
            self.times[record["step"]] = time.perf_counter()


def engine_run(cfg, steps: int, warmup: int) -> float:
    cfg.model.channels_last = True
    cfg.max_steps = warmup + steps
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(cfg, Path(run_dir), clock).run()
    return steps * cfg.optim.batch_size / (clock.times[warmup + steps] - clock.times[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    overrides = ["checkpoint.interval_seconds=86400", "eval.early_stopping.patience=null"]
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    torch.set_num_threads(cfg.threads)
    bundle = build_datasets(cfg)
    [bundle.train[(0, i)] for i in range(len(bundle.train))]  # fill the feature cache for the plain loops
    results = {"engine": [], "fast": [], "naive": []}
    rss = {}
    for round_no in range(args.rounds):
        runs = {
            "engine": lambda: engine_run(load_config(ROOT / "configs" / "quickstart.yaml", overrides),
                                         args.steps, args.warmup),
            "fast": lambda: plain_loop(cfg, bundle, args.steps, args.warmup, channels_last=True),
            "naive": lambda: plain_loop(cfg, bundle, args.steps, args.warmup, channels_last=False),
        }
        for name, run in runs.items():
            results[name].append(run())
            rss[name] = max(rss.get(name, 0), psutil.Process().memory_info().rss)
            print(f"round {round_no + 1} {name:6s} {results[name][-1]:8.1f} samples/s", flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    summary = {
        "model": cfg.model.name, "input": list(bundle.input_shape), "batch_size": cfg.optim.batch_size,
        "threads": cfg.threads, "steps_per_measurement": args.steps, "rounds": args.rounds,
        "samples_per_s": {k: round(v, 2) for k, v in med.items()},
        "per_round": {k: [round(x, 2) for x in v] for k, v in results.items()},
        "engine_vs_fast": round(med["engine"] / med["fast"], 3),
        "engine_vs_naive": round(med["engine"] / med["naive"], 3),
        "rss_mb_after": {k: round(v / 2**20) for k, v in rss.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "targets": {"engine_vs_fast": ">= 0.98", "engine_vs_naive": ">= 1.3"},
    }
    print(f"engine/fast = {summary['engine_vs_fast']}, engine/naive = {summary['engine_vs_naive']}, "
          f"peak RSS {summary['peak_rss_mb']} MB")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
