"""What `longhaul status NAME --json`, `status NAME` and the TUI show of a cross-validation
(trainer.run.cv): each fold's state, best validation metrics and test metrics, and the mean and
standard deviation of the finished folds' metrics. Read from the folds' own files (state.json,
evaluation.json) every time: nothing is cached in the parent, so a fold resumed or finished
later changes the aggregate at once. A fold that is not finished (failed, stopped, running) is
listed with its state and left out of the aggregate (its `n` says how many were counted). No torch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from trainer.fmt import metric_label
from trainer.run.cv import cv_names, read_cv
from trainer.run.errors import RunError
from trainer.run.evaluation import read_evaluation
from trainer.run.rundir import CvDir, RunDir
from trainer.run.state import LIVE_STATES, effective_state, read_state
from trainer.run.status import eval_summary, list_runs

#: A fold that has no state.json yet: made, not started (the queue writes `queued`).
WAITING = "waiting"
#: The metrics the aggregate gives for each split (the run's monitor is added to "val").
AGGREGATED = ("accuracy", "f1_macro")


def cv_status(parent: Path) -> dict:
    """The status object of the cross-validation in `parent` (see the module docstring)."""
    parent = Path(parent).absolute()
    doc = read_cv(parent)
    monitor = str(doc.get("monitor") or "val_f1_macro")
    folds = [fold_entry(fold, monitor) for fold in doc["folds"]]
    files = CvDir(parent)
    oof = {"npz": str(files.oof_npz), "csv": str(files.oof_csv)} if files.oof_npz.is_file() else None
    return {"name": doc.get("name") or parent.name, "kind": "cv", "state": overall_state(folds), "k": doc["k"],
            "monitor": monitor, "created": doc.get("created"), "source": doc.get("source"),
            "counts": state_counts(folds), "folds": folds, "aggregate": aggregate(folds, monitor), "oof": oof,
            "dir": str(parent)}


def fold_entry(fold: dict, monitor: str) -> dict:
    """One fold: index, name, dir, state, step, best (monitored value), val (the best
    evaluation's accuracy, f1_macro, loss and monitor) and test (evaluation.json's test/best)."""
    run_dir = Path(str(fold.get("dir")))
    entry = {"index": fold.get("index"), "name": fold.get("name") or run_dir.name, "dir": str(run_dir),
             "state": "missing", "step": None, "total_steps": None, "best": None, "val": None, "test": None}
    if not run_dir.is_dir():
        return entry
    if not RunDir(run_dir).state.exists():
        return {**entry, "state": WAITING}
    state = read_state(run_dir)
    best_eval = eval_summary(state.get("best_eval"))
    val = None
    if best_eval:
        val = {key: best_eval.get(key) for key in ("accuracy", "f1_macro", "loss")}
        val[monitor] = best_eval.get(monitor)
    best = {"metric": monitor, "value": val[monitor], "step": best_eval.get("step")} if val else None
    return {**entry, "state": effective_state(run_dir, state), "step": state.get("step"),
            "total_steps": state.get("total_steps"), "best": best, "val": val, "test": test_metrics(run_dir)}


def test_metrics(run_dir: Path) -> Optional[dict]:
    """accuracy and f1_macro of the fold's test evaluation with best.pt (the end-of-run one)."""
    try:
        result = ((read_evaluation(run_dir) or {}).get("results") or {}).get("test/best")
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict):
        return None
    return {key: result.get(key) for key in (*AGGREGATED, "n", "step")}


def overall_state(folds: list[dict]) -> str:
    """finished when every fold is; running while any fold runs; queued while folds wait and
    none ran into trouble; else incomplete (some folds failed, stopped or were interrupted)."""
    states = [fold["state"] for fold in folds]
    if states and all(s == "finished" for s in states):
        return "finished"
    if any(s in LIVE_STATES for s in states):
        return "running"
    if all(s in ("finished", WAITING, "queued") for s in states):
        return "queued"
    return "incomplete"


