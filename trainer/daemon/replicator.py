"""Off-box copies of a run (`checkpoint.replicate_to`), made by the daemon after each landed
checkpoint: `Replica.sync` to a directory and/or the user's command, in one background thread at
the lowest CPU priority (and so the lowest best-effort IO priority), one round at a time. The
asyncio loop and training never wait for it; a checkpoint that lands while a round runs is
taken by the next round, and several that land meanwhile make one round (the newest wins).

A round that fails is an `alert` `replica_failed`, said once until a round works again
(`replica_ok`, resolving it); the local checkpoint and the run are never touched.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from trainer.run.replica import Replica, ReplicaError, replica_of
from trainer.run.rundir import RunDir

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str, dict], object]  # (kind, level, message, data), on the loop thread
_OUTPUT_TAIL = 400  # bytes of the command's output an alert quotes
_FINAL_GRACE_S = 60.0  # what the last round may take beyond the command's timeout


class CommandFailed(Exception):
    """The replication command exited non-zero or ran past its timeout."""


class Replicator:
    """Runs replication rounds for one run; `landed(step)` from the loop, `finish()` at the end."""

    def __init__(self, run_dir: Path, replica_cfg, emit: Emit, loop: asyncio.AbstractEventLoop):
        self.run_dir = Path(run_dir)
        self.dir = Path(replica_cfg.dir) if replica_cfg.dir else None
        self.command = replica_cfg.command
        self.timeout = replica_cfg.timeout_seconds
        self.replica = Replica(self.run_dir, self.dir) if self.dir else None
        self._emit, self._loop = emit, loop
        self._wake = threading.Condition()
        self._wanted: Optional[int] = None  # newest landed step not yet replicated
        self._final = False  # the run ended: one last round, then the thread exits
        self._failing: Optional[str] = None  # the alert raised and not yet resolved
        self.rounds = 0  # rounds done
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def for_run(cls, run_dir: Path, cfg, emit: Emit) -> Optional["Replicator"]:
        """The run's replicator, None when `checkpoint.replicate_to` names nothing. It touches no
        file system here (a dead mount must not hang the daemon's start): a directory that
        overlaps the run's own is refused by each round, with an alert."""
        replica_cfg = cfg.checkpoint.replicate_to
        if not (replica_cfg.dir or replica_cfg.command):
            return None
        return cls(run_dir, replica_cfg, emit, asyncio.get_running_loop())

    # ------------------------------------------------------------------ the loop's side
    def landed(self, step) -> None:
        """A checkpoint of `step` landed: replicate it (after the round in progress, if any)."""
        with self._wake:
            self._wanted = step if isinstance(step, int) else (self._wanted or 0)
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="replicate", daemon=True)
            self._thread.start()

    async def finish(self) -> None:
        """One last round (the final state, events and history), then wait for the thread: at
        most the command's timeout and a minute more, so that a replica hung in the kernel (a
        hard NFS mount gone away) cannot keep the daemon from exiting."""
        with self._wake:
            self._final = True
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="replicate", daemon=True)
            self._thread.start()
        deadline = time.monotonic() + self.timeout + _FINAL_GRACE_S
        while self._thread.is_alive():  # polled: an executor thread blocked in join would hold the loop's shutdown
            if time.monotonic() > deadline:
                error = f"the last off-box copy did not finish in {self.timeout + _FINAL_GRACE_S:g} s"
                self._emit("alert", "error", f"{error}; the daemon exits without it",
                           {"what": "replica_failed", "target": "dir" if self.dir else "command", "error": error})
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ the thread
    def _work(self) -> None:
        _lowest_priority()
        while True:
            with self._wake:
                while self._wanted is None and not self._final:
                    self._wake.wait()
                step, final = self._wanted, self._final
                self._wanted = None
            try:
                self._round(step)
            except Exception:  # a bug here must not end replication (nor the daemon)
                log.exception("replication round failed")
            self.rounds += 1
            if final:
                return

    def _round(self, step: Optional[int]) -> None:
        problems = []
        result = None
        if self.replica is not None:
            try:
                result = self.replica.sync()
            except ReplicaError as exc:
                problems.append(("dir", str(exc)))
        if self.command:  # also when the copy to dir failed: it may copy elsewhere
            try:
                self._run_command()
            except CommandFailed as exc:
                problems.append(("command", str(exc)))
        self._report(step, result, problems)

    def _run_command(self) -> None:
        """The command under `sh -c` in its own process group, output to a temp file (a pipe
        would keep us waiting on a grandchild that holds it); killed at the timeout."""
        newest = RunDir(self.run_dir).newest_checkpoint() or {}
        env = dict(os.environ, LONGHAUL_RUN=self.run_dir.name, LONGHAUL_RUN_DIR=str(self.run_dir),
                   LONGHAUL_CHECKPOINT=newest.get("path", ""), LONGHAUL_STEP=str(newest.get("step", "")),
                   LONGHAUL_REPLICA_DIR=str(replica_of(self.run_dir, self.dir)) if self.dir else "")
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(["sh", "-c", self.command], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=self.run_dir, start_new_session=True)
            try:
                code = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CommandFailed(f"command {self.command!r} ran past {self.timeout:g} s and was killed") from None
            if code != 0:
                out.seek(max(0, out.tell() - _OUTPUT_TAIL))
                tail = out.read().decode(errors="replace").strip()
                raise CommandFailed(f"command {self.command!r} exited with status {code}"
                                    + (f": {tail}" if tail else ""))

    def _report(self, step: Optional[int], result, problems: list[tuple[str, str]]) -> None:
        if problems:
            text = "; ".join(f"{target}: {error}" for target, error in problems)
            if self._failing is None:
                self._failing = text
                self._send("alert", "error", f"off-box copy failed (the local checkpoint is fine): {text}",
                           {"what": "replica_failed", "target": problems[0][0], "error": text, "step": step})
            else:
                log.warning("off-box copy still failing: %s", text)
            return
        if self._failing is not None:
            self._failing = None
            self._send("alert", "info", "off-box copies work again",
                       {"what": "replica_ok", "resolves": "replica_failed", "step": step})
        if result is not None and result.steps:
            self._send("replica", "info",
                       f"checkpoint step {result.steps[-1]:,} copied to {self.replica.target.path} "
                       f"({result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s)",
                       {"what": "copied", "step": result.steps[-1], "steps": result.steps,
                        "removed": result.removed, "seconds": round(result.seconds, 3), "bytes": result.bytes,
                        "dir": str(self.replica.target.path)})
        for bad, reason in (result.skipped if result is not None else []):
            self._send("alert", "warning", f"checkpoint step {bad:,} is damaged on the local disk and was not "
                       f"copied: {reason}", {"what": "bad_checkpoint", "step": bad, "error": reason})

    def _send(self, kind: str, level: str, message: str, data: dict) -> None:
        self._loop.call_soon_threadsafe(self._emit, kind, level, message, data)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _lowest_priority() -> None:
    """Nice 19 for this thread (Linux keeps one per thread; the command inherits it): the copy
    competes with training for neither CPU nor, under CFQ/BFQ, which derive it from nice, disk."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (OSError, AttributeError) as exc:
        log.warning("could not lower the replication thread's priority: %s", exc)
