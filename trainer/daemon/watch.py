"""What the daemon watches for someone who is not attached: stalls (trainer/watchdog.py) and
threshold alerts (trainer/thresholds.py), wired to the worker's frames and the system samples.

A stall is an `alert` `stalled` (error) naming how long the trainer showed no progress and what
its process is doing; the trainer is asked for every thread's Python stack (train.log), and with
`watchdog.restart` it is killed and restarted from its last checkpoint by the supervisor's
restart policy. Progress after it ends the alert (info, same `what`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Optional

from trainer.thresholds import ThresholdWatch
from trainer.watchdog import STACKS_SIGNAL, WATCHED_STATES, Stall, StallWatch, describe_trainers, trainer_pids

log = logging.getLogger(__name__)

STACKS_WAIT = 2.0
"""Seconds a stalled trainer gets to write its stacks before the watchdog kills it."""


class RunWatch:
    """The stall watchdog and the threshold alerts of one run.

    `emit(kind, level, message, data)` is the daemon's; `supervisor` gives the worker's pid and
    kills a stalled one; `state()` is the run's current state.
    """

    def __init__(self, cfg, emit: Callable[..., Any], supervisor, state: Callable[[], Optional[str]],
                 spawn: Callable[..., asyncio.Task]):
        self.cfg = cfg.watchdog
        self.emit, self.supervisor, self.state, self.spawn = emit, supervisor, state, spawn
        self.stalls = StallWatch(cfg.watchdog.stall_seconds, cfg.watchdog.setup_seconds)
        self.thresholds = ThresholdWatch(cfg.alerts, cfg.daemon.system_interval)

    # ------------------------------------------------------------------ the worker's life
    def worker_started(self) -> None:
        self.stalls.worker_started(time.monotonic())

    def progress(self, msg: dict, stepped: bool) -> None:
        """A progress frame; `stepped`: it reports a new step (else an evaluation's keep-alive)."""
        if stepped:
            self.thresholds.step_rate((msg.get("metrics") or {}).get("samples_per_s"), msg.get("phase"))
        self._ended(self.stalls.progress(msg["step"], time.monotonic()))

    def alive(self) -> None:
        """Work that is no step: a `preparing` frame."""
        self._ended(self.stalls.alive(time.monotonic()))

    def event(self, kind: str, data: dict) -> None:
        """A worker event: `setup` stages, and phases and compiles (a long step may come)."""
        self._ended(self.stalls.event(kind, data, time.monotonic()))

    def record(self, record: dict) -> None:
        alert = self.thresholds.record(record)
        if alert is not None:
            self.emit("alert", alert.level, alert.message, alert.data)

    # ------------------------------------------------------------------ on the clock
    def system(self, sample: dict, explained: bool) -> None:
        """A system sample: the thresholds (`explained`: the `oversubscribed` alert is on)."""
        for alert in self.thresholds.system(sample, explained):
            self.emit("alert", alert.level, alert.message, alert.data)

    async def watch_stalls(self, interval: float) -> None:
        """Check for a stall every `interval` seconds. Its own task, not the system sampler's:
        a sample reads the run directory's file system, which may be the thing that hangs."""
        while True:
            await asyncio.sleep(interval)
            stall = self.stalls.check(self._watched_state(), time.monotonic())
            if stall is not None:
                self._stalled(stall)

    def _watched_state(self) -> Optional[str]:
        return self.state() if self.supervisor.pid is not None else None  # no worker: none to stall

    def _stalled(self, stall: Stall) -> None:
        worker = self.supervisor.pid  # a data-parallel run's: torchrun's agent
        trainers = trainer_pids(worker, self.supervisor.group)
        pid, status, doing = describe_trainers(trainers)
        for trainer in trainers:
            try:  # a stopped process writes them when it is continued (or never, when killed)
                os.kill(trainer, STACKS_SIGNAL)
            except ProcessLookupError:
                pass
        where = f"after step {stall.step}" if stall.first_step else "before its first step"
        restart = self.cfg.restart and status != "gone"
        message = (f"stalled: no progress for {stall.seconds:.0f} s {where} (limit {stall.limit:.0f} s); {doing}"
                   + ("; killing it to restart from the last checkpoint" if restart else ""))
        self.emit("alert", "error", message, {"what": "stalled", "seconds": round(stall.seconds, 1),
                                              "limit": round(stall.limit, 1), "step": stall.step, "pid": pid,
                                              "process": status, "restart": restart})
        if restart:
            self.spawn(self._kill_after_stacks(worker, stall))

    async def _kill_after_stacks(self, pid: int, stall: Stall) -> None:
        await asyncio.sleep(STACKS_WAIT)
        # not gone or replaced meanwhile, and still stalled (no progress, no pause or stop since)
        if self.supervisor.pid == pid and self.stalls.stalled is stall and self._watched_state() in WATCHED_STATES:
            self.supervisor.kill_stalled(f"killed by the stall watchdog after {stall.seconds:.0f} s without "
                                         "progress")

    def _ended(self, lasted: Optional[float]) -> None:
        if lasted is not None:
            self.emit("alert", "info", f"stall over: the trainer made progress again after {lasted:.0f} s",
                      {"what": "stalled", "seconds": round(lasted, 1)})
