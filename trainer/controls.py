"""Requests to a running trainer (pause, resume, checkpoint, stop), applied at step boundaries,
and what a stop whose last checkpoint failed does instead of ending the run."""
from __future__ import annotations

import queue
import time
from typing import Optional

from trainer.checkpoint.errors import is_disk_full
from trainer.disk_space import DISK_POLL_SECONDS

KEEP_WAITING_SECONDS = 5.0
"""How often rank 0 of a data-parallel run, paused or waiting for disk space, tells the others
that it still waits (their collectives would time out after distributed.timeout_seconds)."""


def must_exit(request_id: Optional[int]) -> bool:
    """Stops with id <= 0 come from the process itself (the worker's INTERNAL_REQUEST_ID when
    the daemon is gone or at SIGTERM, -1 for Ctrl-C in the foreground): the process ends even
    when their checkpoint fails. A user's stop (id > 0) is refused then instead."""
    return request_id is not None and request_id <= 0


class Controls:
    """The request queue of one Trainer (`trainer`: its clock, disk watch and checkpoints)."""

    def __init__(self, trainer, requests: queue.SimpleQueue, world=None):
        self.trainer = trainer
        self.requests = requests  # (request id, action) pairs
        # rank 0 of a data-parallel run tells the other ranks every few seconds that it still
        # waits (trainer/distributed.py); a single process waits for the next request
        self.world = world
        self.wait_seconds = KEEP_WAITING_SECONDS if world is not None and world.enabled else None
        self.paused = False
        self.stop_requested: Optional[int] = None  # request id (or -1) of a pending stop

    def stop_at_boundary(self) -> bool:
        """At a step boundary: watch the disk and apply requests (rank 0 of a group, which may
        wait here), then whether to stop: a stop (rank 0's, in a group) or the plan done."""
        trainer, world = self.trainer, self.world
        if world is None or world.main:
            trainer.disk.watch()
            if trainer.should_continue() or trainer.disk.full is not None:
                self.apply()
        if world is not None and world.agree_stop(self.stop_requested is not None) and self.stop_requested is None:
            self.stop_requested = 0  # rank 0's stop, which this rank obeys
        return self.stop_requested is not None or not trainer.should_continue()

    def apply(self) -> None:
        """Apply pending requests (at a step boundary). While paused, wait for requests; while
        paused for disk space, also look at the free space every DISK_POLL_SECONDS. Returns as
        soon as a stop is requested."""
        disk = self.trainer.disk
        while self.stop_requested is None:
            try:
                if disk.full is not None:
                    request_id, action = self.requests.get(timeout=min(DISK_POLL_SECONDS,
                                                                       self.wait_seconds or DISK_POLL_SECONDS))
                elif self.paused:
                    request_id, action = self.requests.get(timeout=self.wait_seconds)
                else:
                    request_id, action = self.requests.get_nowait()
            except queue.Empty:
                if disk.full is None and not self.paused:
                    return
                if self.world is not None:
                    self.world.keep_waiting()
                if disk.full is not None:
                    disk.try_resume()
                continue
            self._apply_one(request_id, action)
            if not self.paused and disk.full is None and self.requests.empty():
                return

    def _apply_one(self, request_id: int, action: str) -> None:
        trainer, disk = self.trainer, self.trainer.disk
        if action == "pause" and not self.paused:
            self.paused = True
            if disk.full is None:  # else the time stopped counting when the disk filled up
                trainer.account_time()
            trainer.event("state", "info", "paused", state="paused", request_id=request_id)
        elif action == "resume" and (self.paused or disk.full is not None):
            self.paused = False
            if disk.full is None:
                trainer.tick = time.monotonic()  # paused time is not training time
                trainer.event("state", "info", "running", state="running", request_id=request_id)
            elif not disk.try_resume(request_id):
                full = disk.full
                trainer.event("request", "error", f"resume refused: the disk is still full: {full['path']} has "
                              f"{full['free_bytes'] / 2**20:.1f} MiB free, the run needs "
                              f"{full['needed_bytes'] / 2**20:.1f} MiB; free space and the run goes on by itself",
                              id=request_id, action=action, outcome="failed", free_bytes=full["free_bytes"],
                              needed_bytes=full["needed_bytes"])
        elif action == "checkpoint":
            trainer.checkpoints.answer_request(request_id)
        elif action == "stop":
            self.stop_requested = request_id
        else:
            trainer.event("request", "info", f"{action}: nothing to do", id=request_id, action=action, outcome="noop")

    def end_anyway(self) -> bool:
        """The last checkpoint failed: may the run end all the same?

        A user's stop: no. It is refused (a `request` event with outcome "failed" and an alert
        naming the cause) and training goes on, or stays paused on a full disk; its state stays
        recoverable and the stop can be sent again. A stop the process must obey (daemon gone,
        SIGTERM): yes, with the failure as its last events. The natural end of the plan: waits
        for disk space like any checkpoint; other failures were reported and the run ends."""
        trainer = self.trainer
        cause = trainer.checkpoints.last_failure
        disk = cause is not None and is_disk_full(cause)
        step = trainer.state.step
        if self.stop_requested is not None and must_exit(self.stop_requested):
            trainer.event("request", "error", f"stopping without a final checkpoint: checkpoint at step "
                          f"{step} failed: {cause}; a resume goes on from the last checkpoint written",
                          id=self.stop_requested, action="stop", outcome="failed")
            return True
        if self.stop_requested is not None:
            self._refuse_stop(cause, disk)
            return False
        if disk or trainer.checkpoints.best_unsaved:
            trainer.disk.watch()  # the loop waits for space, then finish() runs again
            return False
        return True

    def _refuse_stop(self, cause: Optional[BaseException], disk: bool) -> None:
        trainer, step = self.trainer, self.trainer.state.step
        advice = "free space and stop again" if disk else "stop again to retry"
        message = f"stop refused: checkpoint at step {step} failed: {cause}; the run goes on, {advice}"
        trainer.event("request", "error", message, id=self.stop_requested, action="stop", outcome="failed",
                      step=step, error=str(cause))
        trainer.event("alert", "error", message, what="stop_refused", step=step, error=str(cause))
        self.stop_requested = None
        trainer.disk.watch()  # a full disk pauses now
        # tell the daemon (which shows "stopping") what the run does instead
        full = trainer.disk.full
        if full is not None:
            trainer.event("state", "error", "paused: disk full", state="paused", reason="disk_full",
                          free_bytes=full["free_bytes"], needed_bytes=full["needed_bytes"])
        else:
            state = "paused" if self.paused else "running"
            trainer.event("state", "info", state, state=state, reason="stop_refused")
