"""torch.compile against the fastest eager hand loop, per model, and how far from the hardware.

For each model (the quickstart's EfficientNet-B0 on its 64-band mel spectrograms, EfficientNet-B2
with the audio B2 preset's input and batch, EfficientNetV2-S with the image V2-S preset's 300x300
images and batch 4 x 4), each measurement in a fresh process, alternated so that machine noise
hits all alike:

    fast      the fastest eager hand loop (bench/engine.py: channels_last, fp32, AdamW, clipping)
    compiled  longhaul's engine with model.compile true, cold: an empty on-disk cache
    engine    longhaul's engine eager (model.compile false)
    compiled  again, warm: the cache the cold run filled (what a resume or a restart pays)
    fast      again
    (--rounds N: N-1 more rounds of engine, compiled warm and fast; medians are reported)

Everything else is the default config (threads_follow_load on: compiled kernels read the thread
count at run time). The engine's like-for-like options: one phase training everything, no EMA, no
mixup, cross-entropy, no evaluation inside the timed steps.

Also the CPU's fp32 peak (the best of a large GEMM through MKL and through oneDNN, at the same
threads) and each variant's model FLOP utilisation: training FLOPs per sample (3 forward passes,
counted with torch.utils.flop_counter) times samples per second, over that peak.

The JSON object is the last line.
    python bench/compile.py [--models efficientnet_b0,efficientnet_b2,tf_efficientnetv2_s] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the checkout: bench/tui.py must not shadow tui

COMMON = ["checkpoint.interval_seconds=86400", "eval.early_stopping.patience=null", "log_every=1",
          "phases=[{name: full, epochs: 1000}]", "eval.every_epochs=1000", "eval.ema.enabled=false",
          "augment.mixup.prob=0.0", "loss.name=ce", "loss.class_weights=null"]

MODELS = {
    # name: (preset, overrides, timed steps, warm-up steps)
    "efficientnet_b0": ("quickstart.yaml", [], 40, 5),
    "efficientnet_b2": ("audio_efficientnet_b2_quality.yaml",
                        ["data.source=synthetic", "data.root=null",
                         "data.synthetic={classes: 4, train_per_class: 128, val_per_class: 4, seed: 1}"], 8, 2),
    "tf_efficientnetv2_s": ("image_efficientnetv2_s_cpu.yaml", ["data.root={images}"], 8, 2),
}


def image_folder(root: Path, classes: int = 3, per_class: int = 100, size: int = 320) -> Path:
    """Random-texture PNGs in class folders (the content does not matter to a speed test)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def load(model: str, images: Path):
    from trainer.config import load_config

    preset, overrides, _, _ = MODELS[model]
    overrides = [o.replace("{images}", str(images)) for o in overrides]
    return load_config(ROOT / "configs" / preset, overrides + COMMON)


def train_flop_per_sample(cfg, bundle) -> float:
    """FLOPs of training on one sample: 3 forward passes' worth (the backward pass computes input
    and weight gradients, each about a forward's work: the usual MFU convention). The forward is
    counted with torch.utils.flop_counter; its count of the backward is not used because it
    overcounts depthwise convolutions' weight gradients (40x a forward for EfficientNet-B0)."""
    from trainer import models
    from trainer.compiling import forward_flop_per_sample

    model = models.build_model(cfg, len(bundle.classes), bundle.in_chans, bundle.input_shape)
    return 3 * forward_flop_per_sample(model, bundle.input_shape)


class StepClock:
    """Publisher that timestamps each logged step and keeps the compile event."""

    def __init__(self):
        self.times: dict[int, float] = {}
        self.compiles: list[dict] = []
        self.thread_changes = 0

    def progress(self, body):
        pass

    def plan(self, body):
        pass

    def preparing(self, body):
        pass

    def event(self, kind, level, message, **data):
        if kind == "compile":
            self.compiles.append(data)
        elif kind == "threads":
            self.thread_changes += 1  # the box was busy: the measurement is not a quiet one

    def record(self, record):
        if record["kind"] == "train":
            self.times[record["step"]] = time.perf_counter()


