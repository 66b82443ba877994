"""How long does checkpointing stop the training loop, and what does it cost training overall?

Builds timm tf_efficientnetv2_s (random init, 10 classes) with an AdamW state populated by one
step, then, in one run and on the same disk, times three ways of checkpointing it:

- async (what the engine does): ``CheckpointStore.save_async`` with the weights and optimizer
  state passed as ``stable``: the loop waits only while the state dicts are built and the small
  rest (buffers, RNG, plain data) is copied; the writer thread copies the stable tensors while
  the next step's forward and backward run, and the loop calls ``fence()`` before its optimizer
  step. The write then runs at nice +19 (``checkpoint.writer_nice``).
- async variants, to show what each part buys: "eager copy" copies every tensor while the loop
  waits (no ``stable``); "writer nice 0" writes at training's priority.
- sync: ``torch.save`` of the same state straight to a file plus ``fsync``, the loop waiting for
  all of it (the naive baseline).

The *stall* is the time the loop is held up by a checkpoint: the ``save_async`` call (state
dicts, copies, any wait for the previous write) plus the fence wait in the following step. The
*loop cost* adds what the background work takes from training: stall + extra time of the steps
that ran while the write was in flight (against the median step with nothing in flight). Steps
continue until the write has finished, so every async checkpoint is measured whole.

Prints a table, then one JSON object on the last line.

    python bench/checkpoint_stall.py [--checkpoints 6] [--sync 5] [--dir DIR]
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
    p.add_argument("--checkpoints", type=int, default=6, help="async checkpoints to time per variant")
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
    """A minimal training loop around the benchmark model; ``fence`` runs before each update."""

    def __init__(self, image_size: int, batch: int):
        torch.manual_seed(0)
        self.model = timm.create_model("tf_efficientnetv2_s", pretrained=False, num_classes=10)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(batch, 3, image_size, image_size)
        self.y = torch.randint(0, 10, (batch,))
        self.step_no = 0
        self.fence = lambda: 0.0
        self.fence_waits: list[float] = []

    def step(self) -> float:
        started = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.fence_waits.append(self.fence())
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

    def stable(self) -> list[torch.Tensor]:
        """What only the optimizer step changes (the engine's Trainer.stable_tensors)."""
        return list(self.model.parameters()) + [
            v for per_param in self.opt.state.values() for v in per_param.values() if isinstance(v, torch.Tensor)]


def bench_async(loop: Loop, workdir: Path, name: str, args, stable: bool, writer_nice: int) -> dict:
    results: list[SaveResult] = []
    store = CheckpointStore(workdir / name, keep_last=2, keep_best=False, min_free_mb=0,
                            on_done=results.append, writer_nice=writer_nice)
    loop.fence = store.fence
    calls, fences, busy_steps, idle_steps = [], [], [], []  # busy: per checkpoint
    with store:
        for _ in range(args.checkpoints):
            for _ in range(args.steps_between):
                idle_steps.append(loop.step())
            started = time.perf_counter()
            store.save_async(loop.state(), {"step": loop.step_no}, stable=loop.stable() if stable else ())
            calls.append(time.perf_counter() - started)
            n_before = len(results)
            busy_steps.append([loop.step()])  # its fence wait is part of this checkpoint's stall
            fences.append(loop.fence_waits[-1])
            while len(results) == n_before:  # train on while the write runs in the background
                busy_steps[-1].append(loop.step())
        store.wait()
    loop.fence = lambda: 0.0
    idle_median = statistics.median(idle_steps)
    stalls = [c + f for c, f in zip(calls, fences)]
    loop_cost = [stall + sum(busy) - len(busy) * idle_median for stall, busy in zip(stalls, busy_steps)]
    return {
        "stall_s": summary(stalls),
        "call_s": summary(calls),
        "fence_wait_s": summary(fences),
        "write_s": summary([r.write_s for r in results]),
        "loop_cost_s": summary(loop_cost),
        "step_s_idle": summary(idle_steps),
        "step_s_during_write": summary([t for busy in busy_steps for t in busy]),
        "bytes": results[-1].bytes,
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
    return {"stall_s": summary(stalls)}


def summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": statistics.fmean(values), "n": len(values)}


VARIANTS = {  # name: (stable tensors deferred, writer nice)
    "async": (True, 19),
    "async_eager_copy": (False, 19),
    "async_writer_nice0": (True, 0),
}


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    load_before = os.getloadavg()[0]
    try:
        loop = Loop(args.image_size, args.batch)
        loop.step()  # populates the AdamW state (exp_avg, exp_avg_sq)
        measured = {name: bench_async(loop, workdir, name, args, stable, nice)
                    for name, (stable, nice) in VARIANTS.items()}
        measured["sync"] = bench_sync(loop, workdir, args.sync)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    n_params = sum(p.numel() for p in loop.model.parameters())
    sync_p50 = measured["sync"]["stall_s"]["p50"]
    report = {
        "model": "tf_efficientnetv2_s", "params": n_params, "checkpoint_bytes": measured["async"]["bytes"],
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        # other processes on the box inflate step times and their spread; keep the context
        "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
        **measured,
        "stall_ratio_p50": measured["async"]["stall_s"]["p50"] / sync_p50,
        "loop_cost_ratio_p50": measured["async"]["loop_cost_s"]["p50"] / sync_p50,
        "step_slowdown_during_write_p50": (measured["async"]["step_s_during_write"]["p50"]
                                           / measured["async"]["step_s_idle"]["p50"]),
    }
    print(f"tf_efficientnetv2_s: {n_params / 1e6:.1f} M params, checkpoint "
          f"{report['checkpoint_bytes'] / 2**20:.0f} MiB (model + AdamW), {report['threads']} threads, "
          f"load average {load_before:.1f} -> {report['loadavg_1m_after']:.1f} on {os.cpu_count()} CPUs")
    print(f"{'measure':<52}{'p50 s':>9}{'p95 s':>9}{'n':>5}")
    rows = [("sync: torch.save + fsync (loop stall)", "sync", "stall_s")]
    for name in VARIANTS:
        rows += [
            (f"{name}: loop stall", name, "stall_s"),
            ("  of which save_async call (state dicts, copies)", name, "call_s"),
            ("  of which fence wait before the next update", name, "fence_wait_s"),
            (f"{name}: loop cost (stall + slowed steps)", name, "loop_cost_s"),
            (f"{name}: background write", name, "write_s"),
            (f"{name}: train step, nothing in flight", name, "step_s_idle"),
            (f"{name}: train step, write in flight", name, "step_s_during_write"),
        ]
    for label, name, key in rows:
        s = report[name][key]
        print(f"{label:<52}{s['p50']:>9.3f}{s['p95']:>9.3f}{s['n']:>5}")
    print(f"async stall / sync save (p50): {report['stall_ratio_p50']:.1%}; "
          f"async loop cost / sync save (p50): {report['loop_cost_ratio_p50']:.1%}; "
          f"train step while the async write runs / without: {report['step_slowdown_during_write_p50']:.3f}x")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
