"""RUN_DIR/state.json: the run's durable status, and the run states.

`StateFile` reads and merges it atomically, holds fields a failed write (a full disk) still owes,
and rebuilds a damaged file from what the rest of the run directory says. `effective_state`
turns a live state whose owner process is gone into `interrupted`. No torch.

Fields: name, state, pid (daemon or foreground process), step, total_steps, epoch, phase,
phase_name, elapsed, eta, last_eval, best_eval, last_checkpoint {time, step, path}, updated; the
daemon also writes socket, stop_reason, pause_reason, launch_failures and launch_error; the
foreground trainer writes mode; both write started_at once (`started_at`); a queued run has
queued_at, after, queue_root (trainer/run/queue.py); a rebuilt file says so under `rebuilt`. docs/ARCHITECTURE.md
has the details.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from trainer.run import events as run_events
from trainer.run.errors import StateFileError
from trainer.run.liveness import is_longhaul_process
from trainer.run.plan import planned_steps
from trainer.run.rundir import RunDir, atomic_write_json

#: Every state a run can be in. `interrupted` is never written: it is what `effective_state`
#: reports when the file claims a live state but its process is gone. `queued`: waiting in the
#: runs root's queue (trainer/run/queue.py), never started.
RUN_STATES = ("queued", "starting", "running", "paused", "stopping", "stopped", "finished", "failed", "interrupted")
#: States that promise a live owner process (daemon or foreground trainer).
LIVE_STATES = frozenset({"starting", "running", "paused", "stopping"})
#: States after which nothing runs any more.
FINAL_STATES = frozenset({"stopped", "finished", "failed"})
#: `launch_failures` at which `resume --all` (the boot job) stops retrying a run.
MAX_LAUNCH_FAILURES = 3
#: The state.json fields a progress body updates.
STATE_PROGRESS_KEYS = ("step", "total_steps", "epoch", "phase", "phase_name", "elapsed", "eta",
                       "last_eval", "best_eval")


def progress_fields(body: dict) -> dict:
    """The state.json fields a progress body updates."""
    return {k: body[k] for k in STATE_PROGRESS_KEYS if k in body}


class StateFile:
    """`RUN_DIR/state.json`, merged and rewritten atomically.

    One process writes it at a time (the daemon in daemon mode, the foreground trainer
    otherwise), so read-merge-write needs no lock; that writer calls `update` or `write` from
    one thread at a time.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = RunDir(run_dir).state
        self.pending: dict = {}
        """Fields a failed `write` still owes to the file (the next `write` or `retry` adds them)."""

    def read(self) -> dict:
        """The current fields; {} when the file does not exist yet. StateFileError when damaged."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateFileError(f"{self.path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StateFileError(f"{self.path}: expected a JSON object, found {type(data).__name__}")
        return data

    def update(self, **fields: Any) -> dict:
        """Merge `fields` into the file (atomic write, fsync'ed) and return the new content.
        OSError when it cannot be written."""
        data = self.read()
        data.update(fields)
        data["updated"] = time.time()
        atomic_write_json(self.path, data)
        return data

    def write(self, **fields: Any) -> Optional[OSError]:
        """`update` with the pending fields and `fields`, for writers that must not stop on a
        full disk: when it fails the fields stay pending (the error is returned), when it works
        nothing is pending any more (None is returned). Nothing to write: None, no write."""
        wanted = {**self.pending, **fields}
        if not wanted:
            return None
        try:
            self.update(**wanted)
        except OSError as exc:
            self.pending = wanted
            return exc
        self.pending = {}
        return None

    def retry(self) -> Optional[OSError]:
        """Write the pending fields, if any (a timer calls this while the disk is full)."""
        return self.write()

    def read_or_rebuild(self) -> dict:
        """`read`, except that a damaged file (not JSON, not an object) does not block the run:
        it is rebuilt from the run directory (`rebuild`) instead of raising."""
        try:
            return self.read()
        except StateFileError as exc:
            return self.rebuild(str(exc))

    def rebuild(self, problem: str) -> dict:
        """Rebuild a damaged state.json from the run directory (`rebuilt_fields`). The damaged
        file is kept as state.json.corrupt-<unix time>; the new one records how it was made under
        `rebuilt`; a warning goes to stderr. Returns the rebuilt fields, also when they cannot
        be written; such a rebuild is remembered until a file it came from changes, so a reader
        that polls (the picker) neither redoes it nor repeats the warning."""
        key = _sources_key(self.run_dir)
        with _unsaved_lock:
            remembered = _unsaved.get(self.path)
        if remembered is not None and remembered[0] == key:
            return copy.deepcopy(remembered[1])
        rundir = RunDir(self.run_dir)
        state, sources = rebuilt_fields(rundir.path)
        now = time.time()
        kept = rundir.corrupt_state_copy(now)
        state["rebuilt"] = {"time": now, "problem": problem, "from": sources, "corrupt_copy": str(kept)}
        state["updated"] = now
        try:
            damaged = self.path.read_bytes()
            try:
                self.read()
                return self.read_or_rebuild()  # someone else rebuilt or rewrote it meanwhile
            except StateFileError:
                pass
            kept.write_bytes(damaged)
            atomic_write_json(self.path, state)
        except OSError as exc:
            print(f"longhaul: warning: {problem}; cannot rebuild it ({exc.strerror or exc}): showing the state "
                  f"rebuilt from {', '.join(sources) or 'nothing'} without saving it", file=sys.stderr)
            with _unsaved_lock:
                _unsaved[self.path] = (key, copy.deepcopy(state))
            return state
        print(f"longhaul: warning: {problem}; rebuilt {self.path} from {', '.join(sources) or 'nothing'} "
              f"(state {state['state']}, step {state.get('step') or 0}); the damaged file is kept as {kept}",
              file=sys.stderr)
        return state


# A rebuild that could not be saved, by state.json path: (_sources_key, the fields).
_unsaved: dict[Path, tuple[tuple, dict]] = {}
_unsaved_lock = threading.Lock()


def read_state(run_dir: str | os.PathLike) -> dict:
    """state.json's fields (`StateFile.read_or_rebuild`: a damaged file is rebuilt)."""
    return StateFile(run_dir).read_or_rebuild()


def rebuild_state(run_dir: str | os.PathLike, problem: str) -> dict:
    """`StateFile(run_dir).rebuild(problem)`."""
    return StateFile(run_dir).rebuild(problem)


def effective_state(run_dir: str | os.PathLike, state: Optional[dict] = None) -> str:
    """The state to show: the file's, except `interrupted` when it claims a live state
    (starting/running/paused/stopping) but its process is gone or is another program."""
    if state is None:
        state = read_state(run_dir)
    written = state.get("state") or "stopped"  # never started: nothing to resume, nothing live
    if written in LIVE_STATES and not is_longhaul_process(state.get("pid")):
        return "interrupted"
    return written


def start_unrecorded(run_dir: str | os.PathLike, state: dict) -> bool:
    """The run has never trained: its first start (a daemon's worker or a foreground `train`) is
    to be recorded as `started_at`. A run with a history but no `started_at` trained before the
    field existed: config.yaml's time is the better guess for it, not this resume's."""
    return "started_at" not in state and not RunDir(run_dir).history.exists()


def started_at(run_dir: str | os.PathLike, state: dict) -> Optional[float]:
    """When the run first trained: `started_at` (its first worker's start, kept across resumes),
    else when config.yaml was written (runs made before the field; a run that never trained).
    Not config.yaml's time alone: a queued run's config is written when it is queued."""
    recorded = state.get("started_at")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded)
    try:
        return RunDir(run_dir).config.stat().st_mtime
    except OSError:
        return None


