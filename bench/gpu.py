"""The engine on a GPU against a plain PyTorch loop on the same GPU.

Trains the quickstart model (EfficientNet-B0 on 64-band log-mel spectrograms of the synthetic
dataset) with `device: cuda` two ways, interleaved over rounds so machine noise hits both alike:

- engine: longhaul's Trainer (deterministic CUDA set-up, history, progress, controls, the
          checkpoint machinery idle: interval of a day);
- plain:  a hand-written loop with the same model, batch size, loader (pinned, non_blocking
          copies), AdamW, clipping and AMP setting (autocast; GradScaler for fp16), cudnn left
          to autotune and no deterministic kernels: what a user would write without longhaul.
          The ratio is the price of the engine's bookkeeping and of exact resume on CUDA.

Prints samples/s per round and the medians; the JSON object is the last line. Without CUDA it
prints a JSON object saying it was not run and exits 0.
    python bench/gpu.py [--amp none|bf16|fp16] [--steps 50] [--warmup 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after the checkout's bench/: bench/tui.py must not shadow tui

from trainer import models  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.data import EpochSampler, build_datasets, make_loader  # noqa: E402

PRESET = ROOT / "configs" / "quickstart.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def plain_loop(cfg, bundle, steps: int, warmup: int, amp: str) -> float:
    """samples/s of a hand-written CUDA loop over the same loader; timed after `warmup` steps."""
    torch.manual_seed(cfg.seed)
    # what a user would write: no deterministic kernels (the engine's set-up turned them on in this process)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    model = models.build_model(cfg, len(bundle.classes), bundle.in_chans, bundle.input_shape).cuda()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    batch = cfg.optim.batch_size
    sampler = EpochSampler(len(bundle.train), cfg.seed, 0, 0, (steps + warmup) * batch)
    loader = make_loader(bundle.train, batch, sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=True)
    start = None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=DTYPES.get(amp, torch.float16), enabled=amp in DTYPES):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.loss.label_smoothing)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the engine reads each step's loss too
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def engine_run(overrides: list[str], steps: int, warmup: int) -> float:
    """The engine's samples/s on the preset with `overrides` (bench/engine.py's timing of a run)."""
    from engine import engine_run as timed_run  # bench/engine.py: this script's folder is on sys.path

    return timed_run(load_config(PRESET, overrides), steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"run": False, "reason": f"no CUDA GPU (torch {torch.__version__}, CUDA build "
                                                  f"{torch.version.cuda})"}))
        return
    overrides = ["device=cuda", f"optim.amp={args.amp}", "checkpoint.interval_seconds=86400",
                 "eval.early_stopping.patience=null", "model.compile=false"]
    cfg = load_config(PRESET, overrides)
    bundle = build_datasets(cfg)
    [bundle.train[(0, i)] for i in range(len(bundle.train))]  # fill the feature cache for the plain loop
    results: dict[str, list[float]] = {"engine": [], "plain": []}
    for round_no in range(args.rounds):
        results["engine"].append(engine_run(overrides, args.steps, args.warmup))
        results["plain"].append(plain_loop(cfg, bundle, args.steps, args.warmup, args.amp))
        print(f"round {round_no + 1}: engine {results['engine'][-1]:.1f}, plain {results['plain'][-1]:.1f} samples/s",
              flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    print(json.dumps({
        "run": True, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": cfg.model.name,
        "input": list(bundle.input_shape), "batch_size": cfg.optim.batch_size, "amp": args.amp,
        "steps_per_measurement": args.steps, "rounds": args.rounds,
        "samples_per_s": {k: round(v, 1) for k, v in med.items()},
        "per_round": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "engine_vs_plain": round(med["engine"] / med["plain"], 3),
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20),
    }))


if __name__ == "__main__":
    main()
