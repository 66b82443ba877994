"""Foreground publisher for `longhaul train`: compact progress lines, events, and the run's files.

In the foreground there is no daemon, so this publisher is the one writer of state.json and
events.jsonl (the daemon takes that role for detached runs). A full disk never raises into the
trainer from here: events wait in memory (trainer.run.events.EventLog) and state.json fields stay
pending (trainer.run.state.StateFile.write) until a later write succeeds. events.jsonl is fsynced
at each checkpoint and final state, so a power cut does not take back the events that led up to
the checkpoint a resume starts from.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from trainer.fmt import duration, epoch_number
from trainer.run.errors import StateFileError
from trainer.run.events import EventLog
from trainer.run.rundir import RunDir
from trainer.run.state import FINAL_STATES, StateFile, progress_fields, start_unrecorded


class _NotAnEvent(logging.Filter):
    """Drops the log copy that Trainer.event makes of each event (it is there for the daemon's
    train.log); in the foreground ConsolePublisher.event prints the event itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "trainer.engine" and record.funcName == "event")


def install_log_handler(stream: Any = None) -> logging.Handler:
    """The foreground's one handler for log warnings: each event is printed once.

    Without a handler Python's last-resort handler printed every warning event a second time,
    bare, beside ConsolePublisher's "!! ..." line. Warnings logged outside events (e.g. a
    checkpoint that fails again) still come out here, once. Installing twice changes nothing."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "longhaul_console", False):
            return handler
    handler = logging.StreamHandler(stream)  # None: sys.stderr
    handler.longhaul_console = True
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("!! %(message)s"))
    handler.addFilter(_NotAnEvent())
    root.addHandler(handler)
    return handler


class RateSmoother:
    """samples/s for the progress line, steady from line to line.

    Per-step rates jump (9 to 220 samples/s) with data loading, checkpoint copies and the other
    processes on a small box. This averages seconds per sample exponentially over about the last
    `1 / (1 - beta)` steps and shows its inverse: a slow step counts by the time it took, as in
    samples divided by time, instead of being outvoted by fast ones as in a mean of rates.

    Not the loss EMA of trainer.history.smoothing (which starts at the first value): this one
    starts from zero and divides by the sum of the weights, so the first steps weigh as much as
    the later ones instead of the first one standing in for all that came before it."""

    def __init__(self, beta: float = 0.95):
        self.beta = beta
        self.total = 0.0    # exponentially weighted sum of seconds per sample
        self.weight = 0.0   # sum of the weights, so the first steps are not biased to zero
        self.last_step: Optional[int] = None

    def update(self, step: int, samples_per_s: Optional[float]) -> Optional[float]:
        """Fold in the rate of `step` (each step once); return the smoothed samples/s."""
        if samples_per_s and samples_per_s > 0 and step != self.last_step:
            self.last_step = step
            self.total = self.beta * self.total + (1.0 - self.beta) / samples_per_s
            self.weight = self.beta * self.weight + (1.0 - self.beta)
        return self.weight / self.total if self.total > 0 else None


def _progress_stream(line, stream: Any, interval: float, log_interval: float, clock) -> None:
    """What a progress line on stderr keeps: where it writes, whether that is a terminal (rewrite
    in place, often) or a log (a new line now and then), its clock."""
    line.stream = stream or sys.stderr
    line.tty = bool(getattr(line.stream, "isatty", lambda: False)())
    line.interval = interval if line.tty else log_interval
    line.clock = clock
    line.started = None


class DecodeProgressLine:
    """"checking data: 1200/7200 files" on stderr while the data is decoded up front (it takes
    minutes on thousands of files). At most one line every `interval` seconds; on a terminal
    the line is rewritten in place, in a log (not a terminal) new lines come every
    `log_interval` seconds. Nothing is printed when the check is over within the first interval."""

    def __init__(self, stream: Any = None, interval: float = 1.0, log_interval: float = 10.0,
                 clock=time.monotonic):
        _progress_stream(self, stream, interval, log_interval, clock)
        self.last: Optional[float] = None
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started = self.last = now
        if done >= total and self.shown:
            self._write(done, total, end="\n")
        elif now - self.last >= self.interval and done < total:
            self.last = now
            self._write(done, total, end="" if self.tty else "\n")

    def _write(self, done: int, total: int, end: str) -> None:
        self.shown = True
        start = "\r" if self.tty else ""
        self.stream.write(f"{start}checking data: {done}/{total} files{end}")
        self.stream.flush()


class PrepareProgressLine:
    """"preparing data: 1200/7200 files, 85 files/s, ETA 1m10s" on stderr while `longhaul prepare`
    computes the store. On a terminal one line rewritten in place about every `interval` seconds; in
    a log (not a terminal) a new line every `log_interval` seconds. `done` starts at the items of
    the shards the prepare reuses. The rate counts from the first items computed, not from the
    start: the workers' start-up (a torch import each) would make the first ETAs several times too
    long; and over the whole pass rather than a short window, which would jump as workers finish
    items in bursts."""

    def __init__(self, stream: Any = None, interval: float = 0.5, log_interval: float = 5.0,
                 clock=time.monotonic):
        _progress_stream(self, stream, interval, log_interval, clock)
        self.start = 0  # items done at the first call: those of reused shards
        self.first: Optional[tuple[float, int]] = None  # (time, done) of the first items computed
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if total == 0:
            return  # waiting for another prepare's lock (prepare says so once): nothing to count yet
        now = self.clock()
        if self.started is None:  # `done` starts at the items of the shards the prepare reuses
            self.started, self.last, self.start = now, now, done
        if self.first is None and done > self.start:
            self.first = (now, done)
        if done >= total:
            if self.shown or not self.tty:
                self._write(self.text(done, total, now), end="\n")
        elif now - self.last >= self.interval:
            self.last = now
            self._write(self.text(done, total, now), end="" if self.tty else "\n")

    def text(self, done: int, total: int, now: float) -> str:
        parts = [f"preparing data: {done}/{total} files"]
        since, before = self.first or (now, done)
        if now > since and done > before:
            rate = (done - before) / (now - since)
            parts.append(f"{rate:.1f} files/s")
            if done < total:
                parts.append(f"ETA {duration((total - done) / rate)}")
        if done >= total and self.started is not None:
            parts.append(f"took {duration(now - self.started)}")
        return ", ".join(parts)

    def _write(self, text: str, end: str) -> None:
        self.shown = True
        start = "\r\x1b[K" if self.tty else ""
        self.stream.write(f"{start}{text}{end}")
        self.stream.flush()


def progress_line(body: dict, samples_per_s: Optional[float] = None) -> str:
    """One compact line: step, epoch, phase, loss, LR, throughput (smoothed when given), ETA."""
    m = body.get("metrics") or {}
    eta = body.get("eta")
    parts = [f"step {body['step']}/{body['total_steps']}",
             f"ep {epoch_number(body['epoch'], body['total_epochs'])}/{body['total_epochs']}",
             f"{body['phase_name']}"]
    if m.get("train_loss_smooth") is not None:
        parts.append(f"loss {m['train_loss_smooth']:.4f}")
    if m.get("lr") is not None:
        parts.append(f"lr {m['lr']:.2e}")
    rate = samples_per_s if samples_per_s is not None else m.get("samples_per_s")
    if rate is not None:
        parts.append(f"{rate:.0f} samples/s")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " | ".join(parts)


class ConsolePublisher:
    """Prints to stdout and keeps state.json/events.jsonl current (thread-safe: the checkpoint
    writer thread reports through it too)."""

    def __init__(self, run_dir: Path, name: str, quiet: bool = False, line_interval: float = 5.0):
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.state_file = StateFile(run_dir)
        self.name = name
        self.quiet = quiet
        self.line_interval = line_interval
        self.last_line = 0.0
        self.last_printed: Optional[int] = None  # the step of the last progress line
        self.last_state_write = 0.0
        self.lock = threading.Lock()
        self.events = EventLog(self.files.events).open()  # continues the seq
        self.reported: set[Path] = set()  # files whose write failure was already printed
        self.rate = RateSmoother()
        self.prepare_line: Optional[PrepareProgressLine] = None

    def started(self) -> None:
        try:
            first = start_unrecorded(self.files.path, self.state_file.read())
        except StateFileError:
            first = False  # damaged: a rebuild comes later; config.yaml's time stands in
        when = {"started_at": time.time()} if first else {}
        self._update_state(name=self.name, state="running", pid=os.getpid(), mode="foreground", **when)

    def _update_state(self, **fields: Any) -> None:
        """Merge fields into state.json; on a full disk they stay pending for the next write."""
        with self.lock:
            error = self.state_file.write(**fields)
            if error is not None:
                self._report(self.files.state, error)
            else:
                self.reported.discard(self.files.state)

    def _report(self, path: Path, exc: OSError) -> None:
        if path not in self.reported:
            self.reported.add(path)
            print(f"!! cannot write {path}: {exc.strerror or exc}; retrying", file=sys.stderr, flush=True)

    def sync(self) -> None:
        """fsync events.jsonl (a checkpoint or a final state must not outlive its events)."""
        try:
            self.events.sync()
        except OSError as exc:
            print(f"!! cannot fsync {self.events.path}: {exc}", file=sys.stderr, flush=True)

    def progress(self, body: dict) -> None:
        now = time.monotonic()
        rate = self.rate.update(body["step"], (body.get("metrics") or {}).get("samples_per_s"))
        last = body["step"] == body["total_steps"]
        if not self.quiet and (now - self.last_line >= self.line_interval or last) and body["step"] != self.last_printed:
            self.last_line, self.last_printed = now, body["step"]  # the end is published twice: print it once
            print(progress_line(body, rate), flush=True)
        if now - self.last_state_write >= 2.0 or last:
            self.last_state_write = now
            self._write_progress(body)

    def _write_progress(self, body: dict) -> None:
        self._update_state(**progress_fields(body))

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        self.events.add(kind, level, message, data)
        if self.events.error is not None:
            self._report(self.files.events, self.events.error)
        elif self.events.held == 0:
            self.reported.discard(self.files.events)
        prefix = {"info": "--", "warning": "!!", "error": "XX"}.get(level, "--")
        if kind != "crash" and (kind != "state" or data.get("state") != "running"):  # cli.main prints a crash
            print(f"{prefix} {message}", file=sys.stdout if level == "info" else sys.stderr, flush=True)
        if kind == "checkpoint":
            self._update_state(last_checkpoint={"time": time.time(), "step": data.get("step"),
                                                "path": data.get("path")})
            self.sync()
        if kind == "state":
            final = data["state"] in FINAL_STATES
            self._update_state(state=data["state"], pause_reason=data.get("reason") if data["state"] == "paused" else None,
                               **({"pid": None} if final else {}))
            if final:
                self.sync()
            if data["state"] == "finished":  # the engine's last event: every checkpoint is written
                self.after_run()

    def after_run(self) -> None:
        """The finished run's test evaluation and report (trainer.posthoc.after), once; failures
        become alert events and the run stays finished."""
        if getattr(self, "_after_run_done", False):
            return
        self._after_run_done = True
        from trainer.posthoc.after import after_run

        after_run(self.run_dir, self.event)
        self.sync()

    def preparing(self, body: dict) -> None:
        """The store being prepared before training: the line `longhaul prepare` prints."""
        if self.quiet:
            return
        if self.prepare_line is None:
            self.prepare_line = PrepareProgressLine()
        self.prepare_line(body["done"], body["total"])

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
