"""Offline mode: build a `RunModel` from a run directory when no daemon is serving the run.

Reads state.json (through `trainer.runs`), plan.json, history.msgpack (through
`trainer.history.load_summary`: downsampled once, then cached beside the history file),
the tail of events.jsonl and the tail of train.log. Missing files are normal (a run that never
got far); unreadable ones are reported as a warning event instead of crashing the dashboard.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from trainer import history, runs
from trainer.runs import tail_lines
from tui.model import RunModel, Series

TAIL_EVENTS = 200
TAIL_LOGS = 200


def read_events(path: Path, count: int = TAIL_EVENTS) -> tuple[list[dict], list[str]]:
    """The last `count` events of events.jsonl, and a problem per line that was not an event."""
    events, problems = [], []
    for number, line in enumerate(tail_lines(path, count)):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: unreadable line ({exc.msg}) near the end")
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, problems


def read_plan(run_dir: Path) -> tuple[Optional[dict], dict]:
    """(plan, config summary) from plan.json; (None, {}) before the trainer wrote it."""
    try:
        data = json.loads((run_dir / "plan.json").read_text())
    except FileNotFoundError:
        return None, {}
    if not isinstance(data, dict):
        raise ValueError(f"{run_dir / 'plan.json'}: expected a JSON object")
    return data.get("plan"), dict(data.get("config") or {})


def progress_from_state(state: dict, plan: Optional[dict]) -> dict:
    """A progress body rebuilt from state.json, so the header reads the same as when live."""
    return {
        "step": state.get("step") or 0,
        "total_steps": state.get("total_steps") or (plan or {}).get("total_steps") or 0,
        "epoch": state.get("epoch"),
        "total_epochs": (plan or {}).get("total_epochs"),
        "phase": state.get("phase"),
        "phase_name": state.get("phase_name"),
        "elapsed": state.get("elapsed"),
        "eta": state.get("eta"),
        "phase_etas": [],
        "metrics": {},
        "time": state.get("updated"),
    }


def load_run_dir(run_dir: Path, model: Optional[RunModel] = None) -> RunModel:
    """Everything the dashboard shows, from the run directory alone."""
    run_dir = Path(run_dir)
    model = model or RunModel()
    model.run_dir = run_dir
    problems: list[str] = []
    state = runs.read_state(run_dir)  # a damaged state.json is rebuilt from the run directory
    rebuilt = state.get("rebuilt")
    if isinstance(rebuilt, dict):
        problems.append(f"state.json was damaged ({rebuilt.get('problem')}); rebuilt from "
                        f"{', '.join(rebuilt.get('from') or []) or 'nothing'}")
    model.name = state.get("name") or run_dir.name
    model.state = runs.effective_state(run_dir, state)
    try:
        model.plan, model.config = read_plan(run_dir)
    except (ValueError, OSError) as exc:
        problems.append(f"plan.json: {exc}")
    model.progress = progress_from_state(state, model.plan)
    model.last_checkpoint = state.get("last_checkpoint")
    summary = history.load_summary(run_dir / "history.msgpack", model.monitor_rule)
    model.series = {name: Series.from_wire(body) for name, body in summary.series.items()}
    model.eval_last = state.get("last_eval") or summary.last_eval
    model.eval_best = state.get("best_eval") or summary.best_eval
    events, event_problems = read_events(run_dir / "events.jsonl")
    problems += event_problems
    now = time.time()
    events += [{"time": now, "kind": "alert", "level": "warning", "message": p, "data": {}} for p in problems]
    logs = [{"stream": "stdout", "line": line} for line in tail_lines(run_dir / "train.log", TAIL_LOGS)]
    model.reset_feeds(events, logs)
    model.system = None
    return model
