"""What the daemon writes and reads of its run directory.

- Writes: every event to events.jsonl (`trainer.run.events.EventLog`), the worker's output to
  train.log, state.json (`trainer.run.state.StateFile`) merged from an I/O thread, never on the loop; events.jsonl,
  train.log and daemon.log are fsynced at each relayed checkpoint, final state and exit: a power
  cut does not take back the events that led up to the checkpoint a resume starts from.
- Reads, for snapshots: at start-up the run directory's own snapshot
  (`trainer.run.snapshot.snapshot_from_run_dir`: recent events and log lines, plan.json), and the
  history's series (reloaded when a restarted worker has cut history.msgpack back to its
  checkpoint).
- A full disk never stops the daemon: events are held in memory and retried, train.log lines
  are counted as lost, state.json fields stay pending until a write succeeds; each file's
  failure and recovery is said once (daemon.log and an `alert` event).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from trainer.run.events import RECENT_EVENTS, EventLog
from trainer.run.linefile import AppendFile
from trainer.run.rundir import RunDir
from trainer.run.snapshot import carried_progress, snapshot_from_run_dir
from trainer.run.state import StateFile, start_unrecorded

log = logging.getLogger(__name__)

SNAPSHOT_EVENTS = RECENT_EVENTS
MAX_LOG_LINE = 4096


def clean_line(raw: bytes) -> str:
    """A log line as shown: decoded, carriage-return progress bars reduced to their last state."""
    text = raw.decode(errors="replace").rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[1]
    if len(text) > MAX_LOG_LINE:
        text = text[:MAX_LOG_LINE] + " [...]"
    return text


class Journal:
    """The run directory as one daemon keeps it. `alert(level, message, data)` reports a file
    that cannot be written (or is written again) as an `alert` event."""

    def __init__(self, run_dir: Path, alert: Callable[[str, str, dict], Any]):
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.alert = alert
        self.state_file = StateFile(run_dir)
        self.events: collections.deque = collections.deque(maxlen=SNAPSHOT_EVENTS)
        self.logs: collections.deque = collections.deque(maxlen=SNAPSHOT_EVENTS)
        self.log_seq = 0
        self.plan_body: Optional[dict] = None
        self.carried_progress: Optional[dict] = None
        """The run's last progress from state.json (a resumed run), shown until the worker reports."""
        self.start_unrecorded = False
        """No worker of this run ever started: the first one writes `started_at`."""
        self.series = None
        self.series_stale = False
        """A (re)started worker cuts history.msgpack back to its checkpoint: reload before its first record."""
        self.monitor = None
        self.eventlog: Optional[EventLog] = None
        self.train_log: Optional[AppendFile] = None
        self._daemon_log_fd: Optional[int] = None
        self._unwritable: set[str] = set()  # run files that cannot be written now (said once)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="daemon-io")

    # ------------------------------------------------------------------ open and close
    def open(self) -> None:
        """Load the recent events, log lines and plan, open the journals (EventLog continues the seq)."""
        self._loop = asyncio.get_running_loop()
        self._load_recent()
        self.start_unrecorded = start_unrecorded(self.files.path, self.state_file.read_or_rebuild())
        self.eventlog = EventLog(self.files.events).open()
        self.train_log = AppendFile(self.files.train_log).open()
        self._daemon_log_fd = self._find_daemon_log()

    async def close(self) -> None:
        """Write what is held if the disk allows, fsync, close: a power cut after the daemon is
        gone loses nothing it wrote."""
        if self.eventlog is not None and not self.eventlog.retry():
            log.error("%d event(s) could not be written to events.jsonl before exit (%s); clients got them",
                      self.eventlog.held, self.eventlog.error)
        self.sync()
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)
        for fh in (self.eventlog, self.train_log):
            if fh is not None:
                fh.close()

    def _find_daemon_log(self) -> Optional[int]:
        """fd 2 when it is this run's daemon.log (a launched daemon), so it is fsynced too."""
        try:
            ours, log_file = os.fstat(2), os.stat(self.files.daemon_log)
        except OSError:
            return None
        return 2 if (ours.st_dev, ours.st_ino) == (log_file.st_dev, log_file.st_ino) else None

    def _load_recent(self) -> None:
        """What the run directory holds before the worker reports: the snapshot an offline reader
        gets (its problem alerts, which are not in events.jsonl and carry no seq, left out)."""
        snapshot = snapshot_from_run_dir(self.run_dir, with_series=False)
        self.carried_progress = carried_progress(snapshot["progress"], snapshot["plan"])
        self.events.extend(body for body in snapshot["events"] if "seq" in body)
        for body in snapshot["logs"]:
            body["line"] = clean_line(body["line"].encode())
            self.logs.append(body)
        self.log_seq = len(snapshot["logs"])
        if snapshot["plan"]:
            self.plan_body = {"plan": snapshot["plan"], "config": snapshot["config"]}

    # ------------------------------------------------------------------ events and log lines
    def add_event(self, kind: str, level: str, message: str, data: dict, at: Optional[float] = None) -> dict:
        """Number an event and append it to events.jsonl; returns its body. A full disk never
        loses it: the log holds it in memory (call note_events_written once it is sent)."""
        body = self.eventlog.add(kind, level, message, data, at=at)
        self.events.append(body)
        return body

    def note_events_written(self) -> None:
        error = self.eventlog.error
        self.note_write(self.files.events.name, error, lost=0 if error else self.eventlog.file.take_lost())

    def add_log(self, stream: str, line: str) -> dict:
        """Number a log line of the worker for clients; returns its body."""
        self.log_seq += 1
        body = {"seq": self.log_seq, "time": time.time(), "stream": stream, "line": line}
        self.logs.append(body)
        return body

    def write_log(self, lines: list[str]) -> None:
        """Append to train.log. A full disk loses these lines (counted, said once), never the
        relay: clients still get every line."""
        if not lines or self.train_log is None:
            return
        self.train_log.append(lines)
        self.note_write(self.files.train_log.name, self.train_log.error,
                        lost=0 if self.train_log.error else self.train_log.take_lost())

    # ------------------------------------------------------------------ state.json and syncs
    def record_start(self) -> None:
        """A worker starts: the run's first one writes when the run really started (`started_at`,
        kept across resumes), which a queued run's config.yaml time is not (it was written when
        the run was queued)."""
        if self.start_unrecorded:
            self.start_unrecorded = False
            self.write_state(started_at=time.time())

    def write_state(self, **fields: Any) -> None:
        """Merge fields into state.json from the I/O thread (in submission order)."""
        self._io.submit(self._write_state_now, fields)

    def _write_state_now(self, fields: dict) -> None:
        """In the I/O thread. A write that fails (a full disk) keeps the wanted fields pending:
        the next write or the retry timer writes them, so state.json ends up true."""
        was_pending = bool(self.state_file.pending)
        error = self.state_file.write(**fields)
        if error is not None and not was_pending:  # the first failure: say it once
            self._loop.call_soon_threadsafe(self.note_write, self.files.state.name, error)
        elif error is None and was_pending:
            self._loop.call_soon_threadsafe(self.note_write, self.files.state.name, None)

    async def retry_writes(self, interval: float) -> None:
        """While the disk is full: retry the held events and the pending state.json fields."""
        while True:
            await asyncio.sleep(interval)
            if self.eventlog.held:
                self.eventlog.retry()
                self.note_events_written()
            if self.state_file.pending:
                self.write_state()

    def note_write(self, name: str, error: Optional[OSError], lost: int = 0) -> None:
        """Say once (daemon.log and an `alert` event) that a run file cannot be written, and once
        that it is written again, with what was lost meanwhile."""
        if error is not None:
            if name in self._unwritable:
                return
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            why = error.strerror or str(error)
            self._unwritable.add(name)
            consequence = {self.files.events.name: "events are kept in memory until it can be written again",
                           self.files.train_log.name: "the trainer's output is not being logged (lines are counted)",
                           self.files.state.name: "it is retried until it can be written"}.get(name, "")
            text = f"cannot write {self.run_dir / name}: {why}; {consequence}"
            log.error("%s", text)
            self.alert("error", text, {"what": "disk_full" if full else "write_failed", "file": name,
                                       "errno": error.errno})
        elif name in self._unwritable:
            self._unwritable.discard(name)
            text = f"{self.run_dir / name} is written again" + (f"; {lost} line(s) were lost meanwhile" if lost else "")
            log.warning("%s", text)
            self.alert("warning" if lost else "info", text, {"what": "write_resumed", "file": name, "lost": lost})

    def sync(self) -> None:
        """fsync events.jsonl, train.log and daemon.log in the I/O thread: after a checkpoint,
        a final state or the daemon's exit, a power cut must not take back what led up to it."""
        self._io.submit(self._sync_now)

    def _sync_now(self) -> None:
        for name, fh in ((self.files.events.name, self.eventlog), (self.files.train_log.name, self.train_log)):
            if fh is None:
                continue
            try:
                fh.sync()
            except OSError as exc:
                log.warning("cannot fsync %s: %s", name, exc)
        if self._daemon_log_fd is not None:
            try:
                sys.stderr.flush()
                os.fsync(self._daemon_log_fd)
            except (OSError, ValueError) as exc:
                log.warning("cannot fsync %s: %s", self.files.daemon_log, exc)

    # ------------------------------------------------------------------ plan and history
    async def load_history(self, monitor) -> None:
        """The series of history.msgpack, for snapshots (`monitor`: the run's eval.monitor_rule)."""
        from trainer.history import SeriesSet, load_series

        self.monitor = monitor
        path = self.files.history
        try:
            self.series = await asyncio.to_thread(load_series, path, monitor)
        except Exception as exc:  # a damaged history must not keep the run from training
            log.error("cannot load %s: %s", path, exc)
            self.alert("warning", f"history not loaded for the dashboard: {exc}", {"what": "history"})
            self.series = SeriesSet(monitor)

    async def feed_record(self, record: dict) -> None:
        """A history record the worker streamed."""
        if self.series_stale:
            self.series_stale = False
            await self.load_history(self.monitor)
        # SeriesSet ignores records at or before the last step of their kind: those the
        # reloaded file already holds.
        self.series.feed(record)

    async def prime_series_cache(self) -> None:
        """The run is over: leave its downsampled series beside the history, so that attaching
        to it later does not re-read a history of millions of steps (history.load_summary)."""
        from trainer.history import load_summary

        path = self.files.history
        try:
            await asyncio.to_thread(load_summary, path, self.monitor)
        except Exception as exc:  # only a cache: the next reader builds it
            log.warning("could not cache the series of %s: %s", path, exc)
