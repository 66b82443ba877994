"""How long does checkpointing stop the training loop?

Builds timm tf_efficientnetv2_s (random init, 10 classes) with an AdamW state populated by one
step, then, in one run and on the same disk:

- async: every few training steps the loop builds the state dict, takes ``CheckpointStore
  .snapshot()`` and hands it to ``save_async``; the *stall* is the time the loop is held up by
  that (including any wait for the previous write). The write itself runs in the background while
  training continues, but on a small CPU box it competes with the loop for cores and the GIL, so
  the table also shows training step times with and without a write in flight and the *loop cost*
  of one async checkpoint: stall + extra time of the steps that overlapped the write (against
  the median step time without a write).
- sync: ``torch.save`` of the same state straight to a file plus ``fsync``, the loop waiting for all
  of it (the naive baseline).

Prints a table, then one JSON object on the last line.

    python bench/checkpoint_stall.py [--checkpoints 10] [--sync 5] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.checkpoint import CheckpointStore, SaveResult  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=10, help="async checkpoints to time")
    p.add_argument("--sync", type=int, default=5, help="synchronous torch.save+fsync to time")
    p.add_argument("--steps-between", type=int, default=3,
                   help="training steps between async checkpoints (at least until the write is done)")
    p.add_argument("--image-size", type=int, default=96, help="side of the random training images")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    return p.parse_args()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Loop:
    """A minimal training loop around the benchmark model."""

    def __init__(self, image_size: int, batch: int):
        torch.manual_seed(0)
        self.model = timm.create_model("tf_efficientnetv2_s", pretrained=False, num_classes=10)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(batch, 3, image_size, image_size)
        self.y = torch.randint(0, 10, (batch,))
        self.step_no = 0

    def step(self) -> float:
        started = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.step_no += 1
        return time.perf_counter() - started

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "step": self.step_no,
        }


def bench_async(loop: Loop, store: CheckpointStore, results: list[SaveResult], args) -> dict:
    stalls, state_dicts, snapshots, busy_steps, idle_steps = [], [], [], [], []  # busy: per checkpoint
    for _ in range(args.checkpoints):
        for _ in range(args.steps_between):
            idle_steps.append(loop.step())
        started = time.perf_counter()
        state = loop.state()
        built = time.perf_counter()
        snap = store.snapshot(state)
        snapped = time.perf_counter()
        store.save_async(snap, {"step": loop.step_no})
        stalls.append(time.perf_counter() - started)
        state_dicts.append(built - started)
        snapshots.append(snapped - built)
        del snap, state
        n_before = len(results)
        busy_steps.append([])
        while len(results) == n_before:  # train on while the write runs in the background
            busy_steps[-1].append(loop.step())
    store.wait()
    idle_median = statistics.median(idle_steps)
    loop_cost = [stall + sum(busy) - len(busy) * idle_median for stall, busy in zip(stalls, busy_steps)]
    return {
        "stall_s": stalls,
        "state_dict_s": state_dicts,
        "snapshot_s": snapshots,
        "waited_s": [r.waited_s for r in results],
        "write_s": [r.write_s for r in results],
        "bytes": results[-1].bytes,
        "step_s_idle": idle_steps,
        "step_s_during_write": [t for busy in busy_steps for t in busy],
        "loop_cost_s": loop_cost,
    }


def bench_sync(loop: Loop, workdir: Path, n: int) -> dict:
    stalls = []
    path = workdir / "sync-state.pt"
    for _ in range(n):
        loop.step()
        started = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(loop.state(), f)
            f.flush()
            os.fsync(f.fileno())
        stalls.append(time.perf_counter() - started)
        path.unlink()
    return {"stall_s": stalls}


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": statistics.fmean(values), "n": len(values)}


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    load_before = os.getloadavg()[0]
    try:
        loop = Loop(args.image_size, args.batch)
        loop.step()  # populates the AdamW state (exp_avg, exp_avg_sq)
        results: list[SaveResult] = []
        store = CheckpointStore(workdir / "ckpt", keep_last=2, keep_best=False, min_free_mb=0,
                                on_done=results.append)
        with store:
            async_raw = bench_async(loop, store, results, args)
        sync_raw = bench_sync(loop, workdir, args.sync)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    n_params = sum(p.numel() for p in loop.model.parameters())
    report = {
        "model": "tf_efficientnetv2_s", "params": n_params, "checkpoint_bytes": async_raw["bytes"],
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        # other processes on the box inflate step times and their spread; keep the context
        "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
        "async_stall_s": summary(async_raw["stall_s"]),
        "async_state_dict_s": summary(async_raw["state_dict_s"]),
        "async_snapshot_s": summary(async_raw["snapshot_s"]),
        "async_waited_s": summary(async_raw["waited_s"]),
        "async_write_s": summary(async_raw["write_s"]),
        "async_loop_cost_s": summary(async_raw["loop_cost_s"]),
        "sync_stall_s": summary(sync_raw["stall_s"]),
        "train_step_s_idle": summary(async_raw["step_s_idle"]),
        "train_step_s_during_write": summary(async_raw["step_s_during_write"]),
    }
    print(f"tf_efficientnetv2_s: {n_params / 1e6:.1f} M params, checkpoint "
          f"{async_raw['bytes'] / 2**20:.0f} MiB (model + AdamW), {report['threads']} threads, "
          f"load average {load_before:.1f} -> {report['loadavg_1m_after']:.1f} on {os.cpu_count()} CPUs")
    print(f"{'measure':<50}{'p50 s':>9}{'p95 s':>9}{'n':>5}")
    rows = [
        ("async: loop stall (state_dict+snapshot+handoff)", "async_stall_s"),
        ("  of which building the state dicts", "async_state_dict_s"),
        ("  of which snapshot (copying tensors)", "async_snapshot_s"),
        ("  of which waiting for previous write", "async_waited_s"),
        ("async: background write (off the loop)", "async_write_s"),
        ("async: loop cost (stall + slowed steps)", "async_loop_cost_s"),
        ("sync: torch.save + fsync (loop stall)", "sync_stall_s"),
        ("train step, no write in flight", "train_step_s_idle"),
        ("train step, write in flight", "train_step_s_during_write"),
    ]
    for label, key in rows:
        s = report[key]
        print(f"{label:<50}{s['p50']:>9.3f}{s['p95']:>9.3f}{s['n']:>5}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
