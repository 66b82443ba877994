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
from trainer.monitor import usable
from trainer.run.cv import cv_names, read_cv
from trainer.run.errors import RunError
from trainer.run.evaluation import read_evaluation
from trainer.run.rundir import CvDir, RunDir
from trainer.run.state import LIVE_STATES, effective_state, read_state
from trainer.run.status import eval_summary, list_runs

#: A fold that has no state.json yet: made, not started (the queue writes `queued`).
WAITING = "waiting"
#: The metrics the aggregate gives for each split (the run's monitor is added to both).
AGGREGATED = ("accuracy", "f1_macro")
#: Monitors that are in the table already (as accuracy and F1): no column of their own.
IN_TABLE = ("val_accuracy", "val_f1_macro")
#: Two-class monitors whose test value is the positive class's (index 1, as in the engine's
#: binary metrics) one-vs-rest score in evaluation.json's per_class.
POSITIVE_CLASS_SCORES = ("auc_roc", "auc_pr", "sensitivity", "specificity", "ppv", "npv")


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
            "total_steps": state.get("total_steps"), "best": best, "val": val,
            "test": test_metrics(run_dir, monitor)}


def test_metrics(run_dir: Path, monitor: str) -> Optional[dict]:
    """accuracy, f1_macro and the monitor's counterpart (test_name) of the fold's test
    evaluation with best.pt (the end-of-run one)."""
    try:
        result = ((read_evaluation(run_dir) or {}).get("results") or {}).get("test/best")
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict):
        return None
    metrics = {key: result.get(key) for key in (*AGGREGATED, "n", "step")}
    name = test_name(monitor)
    if name and name not in metrics:
        metrics[name] = test_value(result, name)
    return metrics


def test_name(monitor: str) -> Optional[str]:
    """The monitor's name in evaluation.json (`val_recall_macro`: `recall_macro`); None for a
    loss: the result's losses are NLLs of calibrated and uncalibrated probabilities, not the
    training loss the engine validates with."""
    if not monitor.startswith("val_") or monitor.endswith("_loss"):
        return None
    return monitor.removeprefix("val_")


def test_value(result: dict, name: str) -> Optional[float]:
    """`name` (test_name) in one evaluation.json result. The result keeps the macro precision
    and recall and the two-class rates per class only, so they are read the engine's way from
    there: the mean over the classes that are true or predicted somewhere (scikit-learn's macro
    average), the positive class's one-vs-rest score."""
    if usable(result.get(name)):
        return result[name]
    classes, per_class = result.get("classes") or [], result.get("per_class") or {}
    if name in POSITIVE_CLASS_SCORES and len(classes) == 2:
        value = (per_class.get(classes[1]) or {}).get(name)
        return value if usable(value) else None
    if name not in ("precision_macro", "recall_macro") or not classes:
        return None
    confusion = result.get("confusion") or []
    predicted = [sum(row[c] for row in confusion) for c in range(len(classes))] if confusion else [0] * len(classes)
    seen = [c for i, c in enumerate(classes)
            if (per_class.get(c) or {}).get("support") or (predicted[i] if i < len(predicted) else 0)]
    values = [(per_class.get(c) or {}).get(name.removesuffix("_macro")) for c in seen]
    return sum(values) / len(values) if values and all(usable(v) for v in values) else None


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
    """Mean, standard deviation and n of accuracy and f1_macro over the finished folds, under
    `val` and `test` with the monitor too (test: when a fold's evaluation.json gives it); the
    others are listed under `excluded` with their state. `accuracy` and `f1_macro` at the top are
    the cross-validated estimate: the val ones, each fold scored on the fold it did not train on
    (the test split is the same for every fold: its spread is the models', not the data's)."""
    done = [fold for fold in folds if fold["state"] == "finished"]
    val_keys = AGGREGATED + ((monitor,) if monitor not in AGGREGATED else ())
    val = {key: stat([(fold["val"] or {}).get(key) for fold in done]) for key in val_keys}
    test = {key: stat([(fold["test"] or {}).get(key) for fold in done]) for key in AGGREGATED}
    name = test_name(monitor)
    if name and name not in test:
        counterpart = stat([(fold["test"] or {}).get(name) for fold in done])
        if counterpart["n"]:
            test[name] = counterpart
    return {"n": len(done), "k": len(folds),
            "excluded": [{"name": fold["name"], "state": fold["state"]} for fold in folds if fold not in done],
            **{key: dict(val[key]) for key in AGGREGATED}, "val": val, "test": test}


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
    extra = monitor_column(info["monitor"])
    titles = ["VAL ACC", "VAL F1", "TEST ACC", "TEST F1"]
    if extra:
        label = metric_label(info["monitor"]).upper()
        titles += [f"VAL {label}", f"TEST {label}"]
    width = max(8, *(len(title) for title in titles))
    lines = [f"{info['name']}: cross-validation, {info['k']} folds, {info['state']} ({counts})",
             f"  {'FOLD':4} {'RUN':28} {'STATE':12} {'STEP':>11} " + " ".join(f"{t:>{width}}" for t in titles)]
    for fold in info["folds"]:
        val, test = fold["val"] or {}, fold["test"] or {}
        step = f"{fold['step'] or 0}/{fold['total_steps'] or '?'}"
        values = [val.get("accuracy"), val.get("f1_macro"), test.get("accuracy"), test.get("f1_macro")]
        if extra:
            values += [val.get(info["monitor"]), test.get(extra)]
        lines.append(f"  {fold['index'] + 1:<4} {fold['name'][:28]:28} {fold['state']:12} {step:>11} "
                     + " ".join(f"{number(v):>{width}}" for v in values))
    agg = info["aggregate"]
    left_out = ", ".join(f"{e['name']} {e['state']}" for e in agg["excluded"])
    lines.append(f"  aggregate of {agg['n']} of {agg['k']} folds" + (f" (left out: {left_out})" if left_out else ""))
    for split in ("val", "test"):
        lines.append(f"    {split:5}" + "  ".join(f"{key} {mean_std(value)}" for key, value in agg[split].items()))
    if info.get("oof"):
        lines.append(f"  out-of-fold predictions: {info['oof']['csv']}")
    lines.append(f"  dir {info['dir']}")
    return "\n".join(lines)


def monitor_column(monitor: str) -> Optional[str]:
    """The key of the monitor's value in a fold's `test` (its name in evaluation.json; the
    monitor's own name when it has none there) when the table needs a column for it, None when
    it is accuracy or F1 already."""
    if monitor in IN_TABLE:
        return None
    return test_name(monitor) or monitor


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
