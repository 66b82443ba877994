"""What does `longhaul cv` cost beyond training its folds? (issue 16 part 2's measure)

3-fold cross-validations of configs/quickstart.yaml cut short (`--set max_steps=N`, by default
300 steps a fold, six epochs of 50 steps: about a minute a fold on a quiet 2-core box, set-up and
evaluations included), in one run, on the same box, in fresh runs roots:

- cv: `longhaul cv CONFIG --folds 3`, from the command's start until the parent's status says
  every fold is done and each fold's daemon has exited (its after-run work, the report,
  included): the folds go through the run queue, each trained by its own daemon, the next
  started by the daemon of the one before when it ends;
- train: the same three fold runs made by `trainer.run.cv.create_cv` in another root, each
  trained by a `longhaul train FOLD/config.yaml --run-dir FOLD` call, back to back.

Both do the same work per fold (training, the held-out fold's evaluation, the report; the last
fold writes the out-of-fold file), so the ratio cv/train is what the command and the queue add.
Each call is a fresh Python process; nice 5 like the rest of the box's work. The order of the
two alternates over --rounds (cv, train, train, cv, ...), so the box's drift falls on both.

Prints a line per part, then one JSON object on the last line.

    python bench/cv.py [--max-steps 300] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "quickstart.yaml"
FOLDS = 3


def longhaul(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=False)


def environment(base: Path) -> dict:
    runtime = base / "runtime"
    runtime.mkdir(parents=True)
    return dict(os.environ, LONGHAUL_ROOT=str(base / "runs"), XDG_RUNTIME_DIR=str(runtime),
                LONGHAUL_STATE_DIR=str(base / "state"), PYTHONPATH=str(ROOT))


def time_cv(base: Path, overrides: list[str]) -> tuple[float, dict]:
    """Seconds from `longhaul cv` to every fold done (finished or failed), and the final status."""
    env = environment(base)
    sets = [arg for value in overrides for arg in ("--set", value)]
    start = time.perf_counter()
    result = longhaul(env, "cv", str(CONFIG), "--folds", str(FOLDS), "--name", "bench-cv", "--quiet", *sets)
    if result.returncode not in (0, 1):
        raise SystemExit(f"longhaul cv failed ({result.returncode}): {result.stderr}")
    from trainer.run.cv_status import cv_status
    from trainer.run.liveness import is_longhaul_process
    from trainer.run.state import read_state

    while True:  # the command returns at once: the queue trains the folds. Read in this process
        # (a `longhaul status` process a second would take CPU from the training it times)
        status = cv_status(base / "runs" / "bench-cv")
        # done: every fold ended and its daemon exited, as a `train` call returns only after its
        # after-run work (the last fold writes the out-of-fold file, then its report)
        if status["state"] not in ("running", "queued") and not any(
                is_longhaul_process(read_state(Path(fold["dir"])).get("pid")) for fold in status["folds"]):
            return time.perf_counter() - start, status
        time.sleep(0.5)


def time_trains(base: Path, overrides: list[str]) -> tuple[float, dict]:
    """Seconds of three `longhaul train` calls of the same fold runs, back to back."""
    from trainer.config import load_config
    from trainer.run.cv import create_cv
    from trainer.run.cv_status import cv_status
    from trainer.run.rundir import RunDir

    env = environment(base)
    os.environ["LONGHAUL_STATE_DIR"] = env["LONGHAUL_STATE_DIR"]  # create_cv registers the folds there
    cfg = load_config(CONFIG, overrides=[*overrides, f"data.folds.k={FOLDS}"], check_model=False)
    parent, folds = create_cv(base / "runs", "bench-train", cfg, FOLDS, str(CONFIG))
    start = time.perf_counter()
    for run_dir in folds:
        result = longhaul(env, "train", str(RunDir(run_dir).config), "--run-dir", str(run_dir), "--quiet")
        if result.returncode != 0:
            raise SystemExit(f"longhaul train {run_dir.name} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start, cv_status(parent)


def summary(status: dict) -> dict:
    f1 = status["aggregate"]["val"]["f1_macro"]
    return {"states": [fold["state"] for fold in status["folds"]], "val_f1_mean": f1["mean"], "val_f1_std": f1["std"],
            "oof": status["oof"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="repeat as cv, train, train, cv, ... (ABBA: the "
                                                              "box's drift falls on both alike)")
    args = parser.parse_args()
    overrides = [f"max_steps={args.max_steps}"]
    order = [name for i in range(args.rounds) for name in (("cv", "train") if i % 2 == 0 else ("train", "cv"))]
    seconds: dict[str, list[float]] = {"cv": [], "train": []}
    summaries: dict[str, list[dict]] = {"cv": [], "train": []}
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as tmp:
        for i, name in enumerate(order):
            timer = time_cv if name == "cv" else time_trains
            took, status = timer(Path(tmp) / f"{name}{i}", overrides)
            seconds[name].append(round(took, 2))
            summaries[name].append(summary(status))
            print(f"{name}: {took:.1f} s  {summaries[name][-1]}", flush=True)
    cv_s, train_s = sum(seconds["cv"]), sum(seconds["train"])
    print(json.dumps({"bench": "cv", "folds": FOLDS, "max_steps": args.max_steps, "through_queue": True,
                      "order": order, "cv_seconds": seconds["cv"], "train_seconds": seconds["train"],
                      "ratio": round(cv_s / train_s, 4), "cv": summaries["cv"], "train": summaries["train"]}))


if __name__ == "__main__":
    main()
