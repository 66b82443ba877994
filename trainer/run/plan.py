"""RUN_DIR/plan.json: the phase plan and the config summary, written by the trainer when it
starts (atomically: offline readers need it whole) and read by everyone who draws the schedule
without a daemon. No torch.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from trainer.run.rundir import RunDir, atomic_write_json


def write_plan(run_dir: str | os.PathLike, plan: dict, config: dict) -> dict:
    """Write plan.json (`{"plan": plan, "config": config}`, fsynced with its directory) and
    return that body (the trainer sends the same to the daemon)."""
    body = {"plan": plan, "config": config}
    atomic_write_json(RunDir(run_dir).plan, body)
    return body


def read_plan(run_dir: str | os.PathLike) -> tuple[Optional[dict], dict]:
    """(plan, config summary) from plan.json; (None, {}) before the trainer wrote it.

    Raises ValueError for a file that is not a JSON object with an object `plan` (damage) and
    OSError when it cannot be read."""
    path = RunDir(run_dir).plan
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    plan = data.get("plan")
    if plan is not None and not isinstance(plan, dict):
        raise ValueError(f"{path}: expected an object under 'plan', found {type(plan).__name__}")
    config = data.get("config")
    return plan, dict(config) if isinstance(config, dict) else {}


def planned_steps(run_dir: str | os.PathLike) -> Optional[int]:
    """The plan's total_steps; None when plan.json is missing, damaged or has none."""
    try:
        plan, _ = read_plan(run_dir)
    except (OSError, ValueError):
        return None
    total = (plan or {}).get("total_steps")
    return total if isinstance(total, int) else None
