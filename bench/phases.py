"""Speed of each phase of the progressive-unfreezing recipe: frozen parameters get no gradients,
so a phase that trains less of the backbone should run faster. Measured side by side
(interleaved rounds) with the engine's own freezing helpers on EfficientNetV2-S.

    python bench/phases.py [--model tf_efficientnetv2_s] [--size 224] [--batch 4] [--steps 8]
Prints a table and a JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import models  # noqa: E402
from trainer.config import RunConfig  # noqa: E402

RECIPE = [("head", 0.0), ("top25", 0.25), ("top50", 0.5), ("full", 1.0)]


def step_time(model, opt, x, y, steps: int) -> float:
    """Median seconds per optimizer step (forward, backward, AdamW)."""
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step after a phase change allocates state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnetv2_s")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = RunConfig.model_validate({"model": {"name": args.model}})
    model = models.build_model(cfg, num_classes=5, in_chans=3, input_shape=(3, args.size, args.size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch,))
    seconds: dict[str, list[float]] = {name: [] for name, _ in RECIPE}
    trainable: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, fraction in RECIPE:
            trainable[name], total = models.apply_trainable(model, fraction)
            models.set_train_mode(model)
            seconds[name].append(step_time(model, opt, x, y, args.steps))
    full = statistics.median(seconds["full"])
    rows = []
    for name, fraction in RECIPE:
        s = statistics.median(seconds[name])
        rows.append({"phase": name, "trainable_fraction": fraction, "trainable_params": trainable[name],
                     "seconds_per_step": round(s, 4), "speedup_vs_full": round(full / s, 3)})
        print(f"{name:6s} trainable {fraction:4.2f} ({trainable[name]:>10,} params) "
              f"{s * 1000:8.1f} ms/step  x{full / s:.2f} vs full")
    print(json.dumps({"model": args.model, "image_size": args.size, "batch": args.batch,
                      "threads": args.threads, "total_params": total, "phases": rows}))


if __name__ == "__main__":
    main()
