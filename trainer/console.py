"""Foreground publisher for `longhaul train`: compact progress lines, events, and the run's files.

In the foreground there is no daemon, so this publisher is the one writer of state.json and
events.jsonl (the daemon takes that role for detached runs). A full disk never raises into the
trainer from here: events wait in memory (eventlog.EventLog) and state.json fields stay pending
until a later write succeeds. events.jsonl is fsynced at each checkpoint and final state, so a
power cut does not take back the events that led up to the checkpoint a resume starts from.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from trainer import eventlog, runs


def format_duration(seconds: float) -> str:
    """1d 02h03m, 2h03m04s or 3m04s."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h{minutes:02d}m"
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(body: dict) -> str:
    """One compact line: step, epoch, phase, loss, LR, throughput, ETA."""
    m = body.get("metrics") or {}
    eta = body.get("eta")
    parts = [f"step {body['step']}/{body['total_steps']}",
             f"ep {body['epoch'] + 1}/{body['total_epochs']}",
             f"{body['phase_name']}"]
    if m.get("train_loss_smooth") is not None:
        parts.append(f"loss {m['train_loss_smooth']:.4f}")
    if m.get("lr") is not None:
        parts.append(f"lr {m['lr']:.2e}")
    if m.get("samples_per_s") is not None:
        parts.append(f"{m['samples_per_s']:.0f} samples/s")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class ConsolePublisher:
    """Prints to stdout and keeps state.json/events.jsonl current (thread-safe: the checkpoint
    writer thread reports through it too)."""

    def __init__(self, run_dir: Path, name: str, quiet: bool = False, line_interval: float = 5.0):
        self.run_dir = run_dir
        self.state_file = runs.StateFile(run_dir)
        self.name = name
        self.quiet = quiet
        self.line_interval = line_interval
        self.last_line = 0.0
        self.last_state_write = 0.0
        self.lock = threading.Lock()
        self.events = eventlog.EventLog(run_dir / "events.jsonl").open()  # continues the seq
        self.state_pending: dict = {}
        self.reported: set[str] = set()  # files whose write failure was already printed

    def started(self) -> None:
        self._update_state(name=self.name, state="running", pid=os.getpid(), mode="foreground")

    def _update_state(self, **fields: Any) -> None:
        """Merge fields into state.json; on a full disk keep them for the next write."""
        with self.lock:
            wanted = {**self.state_pending, **fields}
            try:
                self.state_file.update(**wanted)
            except OSError as exc:
                self.state_pending = wanted
                self._report(runs.STATE_FILE, exc)
            else:
                self.state_pending = {}
                self.reported.discard(runs.STATE_FILE)

    def _report(self, name: str, exc: OSError) -> None:
        if name not in self.reported:
            self.reported.add(name)
            print(f"!! cannot write {self.run_dir / name}: {exc.strerror or exc}; retrying", file=sys.stderr, flush=True)

    def sync(self) -> None:
        """fsync events.jsonl (a checkpoint or a final state must not outlive its events)."""
        try:
            self.events.sync()
        except OSError as exc:
            print(f"!! cannot fsync {self.events.path}: {exc}", file=sys.stderr, flush=True)

    def progress(self, body: dict) -> None:
        now = time.monotonic()
        if not self.quiet and (now - self.last_line >= self.line_interval or body["step"] == body["total_steps"]):
            self.last_line = now
            print(progress_line(body), flush=True)
        if now - self.last_state_write >= 2.0 or body["step"] == body["total_steps"]:
            self.last_state_write = now
            self._write_progress(body)

    def _write_progress(self, body: dict) -> None:
        self._update_state(**runs.progress_fields(body))

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        self.events.add(kind, level, message, data)
        if self.events.error is not None:
            self._report("events.jsonl", self.events.error)
        elif self.events.held == 0:
            self.reported.discard("events.jsonl")
        prefix = {"info": "--", "warning": "!!", "error": "XX"}.get(level, "--")
        if kind != "crash" and (kind != "state" or data.get("state") != "running"):  # cli.main prints a crash
            print(f"{prefix} {message}", file=sys.stdout if level == "info" else sys.stderr, flush=True)
        if kind == "checkpoint":
            self._update_state(last_checkpoint={"time": time.time(), "step": data.get("step"),
                                                "path": data.get("path")})
            self.sync()
        if kind == "state":
            final = data["state"] in runs.FINAL_STATES
            self._update_state(state=data["state"], pause_reason=data.get("reason") if data["state"] == "paused" else None,
                               **({"pid": None} if final else {}))
            if final:
                self.sync()

    def record(self, record: dict) -> None:
        pass  # the engine writes history.msgpack itself

    def plan(self, body: dict) -> None:
        phases = body["plan"]["phases"]
        print(f"plan: {body['plan']['total_steps']} steps in {len(phases)} phase(s): "
              + ", ".join(f"{p['name']} ({p['epochs']} ep x {p['steps_per_epoch']} steps)" for p in phases),
              flush=True)
        self._update_state(total_steps=body["plan"]["total_steps"])

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self._update_state(state="stopped", pid=None)
        else:
            self.event("crash", "error", f"training failed: {type(exc).__name__}: {exc}",
                       traceback="".join(traceback.format_exception(exc)))
            self._update_state(state="failed", pid=None)
        self.sync()
