"""What `longhaul status`/`ls` and the picker show of a run, from its files alone (no daemon
needed): `status(run_dir)`, `list_runs(root)`. No torch.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from trainer.run import registry
from trainer.run.locate import run_names, runs_root, safe_is_run_dir
from trainer.run.rundir import RunDir
from trainer.run.sockets import find_socket
from trainer.run.state import LIVE_STATES, effective_state, read_state


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
    return {
        "name": state.get("name") or run_dir.name,
        "state": current,
        "step": state.get("step"),
        "total_steps": state.get("total_steps"),
        "epoch": state.get("epoch"),
        "phase": state.get("phase"),
        "phase_name": state.get("phase_name"),
        "last_eval": eval_summary(state.get("last_eval")),
        "best_eval": eval_summary(state.get("best_eval")),
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
        "dir": str(run_dir),
    }


def missing_status(run_dir: Path) -> dict:
    """The status of a registered run whose directory is gone (moved or deleted)."""
    run_dir = Path(run_dir)
    info = dict.fromkeys(("step", "total_steps", "epoch", "phase", "phase_name", "last_eval", "best_eval", "evaluation", "pid",
                          "socket", "eta", "last_checkpoint_age", "updated", "stop_reason", "pause_reason",
                          "rebuilt"))
    info.update(name=run_dir.name, state="missing", launch_failures=0, dir=str(run_dir),
                error=f"the registered run directory {run_dir} is gone (moved or deleted)")
    return info


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
    """The latest result in the run's evaluation.json (by time), summarised; None without one."""
    try:
        doc = json.loads(RunDir(run_dir).evaluation.read_text())
        results = [r for r in doc["results"].values() if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not results:
        return None
    latest = max(results, key=lambda r: r.get("time") if isinstance(r.get("time"), (int, float)) else 0)
    return {**result_summary(latest), "results": len(results)}


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
