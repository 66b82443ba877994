"""What `longhaul status`/`ls` and the picker show of a run, from its files alone (no daemon
needed): `status(run_dir)`, `list_runs(root)`. No torch.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from trainer.fmt import epoch_number, metric_label
from trainer.monitor import direction_of
from trainer.history.tail import recent_rate
from trainer.run import registry
from trainer.run.evaluation import headline_result, read_evaluation
from trainer.run.locate import run_names, runs_root, safe_is_run_dir
from trainer.run.plan import read_plan
from trainer.run.rundir import RunDir
from trainer.run.sockets import find_socket
from trainer.run.queue import QUEUED, queued_status
from trainer.run.state import LIVE_STATES, RUN_STATES, effective_state, read_state, started_at


def status(run_dir: Path) -> dict:
    """The `longhaul status --json` object of one run, from its files alone (a damaged
    state.json is rebuilt first: see rebuild_state)."""
    run_dir = Path(run_dir).absolute()
    state = read_state(run_dir)
    current = effective_state(run_dir, state)
    live = current in LIVE_STATES
    found = find_socket(run_dir, state) if live else None
    sock = str(found) if found is not None else None
    checkpoint = state.get("last_checkpoint") or {}
    age = time.time() - checkpoint["time"] if isinstance(checkpoint.get("time"), (int, float)) else None
    files = RunDir(run_dir)
    plan, config = read_if_changed(files.plan, lambda _: plan_summary(run_dir)) or ({}, {})
    total_epochs = plan.get("total_epochs") if isinstance(plan.get("total_epochs"), int) else None
    return {
        "name": state.get("name") or run_dir.name,
        "state": current,
        "step": state.get("step"),
        "total_steps": state.get("total_steps"),
        "epoch": epoch_number(state.get("epoch"), total_epochs),
        "total_epochs": total_epochs,
        "phase": state.get("phase"),
        "phase_name": state.get("phase_name"),
        "last_eval": eval_summary(state.get("last_eval")),
        "best_eval": eval_summary(state.get("best_eval")),
        "best": best_metric(state.get("best_eval"), config.get("monitor")),
        "samples_per_s": read_if_changed(files.history, recent_rate),
        "model": config.get("model"),
        # ranks of a data-parallel run: the group's plan (an elastic group may have shrunk), before it the config's
        "world_size": config.get("world_size") or state.get("world_size") or 1,
        "started": started_at(run_dir, state),
        "evaluation": evaluation_summary(run_dir),
        "pid": state.get("pid") if live else None,
        "socket": sock,
        "eta": state.get("eta") if live else None,
        "last_checkpoint_age": age,
        "updated": state.get("updated"),
        "stop_reason": state.get("stop_reason"),
        "pause_reason": state.get("pause_reason") if current == "paused" else None,
        "launch_failures": state.get("launch_failures") or 0,
        "rebuilt": state.get("rebuilt"),
        "queue": queued_status(run_dir, state) if current == QUEUED else None,
        "dir": str(run_dir),
    }


def state_label(info: dict) -> str:
    """A run's state as `ls` and the picker show it: a queued run with its position
    (`queued #2`), or `held` when a run it waits for did not finish."""
    queued = info.get("queue")
    if info.get("state") != QUEUED or not queued:
        return str(info.get("state") or "unknown")
    return "held" if queued.get("held") else f"queued #{queued.get('position') or '?'}"


def missing_status(run_dir: Path) -> dict:
    """The status of a registered run whose directory is gone (moved or deleted)."""
    run_dir = Path(run_dir)
    info = dict.fromkeys(("step", "total_steps", "epoch", "total_epochs", "best", "samples_per_s", "model",
                          "started", "phase", "phase_name", "last_eval", "best_eval", "evaluation", "pid",
                          "socket", "eta", "last_checkpoint_age", "updated", "stop_reason", "pause_reason",
                          "rebuilt", "queue", "world_size"))
    info.update(name=run_dir.name, state="missing", launch_failures=0, dir=str(run_dir),
                error=f"the registered run directory {run_dir} is gone (moved or deleted)")
    return info


def plan_summary(run_dir: Path) -> tuple[dict, dict]:
    """(plan, config summary) of plan.json; empty ones before the trainer wrote it or when it
    is damaged (status must answer for any run)."""
    try:
        plan, config = read_plan(run_dir)
    except (OSError, ValueError):
        return {}, {}
    return plan or {}, config


def best_metric(best_eval: Optional[dict], monitor: Optional[str]) -> Optional[dict]:
    """The run's best evaluation by its own monitor: {"metric", "label", "value", "step"}; None
    before one (or when the monitor is not known: no plan.json)."""
    if not isinstance(best_eval, dict) or not isinstance(monitor, str):
        return None
    value = best_eval.get(monitor)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return {"metric": monitor, "label": metric_label(monitor), "value": value, "step": best_eval.get("step")}


#: What was read of each file, with the (size, mtime) it was read at: the picker lists every
#: run every 2 s, and the plan and history of most runs (finished ones) never change again.
_READ: dict[str, tuple[tuple[int, int], Any]] = {}


def read_if_changed(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, or what it gave last time while the file has not changed; None without it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    seen, key = _READ.get(str(path)), (st.st_size, st.st_mtime_ns)
    if seen is not None and seen[0] == key:
        return seen[1]
    value = read(path)
    _READ[str(path)] = (key, value)
    return value


def eval_summary(ev: Optional[dict]) -> Optional[dict]:
    """An evaluation with the short names scripts rely on (accuracy, f1_macro, loss) added to
    its full val_* metrics."""
    if not isinstance(ev, dict):
        return None
    short = {key: ev.get(f"val_{key}") for key in ("accuracy", "f1_macro", "loss")}
    return {**short, **ev}


#: What status --json (and the end-of-run event) shows of an evaluation.json result.
EVALUATION_KEYS = ("split", "weights", "step", "data", "time", "n", "accuracy", "f1_macro", "f1_weighted",
                   "auc_roc_macro", "auc_pr_macro", "ci", "ci_level", "temperature", "ece_before", "ece_after")


def result_summary(result: dict) -> dict:
    """The short form of one `longhaul evaluate` RESULT: EVALUATION_KEYS, and the TTA headline."""
    out = {key: result.get(key) for key in EVALUATION_KEYS}
    tta = result.get("tta")
    if isinstance(tta, dict):
        out["tta"] = {key: tta.get(key) for key in ("transforms", "accuracy", "f1_macro", "auc_roc_macro", "ece_after")}
    return out


def evaluation_summary(run_dir: Path) -> Optional[dict]:
    """The headline result of the run's evaluation.json (the one the TUI's summary shows: the
    newest on the test split of the run's own data, else the newest), summarised; None without
    one or when the file is damaged."""
    try:
        evaluation = read_evaluation(run_dir)
    except (OSError, ValueError):
        return None
    headline = headline_result(evaluation)
    if headline is None:
        return None
    return {**result_summary(headline), "results": len(evaluation["results"])}


def list_runs(root: Optional[Path] = None) -> list[dict]:
    """`status()` of every run directory directly under `root` (default `runs_root()`), by name,
    then of every other run in the user's registry (trainer.run.registry), by path; a registered
    run whose directory is gone has state "missing"."""
    root = Path(root) if root is not None else runs_root()
    infos = [status(root / name) for name in run_names(root)]
    seen = {info["dir"] for info in infos}
    for path in registry.registered():
        if str(path) in seen:
            continue
        if safe_is_run_dir(path):
            infos.append(status(path))
        elif not path.exists():
            infos.append(missing_status(path))
    return infos


# ----------------------------------------------------------------------------- order and filter
# One rule for `longhaul ls --sort/--filter` and the picker's `o` and `/`.
SORTS = ("started", "name", "state", "best", "samples/s")


def matches(info: dict, text: str) -> bool:
    """Whether the filter `text` is in the run's name, state or model (case-insensitive)."""
    needle = text.casefold()
    return any(needle in str(info.get(key) or "").casefold() for key in ("name", "state", "model"))


def _best_rank(info: dict) -> tuple:
    best = info.get("best") or {}
    value = best.get("value")
    if not isinstance(value, (int, float)):
        return (1, 0.0)
    return (0, value if direction_of(str(best.get("metric") or "")) == "min" else -value)


SORT_KEYS: dict[str, Callable[[dict], tuple]] = {
    "started": lambda info: (info.get("started") is None, -(info.get("started") or 0.0)),  # newest first
    "name": lambda info: (str(info.get("name") or "").casefold(),),
    "state": lambda info: (RUN_STATES.index(info["state"]) if info.get("state") in RUN_STATES else len(RUN_STATES),),
    "best": _best_rank,  # better first, by each run's own monitor
    "samples/s": lambda info: (info.get("samples_per_s") is None, -(info.get("samples_per_s") or 0.0)),
}


def ordered(infos: list[dict], sort: str, text: str) -> list[dict]:
    """The runs the table shows: those matching `text`, in `sort` order (then by name)."""
    shown = [info for info in infos if not text or matches(info, text)]
    shown.sort(key=lambda info: str(info.get("name") or "").casefold())
    shown.sort(key=SORT_KEYS[sort])
    return shown
