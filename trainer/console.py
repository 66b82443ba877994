"""Foreground publisher for `longhaul train`: compact progress lines, events, and the run's files.

In the foreground there is no daemon, so this publisher is the one writer of state.json and
events.jsonl (the daemon takes that role for detached runs).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from trainer import runs


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
        self.events = open(run_dir / "events.jsonl", "a")
        self.seq = runs.last_event_seq(run_dir)  # a resumed run continues the numbering

    def started(self) -> None:
        self.state_file.update(name=self.name, state="running", pid=os.getpid(), mode="foreground")

    def progress(self, body: dict) -> None:
        now = time.monotonic()
        if not self.quiet and (now - self.last_line >= self.line_interval or body["step"] == body["total_steps"]):
            self.last_line = now
            print(progress_line(body), flush=True)
        if now - self.last_state_write >= 2.0 or body["step"] == body["total_steps"]:
            self.last_state_write = now
            self._write_progress(body)

    def _write_progress(self, body: dict) -> None:
        self.state_file.update(**runs.progress_fields(body))

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        with self.lock:
            self.seq += 1
            entry = {"seq": self.seq, "time": time.time(), "kind": kind, "level": level,
                     "message": message, "data": data}
            self.events.write(json.dumps(entry, default=str) + "\n")
            self.events.flush()
        prefix = {"info": "--", "warning": "!!", "error": "XX"}.get(level, "--")
        if kind != "state" or data.get("state") not in ("running",):
            print(f"{prefix} {message}", file=sys.stdout if level == "info" else sys.stderr, flush=True)
        if kind == "checkpoint":
            self.state_file.update(last_checkpoint={"time": time.time(), "step": data.get("step"),
                                                    "path": data.get("path")})
        if kind == "state":
            self.state_file.update(state=data["state"], **({"pid": None} if data["state"] in
                                                           ("finished", "stopped", "failed") else {}))

    def record(self, record: dict) -> None:
        pass  # the engine writes history.msgpack itself

    def plan(self, body: dict) -> None:
        phases = body["plan"]["phases"]
        print(f"plan: {body['plan']['total_steps']} steps in {len(phases)} phase(s): "
              + ", ".join(f"{p['name']} ({p['epochs']} ep x {p['steps_per_epoch']} steps)" for p in phases),
              flush=True)
        self.state_file.update(total_steps=body["plan"]["total_steps"])

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self.state_file.update(state="stopped", pid=None)
            return
        self.event("crash", "error", f"training failed: {type(exc).__name__}: {exc}",
                   traceback="".join(traceback.format_exception(exc)))
        self.state_file.update(state="failed", pid=None)