def state_counts(folds: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for fold in folds:
        counts[fold["state"]] = counts.get(fold["state"], 0) + 1
    return counts


def aggregate(folds: list[dict], monitor: str) -> dict:
    """Mean, standard deviation and n of accuracy and f1_macro (val: also the monitor) over the
    finished folds; the others are listed under `excluded` with their state."""
    done = [fold for fold in folds if fold["state"] == "finished"]
    val_keys = AGGREGATED + ((monitor,) if monitor not in AGGREGATED else ())
    return {"n": len(done), "k": len(folds),
            "excluded": [{"name": fold["name"], "state": fold["state"]} for fold in folds if fold not in done],
            "val": {key: stat([(fold["val"] or {}).get(key) for fold in done]) for key in val_keys},
            "test": {key: stat([(fold["test"] or {}).get(key) for fold in done]) for key in AGGREGATED}}


def stat(values: list) -> dict:
    """{mean, std (sample, n-1; null below 2 values), n} of the numbers among `values`."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v)]
    n = len(numbers)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(numbers) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n}


# ----------------------------------------------------------------------------- text
def format_cv_status(info: dict) -> str:
    """`longhaul status NAME` of a cross-validation: a line, a table of the folds, the aggregate."""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(info["counts"].items()))
    lines = [f"{info['name']}: cross-validation, {info['k']} folds, {info['state']} ({counts})",
             f"  {'FOLD':4} {'RUN':28} {'STATE':12} {'STEP':>11} {'VAL ACC':>8} {'VAL F1':>8} {'TEST ACC':>8} "
             f"{'TEST F1':>8}"]
    for fold in info["folds"]:
        val, test = fold["val"] or {}, fold["test"] or {}
        step = f"{fold['step'] or 0}/{fold['total_steps'] or '?'}"
        lines.append(f"  {fold['index'] + 1:<4} {fold['name'][:28]:28} {fold['state']:12} {step:>11} "
                     f"{number(val.get('accuracy')):>8} {number(val.get('f1_macro')):>8} "
                     f"{number(test.get('accuracy')):>8} {number(test.get('f1_macro')):>8}")
    agg = info["aggregate"]
    left_out = ", ".join(f"{e['name']} {e['state']}" for e in agg["excluded"])
    lines.append(f"  aggregate of {agg['n']} of {agg['k']} folds" + (f" (left out: {left_out})" if left_out else ""))
    for split in ("val", "test"):
        lines.append(f"    {split:5}" + "  ".join(f"{key} {mean_std(value)}" for key, value in agg[split].items()))
    if info.get("oof"):
        lines.append(f"  out-of-fold predictions: {info['oof']['csv']}")
    lines.append(f"  dir {info['dir']}")
    return "\n".join(lines)


def number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def mean_std(value: dict) -> str:
    """`0.8123 ± 0.0100` (n<2: no ±; none: -)."""
    if value.get("mean") is None:
        return "-"
    return number(value["mean"]) + (f" ± {value['std']:.4f}" if value.get("std") is not None else "")


# ----------------------------------------------------------------------------- the run list
def cv_row(parent: Path) -> dict:
    """`cv_status` with what the run list sorts and filters by (started, model, best: the mean of
    the monitor over the finished folds) and shows (step/total_steps: folds finished of k)."""
    info = cv_status(parent)
    monitor = info["monitor"]
    value = info["aggregate"]["val"].get(monitor, {})
    best = {"metric": monitor, "label": metric_label(monitor), "value": value["mean"], "step": None,
            "std": value["std"]} if value.get("mean") is not None else None
    model = ((read_cv(parent).get("config") or {}).get("model") or {}).get("name")
    return {**info, "started": info.get("created"), "model": model, "best": best,
            "step": info["counts"].get("finished", 0), "total_steps": info["k"]}


def list_with_cvs(root: Path) -> list[dict]:
    """The picker's list: every run (`list_runs`) and every cross-validation under `root`; a
    damaged cv.json is left out (`status NAME` names the problem)."""
    rows = []
    for name in cv_names(Path(root)):
        try:
            rows.append(cv_row(Path(root) / name))
        except RunError:
            continue
    return list_runs(root) + rows
