"""One snapshot of a run from its directory alone, in the protocol's `snapshot` form
(docs/PROTOCOL.md: same keys and shapes; fields the files do not hold are None or empty): what the offline dashboard shows, and what a daemon starting on the run
knows before its trainer reports. No torch (the history is read through numpy).

    snapshot_from_run_dir(run_dir) -> {
        "state":    effective state (a live state whose owner is gone: "interrupted"),
        "config":   the config summary of plan.json ({} before the trainer wrote it),
        "plan":     the phase plan of plan.json ({} before),
        "progress": a progress body rebuilt from state.json (fields a live frame has and
                    state.json does not are None or empty),
        "series":   downsampled series of history.msgpack (history.load_summary, cached),
        "eval":     {"last", "best"}: state.json's, else the history's,
        "events":   the valid protocol events among the last TAIL_EVENTS lines of events.jsonl, then one `alert` (warning) per problem found
                    (a rebuilt state.json, a damaged plan.json, unreadable event lines),
        "logs":     the last TAIL_LOGS lines of train.log as log bodies,
        "system":   None (no live samples),
        # beyond the protocol's snapshot:
        "name":     the run's name (state.json's, else the directory's),
        "last_checkpoint": state.json's {time, step, path} (None before the first),
    }

Missing files are normal (a run that never got far); unreadable ones become those alerts
instead of exceptions.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from trainer import protocol
from trainer.monitor import Monitor
from trainer.protocol import ProtocolError
from trainer.run.events import RECENT_EVENTS, read_events
from trainer.run.linefile import tail_lines
from trainer.run.plan import read_plan
from trainer.run.rundir import RunDir
from trainer.run.state import effective_state, read_state

TAIL_EVENTS = RECENT_EVENTS
TAIL_LOGS = 200


def snapshot_from_run_dir(run_dir: str | os.PathLike, with_series: bool = True) -> dict:
    """The run's snapshot (see the module docstring) read from its directory. `with_series=False`
    leaves the history unread (series {}, eval from state.json only): for a daemon, which loads
    the history into a live series set of its own."""
    rundir = RunDir(run_dir)
    problems: list[str] = []
    state = read_state(rundir.path)  # a damaged state.json is rebuilt from the run directory
    rebuilt = state.get("rebuilt")
    if isinstance(rebuilt, dict):
        problems.append(f"{rundir.state.name} was damaged ({rebuilt.get('problem')}); rebuilt from "
                        f"{', '.join(rebuilt.get('from') or []) or 'nothing'}")
    plan, config = None, {}
    try:
        plan, config = read_plan(rundir.path)
    except (ValueError, OSError) as exc:
        problems.append(f"{rundir.plan.name}: {exc}")
    series, history_eval = _history_summary(rundir, config) if with_series else ({}, {})
    events, event_problems = read_events(rundir.events, TAIL_EVENTS)
    problems += event_problems
    events = protocol_events(events)
    return {
        "state": effective_state(rundir.path, state),
        "config": config,
        "plan": plan or {},
        "progress": progress_from_state(state, plan),
        "series": series,
        "eval": {"last": state.get("last_eval") or history_eval.get("last"),
                 "best": state.get("best_eval") or history_eval.get("best")},
        "events": events + problem_alerts(problems),
        "logs": recent_logs(rundir, TAIL_LOGS),
        "system": None,
        "name": state.get("name") or rundir.name,
        "last_checkpoint": state.get("last_checkpoint"),
    }


def _history_summary(rundir: RunDir, config: dict) -> tuple[dict, dict]:
    """(downsampled series, {"last", "best"} evaluations) of the history, through its cache."""
    from trainer.history import load_summary  # numpy: only readers of the series pay for it

    summary = load_summary(rundir.history, Monitor.of_summary(config))
    return summary.series, {"last": summary.last_eval, "best": summary.best_eval}


def progress_from_state(state: dict, plan: Optional[dict]) -> dict:
    """A progress body rebuilt from state.json, so a header reads the same as when live."""
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


def carried_progress(progress: Optional[dict], plan: Optional[dict], now: Optional[float] = None) -> Optional[dict]:
    """`progress` (progress_from_state's) as a complete protocol progress body, or None before
    the run trained (step 0) or when state.json lacks what a progress frame must hold.

    A daemon starting on a run it resumes shows this until its worker reports: the header keeps
    the run's step, phase, epoch and elapsed instead of dropping to `step 0, phase –, epoch –`.
    The fields state.json does not keep are worked out from the plan (epoch_step) or left empty
    (phase_etas, metrics)."""
    progress = progress or {}
    step, epoch, phase = progress.get("step"), progress.get("epoch"), progress.get("phase")
    if not step or not all(isinstance(v, int) and not isinstance(v, bool) for v in (step, epoch, phase)):
        return None
    phases = (plan or {}).get("phases") or []
    spec = phases[phase] if 0 <= phase < len(phases) and isinstance(phases[phase], dict) else {}
    per_epoch = int(spec.get("steps_per_epoch") or 0)
    epoch_step = step - int(spec.get("start_step") or 0) - (epoch - int(spec.get("start_epoch") or 0)) * per_epoch
    elapsed, eta = progress.get("elapsed"), progress.get("eta")
    return {
        "step": step, "total_steps": int(progress.get("total_steps") or 0), "epoch": epoch,
        "total_epochs": int(progress.get("total_epochs") or 0), "phase": phase,
        "phase_name": str(progress.get("phase_name") or spec.get("name") or ""),
        "epoch_step": max(0, min(epoch_step, per_epoch)) if per_epoch else 0, "steps_per_epoch": per_epoch,
        "elapsed": float(elapsed) if isinstance(elapsed, (int, float)) else 0.0,
        "eta": float(eta) if isinstance(eta, (int, float)) else None, "phase_etas": [], "metrics": {},
        "time": float(progress.get("time") or (time.time() if now is None else now)),
    }


def problem_alerts(problems: list[str], at: Optional[float] = None) -> list[dict]:
    """One warning `alert` event body per problem (no seq: they are not in events.jsonl)."""
    at = time.time() if at is None else at
    return [{"time": at, "kind": "alert", "level": "warning", "message": p, "data": {}} for p in problems]


def recent_logs(rundir: RunDir, count: int) -> list[dict]:
    """The last `count` lines of train.log as log bodies: stream stdout, seq from 1, the file's
    mtime as their time (the lines carry none)."""
    try:
        at = rundir.train_log.stat().st_mtime
    except OSError:
        at = time.time()
    return [{"seq": seq, "time": at, "stream": "stdout", "line": line}
            for seq, line in enumerate(tail_lines(rundir.train_log, count), 1)]


def protocol_events(events: list[dict]) -> list[dict]:
    """The events that are valid protocol `event` bodies (a hand-edited or foreign line is not
    sent to clients)."""
    valid = []
    for body in events:
        body.pop("type", None)  # a frame's type is not part of the stored body
        try:
            protocol.validate({**body, "type": "event"})
        except ProtocolError:
            continue
        valid.append(body)
    return valid
