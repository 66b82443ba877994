"""Transitional: the names of `trainer.run` under the module they had before issue 10, for the
modules not switched yet (daemon, engine, checkpoint, worker, client, tui app/link/run screen and
their tests). New code imports `trainer.run.<module>`; this file goes once nothing imports it.
"""
from __future__ import annotations

from pathlib import Path

from trainer.run.errors import (InvalidRunName, RunError, RunExists, RunNotFound, RuntimeDirError,  # noqa: F401
                                StateFileError)
from trainer.run.events import last_seq
from trainer.run.linefile import tail_lines  # noqa: F401
from trainer.run.liveness import is_longhaul_process, pid_alive, process_cmdline  # noqa: F401
from trainer.run.locate import NAME_MAX, check_run_name, create_run_dir, resolve_run, runs_root  # noqa: F401
from trainer.run.rundir import (RunDir, apply_umask, atomic_write_bytes, atomic_write_json, fsync_dir,  # noqa: F401
                                is_run_dir, make_run_dir, private_umask)
from trainer.run.sockets import SUN_PATH_MAX, check_private_dir, find_socket, runtime_dir, socket_path  # noqa: F401
from trainer.run.state import (FINAL_STATES, LIVE_STATES, MAX_LAUNCH_FAILURES, RUN_STATES,  # noqa: F401
                               STATE_PROGRESS_KEYS, StateFile, effective_state, progress_fields, read_state,
                               rebuild_state)
from trainer.run.status import eval_summary, list_runs, missing_status, status  # noqa: F401

STATE_FILE = RunDir("").state.name
CONFIG_FILE = RunDir("").config.name


def last_event_seq(run_dir: Path) -> int:
    """Highest seq in RUN_DIR/events.jsonl (0 if none)."""
    return last_seq(RunDir(run_dir).events)