# ----------------------------------------------------------------------------- rebuild sources
_DAEMON_PID = re.compile(r"daemon started \(pid (\d+)\)")


def rebuilt_fields(run_dir: str | os.PathLike) -> tuple[dict, list[str]]:
    """(state.json fields, the files they came from) as the run directory tells them: the last
    `state` event of events.jsonl (a live state's pid from the daemon that last started: a dead
    daemon then shows as interrupted), the last evaluation event, step/epoch/phase from the
    last train record of the history, the newest ckpt/step-*, total_steps from plan.json; state
    `stopped` when no event says otherwise."""
    rundir = RunDir(run_dir)
    sources = []
    state: dict = {"name": rundir.name}
    found = events_summary(rundir.path)
    if found:
        sources.append(rundir.events.name)
        state.update(found)
    state.setdefault("state", "stopped")  # no events: nothing ran far enough to be resumed
    record = _last_history_record(rundir)
    if record is not None:
        sources.append(rundir.history.name)
        state.update({k: record[k] for k in ("step", "epoch", "phase") if k in record})
    checkpoint = rundir.newest_checkpoint()
    if checkpoint is not None:
        sources.append(f"{rundir.checkpoints.name}/")
        state["last_checkpoint"] = checkpoint
        state["step"] = max(state.get("step") or 0, checkpoint["step"])
    total = planned_steps(rundir.path)
    if total is not None:
        state["total_steps"] = total
    return state, sources


def _sources_key(run_dir: str | os.PathLike) -> tuple:
    """Changes whenever a file that `rebuilt_fields` reads (or state.json) changes."""
    rundir = RunDir(run_dir)
    key = []
    for path in (rundir.state, rundir.events, rundir.history, rundir.plan, rundir.checkpoints):
        try:
            st = os.stat(path)
        except OSError:
            key.append(None)
        else:
            key.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


def events_summary(run_dir: str | os.PathLike) -> dict:
    """Fields of state.json that the tail of events.jsonl tells: the last `state` event's state,
    the pid of the daemon that last started, the last evaluation."""
    found: dict = {}
    for event in reversed(run_events.read_tail(RunDir(run_dir).events, 2000)):  # torn lines skipped
        kind, data = event.get("kind"), event.get("data") or {}
        if not isinstance(data, dict):
            continue
        if kind == "state" and "state" not in found and data.get("state") in RUN_STATES:
            found["state"] = data["state"]
        if kind == "state" and "pid" not in found and data.get("state") == "starting":
            pid = _daemon_pid(event)
            if pid is not None:
                found["pid"] = pid
        if kind == "eval" and "last_eval" not in found and isinstance(data.get("metrics"), dict):
            found["last_eval"] = {"step": data.get("step"), "epoch": data.get("epoch"), **data["metrics"]}
        if {"state", "pid", "last_eval"} <= set(found):
            break
    if found.get("state") not in LIVE_STATES:
        found.pop("pid", None)  # only a live state needs an owner
    return found


def _daemon_pid(event: dict) -> Optional[int]:
    """The pid a daemon's "starting" event names: in its data, or (events written before the
    data carried it) in its message."""
    pid = (event.get("data") or {}).get("pid")
    if isinstance(pid, int):
        return pid
    match = _DAEMON_PID.search(str(event.get("message") or ""))
    return int(match.group(1)) if match else None


def _last_history_record(rundir: RunDir) -> Optional[dict]:
    if not rundir.history.is_file():
        return None
    try:
        from trainer import history  # numpy, no torch; only needed on this rare path

        last = None
        for record in history.read_history(rundir.history):
            if record.get("kind") == "train":
                last = record
        return last
    except Exception:  # a damaged history must not make the rebuild fail as well
        return None
