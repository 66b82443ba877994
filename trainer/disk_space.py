"""A full disk pauses the run instead of failing it: training waits at a step boundary and goes
on by itself when space is freed, after writing what the full disk refused (history records,
best.pt, the checkpoint), so the run has no gap and no duplicate.
"""
from __future__ import annotations

import shutil
import time
from typing import Optional

from trainer.checkpoint.errors import DiskFullError, is_disk_full

#: How often a running trainer compares the free space of its run directory with what the next
#: checkpoint needs (one statvfs), and how often a trainer paused for disk space looks again.
DISK_CHECK_SECONDS = 5.0
DISK_POLL_SECONDS = 2.0


class DiskSpace:
    """The full-disk pause of one Trainer (`trainer`: its state, clock, history and checkpoints).

    While `full` is set (free_bytes, needed_bytes, path, cause) the loop waits (see
    Controls.apply) and calls `try_resume` every DISK_POLL_SECONDS."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.full: Optional[dict] = None
        self.error: Optional[tuple] = None  # (error, step, reason, phase_end) from the writer thread
        self.retry_checkpoint: Optional[dict] = None  # checkpoint() arguments to retry when space is back
        self.last_check = time.monotonic()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.trainer.run_dir).free

    def space_needed(self) -> int:
        """Free bytes the run needs: the next checkpoint plus checkpoint.min_free_mb (room left
        for state.json, events and logs)."""
        checkpoints = self.trainer.checkpoints
        return checkpoints.store.space_needed(checkpoints.estimate)

    def watch(self) -> None:
        """Pause on a full disk: one the checkpoint writer met, or (one statvfs every
        DISK_CHECK_SECONDS) free space below what the next checkpoint needs."""
        state = self.trainer.state
        if self.error is not None:
            error, step, reason, phase_end = self.error
            self.error = None
            # redo it when space is back; the phase-end mark only if it is still that state
            same = step == state.step
            self.retry_checkpoint = {"reason": reason if same else "retry", "phase_end": phase_end and same}
            self.pause(error)
        now = time.monotonic()
        if self.full is None and now - self.last_check >= DISK_CHECK_SECONDS:
            self.last_check = now
            free, needed = self.free_bytes(), self.space_needed()
            if free < needed:
                self.pause(DiskFullError(f"free space in {self.trainer.run_dir} is below what the next "
                                         "checkpoint needs", free=free, needed=needed))

    def pause(self, error: DiskFullError) -> None:
        trainer = self.trainer
        free = self.free_bytes() if error.free is None else error.free
        needed = error.needed or self.space_needed()
        first = self.full is None
        self.full = {"free_bytes": free, "needed_bytes": needed, "path": str(trainer.run_dir), "cause": str(error)}
        if not first:
            return
        if not trainer.controls.paused:
            trainer.account_time()
        numbers = f"{free / 2**20:.1f} MiB free, the run needs {needed / 2**20:.1f} MiB"
        trainer.event("state", "error", f"paused: disk full ({numbers})", state="paused", reason="disk_full",
                      free_bytes=free, needed_bytes=needed)
        trainer.event("alert", "error", f"disk full: {trainer.run_dir} has {numbers} (next checkpoint about "
                      f"{trainer.checkpoints.estimate / 2**20:.1f} MiB + checkpoint.min_free_mb); training is paused "
                      f"at step {trainer.state.step} and goes on by itself when space is freed ({error})",
                      what="disk_full", path=str(trainer.run_dir), free_bytes=free, needed_bytes=needed,
                      step=trainer.state.step)

    def try_resume(self, request_id: Optional[int] = None) -> bool:
        """While paused for disk space: if there is room again, write what the full disk refused
        (history records, best.pt, the failed checkpoint) and go on. False while still full."""
        free, needed = self.free_bytes(), self.space_needed()
        if free < needed:
            self.full.update(free_bytes=free, needed_bytes=needed)
            return False
        if not self._write_refused():
            return False
        self.full = None
        self.last_check = time.monotonic()
        trainer = self.trainer
        message = f"disk space is back ({free / 2**20:.1f} MiB free): training goes on at step {trainer.state.step}"
        trainer.event("alert", "info", message, what="disk_space_back", free_bytes=free, needed_bytes=needed)
        if not trainer.controls.paused:
            trainer.tick = time.monotonic()  # the wait was not training time
            extra = {"request_id": request_id} if request_id is not None else {}
            trainer.event("state", "info", "running", state="running", reason="disk_space_back", **extra)
        return True

    def _write_refused(self) -> bool:
        """Write the history records, best.pt and checkpoint the full disk refused; False (and
        `full` updated) if the disk refuses again."""
        checkpoints = self.trainer.checkpoints
        try:
            self.trainer.flush_history()
            if checkpoints.best_unsaved:
                checkpoints.save_best()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.full.update(free_bytes=self.free_bytes(), cause=str(exc))
            return False
        if checkpoints.best_unsaved:
            return False
        if self.retry_checkpoint is not None:
            if not checkpoints.write(**self.retry_checkpoint) and self.error is not None:
                error = self.error[0]
                self.error = None
                self.full.update(free_bytes=self.free_bytes(), cause=str(error))
                return False
            self.retry_checkpoint = None  # written, or failed for another reason (reported)
        return True
