"""The Daemon: one run's hub, supervisor, requests and journal, wired on one asyncio loop.

The daemon decides what the worker's frames mean for the run (its state, its events, its
snapshot); each part does the rest: `hub` the clients, `supervisor` the worker process,
`requests` the request -> ack -> completion path, `journal` the run directory.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from trainer import protocol
from trainer.contention import ContentionWatch, Decision
from trainer.daemon.hub import ClientConn, Hub, peer_uid
from trainer.daemon.journal import Journal
from trainer.daemon.ownership import RunLock
from trainer.daemon.replicator import Replicator
from trainer.daemon.requests import Requests
from trainer.daemon.settings import Settings
from trainer.daemon.supervisor import Supervisor
from trainer.daemon.watch import RunWatch
from trainer.notify import Notifier, run_rules, user_rules_for_daemon
from trainer.run.rundir import RunDir
from trainer.run.state import FINAL_STATES, RUN_STATES, progress_fields
from trainer.run.status import best_metric, status as run_status

log = logging.getLogger(__name__)


class Daemon:
    """Owns one run directory while it trains. `await Daemon(run_dir).run()` -> exit code."""

    def __init__(self, run_dir: Path, worker_argv: Optional[list[str]] = None,
                 settings: Optional[Settings] = None,
                 peer_uid_fn: Callable[[socket.socket], int] = peer_uid, owner_uid: Optional[int] = None):
        self.run_dir = Path(run_dir).absolute()
        self.name = self.run_dir.name
        self.settings = settings or Settings()
        self.cfg = None
        self.state: Optional[str] = None
        self.progress: Optional[dict] = None
        self.system: Optional[dict] = None
        self.preparing: Optional[dict] = None  # the feature store being prepared (before training)
        self.contention: Optional[ContentionWatch] = None  # set once the config is loaded
        self.watch: Optional[RunWatch] = None  # stalls and threshold alerts, once the config is loaded
        self.notifier: Optional[Notifier] = None
        self.last_checkpoint_failed = False
        self.replicator: Optional[Replicator] = None  # checkpoint.replicate_to, once the config is loaded
        self._last_progress_write = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.lock = RunLock(self.run_dir)
        self.journal = Journal(self.run_dir, alert=lambda level, text, data: self.emit("alert", level, text, data))
        self.requests = Requests(emit=self.emit)
        self.hub = Hub(self.settings, welcome=self._welcome, on_request=self._on_request,
                       peer_uid_fn=peer_uid_fn, owner_uid=owner_uid)
        self.supervisor = Supervisor(self.run_dir, worker_argv or [sys.executable, "-m", "trainer.worker"],
                                     self.settings, self.requests, host=self, spawn=self._spawn)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, install_signals: bool = False) -> int:
        """Serve the run until it finishes, stops or fails. Returns the process exit code
        (0 finished/stopped, 1 failed). Raises DaemonError when the run is owned elsewhere."""
        self.lock.acquire()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.shutdown, f"signal {sig.name}")
        try:
            return await self._run()
        finally:
            await self._close()

    async def _run(self) -> int:
        self.journal.open()
        self.progress = self.journal.carried_progress  # a resumed run keeps its header until the worker reports
        self._spawn(self.journal.retry_writes(self.settings.write_retry_interval))
        pid = os.getpid()
        self.notifier = Notifier(user_rules_for_daemon(self._alert), self.name, self.run_dir, self._alert,
                                 status=self._status_now)
        self.set_state("starting", f"daemon started (pid {pid})", data={"pid": pid}, pid=pid,
                       socket=None, stop_reason=None, name=self.name)  # named once it listens
        try:
            from trainer.config import load_config

            self.cfg = load_config(RunDir(self.run_dir).config, check_paths=False, check_model=False)
        except Exception as exc:  # ConfigError or unreadable file: nothing to supervise
            self.set_state("failed", f"cannot load the run's config: {exc}", level="error")
            await self.notifier.drain()
            return 1
        self.notifier.rules += run_rules(self.cfg)
        self.journal.write_state(world_size=self.cfg.distributed.world_size)  # status shows it before the plan
        self.contention = ContentionWatch(self.cfg.threads, follows_load=self.cfg.threads_follow_load)
        self.watch = RunWatch(self.cfg, self.emit, self.supervisor, lambda: self.state, self._spawn)
        self.replicator = Replicator.for_run(self.run_dir, self.cfg, self.emit)
        await self.journal.load_history(self.cfg.eval.monitor_rule)
        await self.hub.listen(self.lock.socket_file)
        # only now: `launch_daemon` returns when state.json names an existing socket, and a socket
        # file exists from its bind, a moment before it listens (a client then was refused)
        self.journal.write_state(socket=str(self.lock.socket_file))
        sampler = self._spawn(self._sample_system())
        stalls = self._spawn(self.watch.watch_stalls(self.cfg.daemon.system_interval))
        self.supervisor.distributed = self.cfg.distributed
        final = await self.supervisor.supervise(self.cfg.daemon)
        sampler.cancel()
        stalls.cancel()
        if self.replicator is not None:  # the replica gets the run's final state and events
            await self.replicator.finish()
        await self.notifier.drain()  # last: a failed final copy is told too
        await self.hub.linger()
        await self.journal.prime_series_cache()
        return 0 if final in ("finished", "stopped") else 1

    def shutdown(self, reason: str = "shutdown") -> None:
        """Stop the run (signal handler; also callable from tests via call_soon_threadsafe)."""
        self.supervisor.shutdown(reason)

    async def _close(self) -> None:
        self.hub.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.hub.remove_socket()
        await self.journal.close()
        self.lock.release()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ state and events
    def set_state(self, state: str, message: Optional[str] = None, level: str = "info",
                  data: Optional[dict] = None, at: Optional[float] = None, **fields: Any) -> None:
        """Enter `state`: a `state` event (file + clients) and a state.json write. A repeated
        state is not a transition and is ignored."""
        data = {**(data or {}), "state": state}
        # Why the run is paused (a request, or the trainer's own pause on a full disk), for
        # `status` and clients; cleared by any other state.
        fields["pause_reason"] = (data.get("reason") or "request") if state == "paused" else None
        if state == "running" and state != self.state:
            # the trainer runs: this start lived, so the count of deaths at start is over
            fields = {"launch_failures": 0, "launch_error": None, **fields}
        if state == self.state:
            if state == "paused" or len(fields) > 1:
                self.journal.write_state(**fields)
            return
        if state == "stopped" and self.last_checkpoint_failed:
            level = "warning"
            message = (f"{message or state}; the last checkpoint failed, so a resume starts from the "
                       "checkpoint before it")
            data["checkpoint_failed"] = True
        self.state = state
        self.emit("state", level, message or state, data, at=at)
        progress = progress_fields(self.progress) if self.progress else {}
        self.journal.write_state(**progress, state=state, **fields)
        if state in FINAL_STATES:
            self.journal.sync()

    def emit(self, kind: str, level: str, message: str, data: dict, at: Optional[float] = None) -> dict:
        """Number an event, append it to events.jsonl and send it to every client. A full
        disk never stops an event: the journal holds it in memory and clients get it at once."""
        level = level if level in protocol.LEVELS else "info"
        body = self.journal.add_event(kind, level, message, data, at=at)
        self.hub.broadcast(protocol.event(kind, level, message, data, seq=body["seq"], at=body["time"], check=False))
        self.journal.note_events_written()
        if self.notifier is not None:
            self.notifier.offer(body)
        return body

    def _status_now(self) -> dict:
        """The run's status with the progress held in memory (state.json is written every few
        seconds): what a notification of the run's end says."""
        info = run_status(self.run_dir)
        if self.progress:
            info.update(progress_fields(self.progress))
            info["best"] = best_metric(self.progress.get("best_eval"), self.cfg.eval.monitor if self.cfg else None)
        return info

    def _alert(self, level: str, message: str, data: dict) -> None:
        self.emit("alert", level, message, data)

    # ------------------------------------------------------------------ clients
    def snapshot(self) -> dict:
        """What a new client needs to draw everything before the live stream starts."""
        series = self.journal.series
        return {
            "state": self.state or "starting",
            "config": self._config_summary(),
            "plan": (self.journal.plan_body or {}).get("plan") or {},
            "progress": self.progress,
            "series": series.snapshot_series() if series is not None else {},
            "eval": series.eval_summary() if series is not None else {"last": None, "best": None},
            "events": list(self.journal.events),
            "logs": list(self.journal.logs),
            "system": self.system,
            "preparing": self.preparing,
        }

    def _config_summary(self) -> dict:
        summary = self.cfg.summary()
        if self.journal.plan_body:
            summary.update(self.journal.plan_body.get("config") or {})
        return summary

    def _welcome(self) -> dict:
        run = {"name": self.name, "dir": str(self.run_dir), "daemon_pid": os.getpid()}
        return protocol.welcome(run, self.snapshot())

    def _on_request(self, conn: ClientConn, request_id: int, action: str) -> None:
        self.requests.handle(conn, request_id, action, self.state, self.supervisor)

    async def _sample_system(self) -> None:
        from trainer.sysmon import SystemSampler

        sampler = SystemSampler(self.run_dir, lambda: self.supervisor.pid)
        reported = False
        while True:
            try:
                body = await asyncio.to_thread(sampler.sample)
                msg = protocol.system(**body)
            except Exception as exc:  # skip this sample; say so once, not every interval
                if not reported:
                    log.warning("system sample skipped (%s); later ones are skipped silently", exc)
                    reported = True
            else:
                self.system = body
                self.hub.broadcast(msg, coalesce=True)
                self._contention(self.contention.system(body))
                self.watch.system(body, explained=self.contention.active)
            await asyncio.sleep(self.cfg.daemon.system_interval)

    def _contention(self, decision: Optional[Decision]) -> None:
        if decision is not None:
            self.emit("contention", decision.level, decision.message, decision.data)

    # ------------------------------------------------------------------ what the worker says
    def worker_starting(self) -> None:
        self.journal.series_stale = True
        self.journal.record_start()
        if self.watch is not None:
            self.watch.worker_started()

    def worker_exited(self) -> None:
        self.preparing = None  # a crash in the middle of preparing: the next worker starts over
        if self.contention is not None:  # a new trainer may run at another speed
            self._contention(self.contention.reset("the trainer exited"))
        if self.progress is not None:
            self.journal.write_state(**progress_fields(self.progress))

    def on_worker_output(self, stream: str, lines: list[str]) -> None:
        for line in lines:
            body = self.journal.add_log(stream, line)
            self.hub.broadcast(protocol.log(body["seq"], stream, line, at=body["time"], check=False))
        self.journal.write_log(lines)

    async def on_worker_frame(self, msg: dict) -> None:
        match msg["type"]:
            case "progress":
                self._on_progress(msg)
            case "preparing":  # a new client needs it too: the snapshot keeps the latest
                self.watch.alive()
                self.preparing = None if msg["finished"] else {k: v for k, v in msg.items() if k != "type"}
                self.hub.broadcast(msg, coalesce=True)
            case "event":
                self._on_worker_event(msg)
            case "record":
                await self.journal.feed_record(msg["record"])
                self.watch.record(msg["record"])
            case "plan":
                self.journal.plan_body = {"plan": msg["plan"], "config": msg["config"]}
                # clients that attached before the trainer laid out its plan need it too
                self.hub.broadcast(protocol.plan(msg["plan"], msg["config"]), coalesce=True)
            case "ack":
                if not msg["ok"]:
                    self.requests.refused_by_trainer(msg)

    def _on_progress(self, msg: dict) -> None:
        stepped = self.progress is None or msg["step"] != self.progress.get("step")
        self.progress = {k: v for k, v in msg.items() if k != "type"}
        self.preparing = None
        if stepped:  # else an evaluation's keep-alive: the rate in it is the last step's
            self.contention.progress((msg.get("metrics") or {}).get("samples_per_s"), msg.get("phase"))
        self.watch.progress(msg, stepped)
        if self.state == "starting":
            self.set_state("running", "training")
        self.hub.send_progress(msg)
        now = time.monotonic()
        if now - self._last_progress_write >= self.settings.state_write_interval:
            self._last_progress_write = now
            self.journal.write_state(**progress_fields(self.progress))

    def _on_worker_event(self, msg: dict) -> None:
        kind, level, text, at = msg["kind"], msg["level"], msg["message"], msg["time"]
        data = dict(msg["data"])
        completed = self.requests.relabel(kind, data)
        if kind == "state":
            self._on_worker_state(data, text, level, at, completed)
            return
        if kind == "request" and completed is not None and completed.action == "stop" \
                and data.get("outcome") == "failed":
            self.supervisor.stop_failed(text)
        self.watch.event(kind, data)
        if kind == "checkpoint_failed":
            self.last_checkpoint_failed = True
        if kind == "checkpoint":
            self.supervisor.checkpointed = True
            self.last_checkpoint_failed = False
            self.journal.write_state(last_checkpoint={"time": at, "step": data.get("step"), "path": data.get("path")})
        self.emit(kind, level, text, data, at=at)
        if kind == "checkpoint":  # the events up to a checkpoint must survive a power cut
            self.journal.sync()
            if self.replicator is not None:
                self.replicator.landed(data.get("step"))

    def _on_worker_state(self, data: dict, text: str, level: str, at: float, completed) -> None:
        state = data.get("state")
        if state not in RUN_STATES or state in ("interrupted", "queued"):
            self.emit("alert", "warning", f"trainer reported unknown state {state!r}", {"what": "state"})
            return
        self.supervisor.last_state = state
        if not (self.state == "stopping" and state in ("running", "paused")):  # keep showing the stop
            self.set_state(state, text, level=level, data=data, at=at)
        if completed is not None:  # the engine answers pause/resume with a state event only
            self.emit("request", "info", f"{completed.action}: done ({state})",
                      {"id": completed.client_id, "action": completed.action, "outcome": "done"})
