"""Starting a run's daemon (for `longhaul start/resume`) and the daemon process's entry point.

    longhaul start/resume -> launch_daemon(run_dir) -> python -m trainer.daemon RUN_DIR -> main()
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from trainer.daemon.core import Daemon
from trainer.daemon.ownership import DaemonError, wait_for_exiting_daemon
from trainer.daemon.settings import Settings
from trainer.daemon.supervisor import child_env, describe_exit
from trainer.run.errors import RunError, RuntimeDirError, StateFileError
from trainer.run.events import read_tail
from trainer.run.linefile import tail_lines
from trainer.run.replica import is_replica
from trainer.run.rundir import RunDir, apply_umask
from trainer.run.sockets import socket_path
from trainer.run.state import LIVE_STATES, StateFile, effective_state, read_state

log = logging.getLogger(__name__)


def launch_daemon(run_dir: Path, worker_script: Optional[Path] = None, wait: float = 30.0,
                  settings: Optional[dict] = None) -> int:
    """Start the daemon of `run_dir` in a new session and return its pid once it is alive.

    The daemon's stdout/stderr go to RUN_DIR/daemon.log. Waits at most `wait` seconds for its
    first sign of life (state.json names its pid and it is starting/running with its socket
    listening, or the trainer reported progress) or of death (it exited, or state.json says
    failed). Raises DaemonError if the run already has a live daemon, or when the daemon dies
    at start, with the cause (the failed state's message, the tail of daemon.log); each such
    death adds one to state.json's `launch_failures` (the daemon resets it once its trainer
    runs: only the daemon writes state.json while it lives), which is
    how `resume --all` at boot stops retrying a run that cannot start.
    A daemon still starting after `wait` seconds is left running and its pid returned.
    `worker_script` replaces `-m trainer.worker` (tests use a fake trainer); `settings`
    overrides fields of `Settings` (tests shrink timeouts and bounds).
    """
    run_dir = Path(run_dir).absolute()
    files = RunDir(run_dir)
    if not files.config.is_file():
        raise DaemonError(f"{run_dir} has no {files.config.name}: not a run directory")
    current = read_state(run_dir)  # a damaged state.json is rebuilt, not a dead end
    if effective_state(run_dir, current) in LIVE_STATES:
        raise DaemonError(f"run {run_dir.name} is already {current.get('state')} (daemon pid {current.get('pid')})")
    owner = is_replica(run_dir)
    if owner:  # training inside a backup would fork the run and break the replica
        raise DaemonError(f"{run_dir} is the off-box replica of {owner}, not a run: restore it with "
                          f"`longhaul resume {run_dir.name} --from {run_dir.parent}`")
    socket_path(run_dir)  # fail here, in the user's terminal, if no socket directory is safe
    wait_for_exiting_daemon(run_dir)
    argv = [sys.executable, "-m", "trainer.daemon", str(run_dir)]
    if worker_script is not None:
        argv += ["--worker-script", str(Path(worker_script).absolute())]
    if settings:
        argv += ["--settings", json.dumps(settings)]
    log_path = files.daemon_log
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=child_env(), cwd=str(run_dir))
    failure = _first_sign(proc, run_dir, wait)
    if failure is not None:
        _count_launch_failure(run_dir, failure)
        tail = "".join(f"\n    {line}" for line in tail_lines(log_path, 15))
        raise DaemonError(f"the daemon of {run_dir.name} died at start: {failure}"
                          + (f"\n  {log_path} ends with:{tail}" if tail else ""))
    return proc.pid


def _first_sign(proc: subprocess.Popen, run_dir: Path, wait: float) -> Optional[str]:
    """Poll until the daemon shows life (None) or death (the cause, a sentence); None also when
    `wait` runs out with the daemon still starting."""
    deadline = time.monotonic() + wait
    last_step = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return _death_cause(proc, run_dir)
        try:
            state = StateFile(run_dir).read()
        except StateFileError:
            state = {}
        if state.get("pid") == proc.pid:
            if state.get("state") == "failed":
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                return _death_cause(proc, run_dir)
            listening = isinstance(state.get("socket"), str) and os.path.exists(state["socket"])
            if state.get("state") in ("starting", "running") and listening:
                return None
            if last_step is not None and state.get("step") != last_step:
                return None  # the trainer reported progress
            last_step = state.get("step")
        time.sleep(0.02)
    return None


def _death_cause(proc: subprocess.Popen, run_dir: Path) -> str:
    """Why a daemon died at start: its last `failed` state message, else its exit status."""
    code = proc.poll()
    if code is None:
        exit_text = "it is exiting"
    elif code < 0:
        exit_text = describe_exit(code)[2].replace("trainer", "daemon", 1)
    else:
        exit_text = f"exit code {code}"
    states = [e for e in read_tail(RunDir(run_dir).events, 20) if e.get("kind") == "state"]
    if states and (states[-1].get("data") or {}).get("state") == "failed":
        return f"{states[-1].get('message')} ({exit_text})"
    return exit_text


def _count_launch_failure(run_dir: Path, cause: str) -> None:
    try:
        state = read_state(run_dir)
        count = state.get("launch_failures") if isinstance(state.get("launch_failures"), int) else 0
        StateFile(run_dir).update(launch_failures=count + 1, launch_error=cause[:2000])
    except (OSError, RunError) as exc:
        log.warning("cannot record the launch failure in %s: %s", RunDir(run_dir).state, exc)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.daemon",
                                     description="longhaul run daemon (started by `longhaul start`)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--worker-script", type=Path,
                        help="run this Python script as the worker instead of trainer.worker (tests)")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="JSON object overriding daemon tunables (see Settings), e.g. '{\"max_backlog\": 1048576}'")
    args = parser.parse_args(argv)
    apply_umask()  # run data is private (LONGHAUL_UMASK relaxes it); the worker inherits it
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s daemon[%(process)d]: %(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal; be explicit anyway
    worker_argv = [sys.executable, str(args.worker_script)] if args.worker_script else None
    try:
        daemon = Daemon(args.run_dir, worker_argv, Settings(**args.settings))
        code = asyncio.run(daemon.run(install_signals=True))
    except (DaemonError, RuntimeDirError) as exc:
        log.error("%s", exc)
        return 3
    finally:
        # the run ended, however (an exception too), and its slot is free: the next queued run
        # starts, its own daemon detached. A SIGKILLed daemon gets here never: the next `queue`,
        # `start --queue` or `resume --all` (at boot) moves the queue on instead
        advance_queues(args.run_dir, worker_script=args.worker_script, settings=args.settings or None)
    compare_pipelines(args.run_dir)
    return code


def advance_queues(run_dir: Path, extra_roots: tuple = (), worker_script: Optional[Path] = None,
                   settings: Optional[dict] = None) -> None:
    """A run ended: start what its slot lets start in the queues it may advance (`queue_roots`,
    `extra_roots`). Its slot counts as free even if its state.json still names this process
    (a daemon that raised): the process is on its way out. Not while another process owns the
    run (a second daemon refused it); a queue that cannot be read is only logged: the run ended
    as it did."""
    run_dir = Path(run_dir).absolute()
    try:
        state = read_state(run_dir)
        if effective_state(run_dir, state) in LIVE_STATES and state.get("pid") != os.getpid():
            return
        roots = queue_roots(run_dir)
        roots += [Path(r).absolute() for r in extra_roots if Path(r).absolute() not in roots]
        for root in roots:
            start_queued(root, worker_script, settings, ended=run_dir)
    except Exception:
        log.exception("the queue did not move on after %s ended", Path(run_dir).name)


def compare_pipelines(run_dir: Path) -> None:
    """A pipeline's run ended: the group's comparison once every pipeline's has (trainer/pipelines.py)."""
    try:
        from trainer.pipelines import finish_group

        finish_group(run_dir)
    except Exception:  # the run ended as it did: a comparison that cannot be drawn is only logged
        log.exception("the comparison of the pipelines of %s was not written", Path(run_dir).name)


def queue_roots(run_dir: Path) -> list[Path]:
    """The queues a run's end may advance: its runs root, and the one it was queued in."""
    roots = [Path(run_dir).absolute().parent]
    queued_in = read_state(run_dir).get("queue_root")
    if isinstance(queued_in, str) and Path(queued_in) not in roots:
        roots.append(Path(queued_in))
    return roots


def start_queued(root: Path, worker_script: Optional[Path] = None, settings: Optional[dict] = None,
                 ended: Optional[Path] = None) -> list[tuple[Path, Optional[str]]]:
    """Start the queued runs of `root` that may start now (trainer.run.queue.dispatch); each
    (run dir, None) started or (run dir, why not). `ended`: a run whose process is ending (it
    takes no slot, whatever its state.json says)."""
    from trainer.run import queue

    known = lambda: [run for run in queue.box_runs(root) if ended is None or run.absolute() != ended]
    started = queue.dispatch(root, known, lambda run_dir: launch_daemon(run_dir, worker_script, settings=settings))
    for run_dir, error in started:
        log.info("queued run %s %s", run_dir.name, f"did not start: {error}" if error else "started")
    return started