def one(kind: str, model: str, images: Path) -> dict:
    """One measurement in this process: `fast`, `engine` or `compiled`."""
    import torch

    from engine import plain_loop
    from trainer.data import build_datasets
    from trainer.engine import Trainer

    _, _, steps, warmup = MODELS[model]
    cfg = load(model, images)
    torch.set_num_threads(cfg.threads)
    if kind == "fast":
        bundle = build_datasets(cfg)
        [bundle.train[(0, i)] for i in range(len(bundle.train))]  # the features cached, as the engine has them
        samples_per_s = plain_loop(cfg, bundle, steps, warmup, channels_last=True)
        return {"samples_per_s": samples_per_s, "flop_per_sample": train_flop_per_sample(cfg, bundle)}
    cfg.model.compile = kind == "compiled"
    # Timed inside the second epoch: the first computes and caches every example's features (the
    # hand loop's cache is filled before it starts) and compiles; the checkpoint every epoch ends
    # with is written in the background, so the timing starts a third of an epoch after it.
    per_epoch = len(build_datasets(cfg).train) // (cfg.optim.batch_size * cfg.optim.accum_steps)
    warmup = per_epoch + max(warmup, per_epoch // 3)
    if warmup + steps >= 2 * per_epoch:
        raise SystemExit(f"{model}: {per_epoch} steps per epoch leave no room for {steps} timed steps")
    cfg.max_steps = warmup + steps
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        Trainer(cfg, Path(run_dir), clock).run()
        total = time.perf_counter() - started
    per_step = cfg.optim.batch_size * cfg.optim.accum_steps
    result = {"samples_per_s": steps * per_step / (clock.times[warmup + steps] - clock.times[warmup]),
              "first_step_after_s": clock.times[1] - started, "run_s": total,
              "thread_changes": clock.thread_changes}
    if clock.compiles:
        first = clock.compiles[0]
        result.update(compile_s=first["seconds"], cache_hits=first["cache_hits"], cache_misses=first["cache_misses"])
    return result


def measure(kind: str, model: str, images: Path, cache: Path) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, __file__, "--one", kind, model, "--images", str(images)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_flops(op, flop: float, repeats: int = 10) -> float:
    op()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        op()
        best = max(best, flop / (time.perf_counter() - t0))
    return best


def peak_flops(threads: int) -> dict:
    """This CPU's practical fp32 peak at `threads`: the best of a large matmul (torch.matmul: MKL)
    and of the same GEMM through oneDNN (a 1x1 convolution, what EfficientNet's convolutions use);
    on AMD CPUs MKL's is less than half of oneDNN's."""
    import torch

    torch.set_num_threads(threads)
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = best_flops(lambda: a @ b, 2 * n ** 3)
    channels, side = 1024, 64
    x = torch.randn(1, channels, side, side).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        gemm = best_flops(lambda: conv(x), 2 * side * side * channels ** 2)
    return {"matmul_mkl": matmul, "gemm_onednn": gemm, "peak": max(matmul, gemm)}


def bench_model(model: str, images: Path, peak: float, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        order = [("fast", "fast"), ("compiled", "cold"), ("engine", "engine"), ("compiled", "warm"), ("fast", "fast")]
        order += [("engine", "engine"), ("compiled", "warm"), ("fast", "fast")] * (rounds - 1)
        runs: dict[str, list[dict]] = {}
        for kind, label in order:
            result = measure(kind, model, images, Path(cache))
            runs.setdefault(label, []).append(result)
            if result.get("thread_changes"):
                print(f"  (the thread count changed {result['thread_changes']} times: the box was busy)")
            print(f"{model:20s} {label:7s} {result['samples_per_s']:8.2f} samples/s "
                  f"{'compile %.1f s' % result['compile_s'] if 'compile_s' in result else ''}", flush=True)
    fast = statistics.median(r["samples_per_s"] for r in runs["fast"])
    compiled = statistics.median(r["samples_per_s"] for r in runs["cold"] + runs["warm"])
    eager = statistics.median(r["samples_per_s"] for r in runs["engine"])
    flop = runs["fast"][0]["flop_per_sample"]
    return {
        "samples_per_s": {"fast_eager": round(fast, 2), "engine_eager": round(eager, 2),
                          "engine_compiled": round(compiled, 2)},
        "compiled_vs_fast": round(compiled / fast, 3), "engine_eager_vs_fast": round(eager / fast, 3),
        "compiled_vs_engine_eager": round(compiled / eager, 3),
        "compile_s": {"cold": runs["cold"][0]["compile_s"], "warm": runs["warm"][0]["compile_s"]},
        "warm_cache": {"hits": runs["warm"][0]["cache_hits"], "misses": runs["warm"][0]["cache_misses"]},
        "train_gflop_per_sample": round(flop / 1e9, 3),
        "achieved_gflops": {"fast_eager": round(flop * fast / 1e9, 1), "engine_compiled": round(flop * compiled / 1e9, 1)},
        "mfu": {"fast_eager": round(flop * fast / peak, 3), "engine_compiled": round(flop * compiled / peak, 3)},
        "per_run": {label: [round(r["samples_per_s"], 2) for r in rs] for label, rs in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=1, help="more rounds of engine, compiled (warm) and fast: "
                        "one process's speed differs from the next one's by up to 15%% on a shared box")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.images)))
        return
    from trainer.config import load_config

    threads = load_config(ROOT / "configs" / "quickstart.yaml").threads
    with tempfile.TemporaryDirectory() as tmp:
        images = image_folder(Path(tmp) / "images")
        peaks = peak_flops(threads)
        print(f"fp32 peak at {threads} threads: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
              + " GFLOP/s", flush=True)
        results = {model: bench_model(model, images, peaks["peak"], args.rounds) for model in args.models.split(",")}
    summary = {"threads": threads, "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}, "models": results,
               "targets": {"compiled_vs_fast": ">= 1.2"}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
