"""RUN_DIR/events.jsonl (and other append-only line files) written so that no line is ever torn
into the next one, and read so that a torn line is skipped. No torch: the daemon, the foreground
`longhaul train` and offline readers share it.

Writers meet three faults:

- a torn last line left by a crash or a full disk: a new writer starts on a fresh line, so its
  first line is never glued onto the torn one (which readers skip);
- a write that fails (ENOSPC, EDQUOT, EIO): the append never raises into the caller. An
  `AppendFile` with `keep` > 0 holds the lines in memory (bounded) and writes them on the next
  append or `retry()`; with `keep=0` they are dropped and counted (`lost`). A short write is cut
  back to the last whole line (or, if that fails too, the next write starts with a newline);
- a power cut: `sync()` fsyncs (callers do it when a checkpoint makes the events before it count).

One process writes a given file at a time (the daemon, or the foreground trainer), so the
truncation after a short write cannot cut another writer's line.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

#: Events held in memory while events.jsonl cannot be written (a full disk); past this the
#: oldest are dropped (and counted): the daemon must not grow without bound on a long outage.
EVENT_BACKLOG = 10_000


class AppendFile:
    """An append-only file of text lines that never leaves a half line behind a failed write."""

    def __init__(self, path: Path, keep: int = 0):
        self.path = Path(path)
        self.keep = keep
        self.held: collections.deque[bytes] = collections.deque()
        self.lost = 0
        """Lines dropped since `take_lost()` (not held: keep exceeded, or keep=0)."""
        self.error: Optional[OSError] = None
        """The error of the last failed write; None while writing works."""
        self._fd: Optional[int] = None
        self._fresh_line = False  # the file ends inside a line: start the next write with "\n"
        self._lock = threading.Lock()  # the foreground trainer reports from several threads

    def open(self) -> "AppendFile":
        # O_RDWR only to read the last byte; every write goes to the end (O_APPEND).
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        size = os.fstat(self._fd).st_size
        self._fresh_line = size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"
        return self

    @property
    def failing(self) -> bool:
        return self.error is not None

    def append(self, lines: Iterable[str]) -> bool:
        """Append whole lines (without their newline). True when everything is on disk now
        (held lines included); False when some wait in memory or were dropped."""
        with self._lock:
            self.held.extend(line.encode("utf-8", errors="replace") + b"\n" for line in lines)
            return self._write_held()

    def retry(self) -> bool:
        """Write the lines held in memory, if any (a timer calls this while the disk is full)."""
        with self._lock:
            return self._write_held()

    def take_lost(self) -> int:
        with self._lock:
            lost, self.lost = self.lost, 0
            return lost

    def sync(self) -> None:
        """fsync the file (OSError is the caller's to report)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _write_held(self) -> bool:
        if not self.held:
            return True
        if self._fd is None:
            self._drop_excess()
            return False
        prefix = b"\n" if self._fresh_line else b""
        data = prefix + b"".join(self.held)
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            written, error = 0, exc
        else:
            # a short write is what a filling disk does before it says ENOSPC
            error = None if written == len(data) else OSError(
                errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write: {written} of {len(data)} bytes)")
        if written:
            self._account(data, written, len(prefix))
        if error is None:
            self.error = None
            return True
        self.error = error
        self._drop_excess()
        return False

    def _account(self, data: bytes, written: int, prefix: int) -> None:
        """After a write of `written` bytes of `data`: forget the lines that made it, and cut a
        partial line back off the file so the next write cannot glue onto it."""
        if written >= prefix:
            self._fresh_line = False
        body = data[prefix:written]
        for _ in range(body.count(b"\n")):
            self.held.popleft()
        partial = len(body) - (body.rfind(b"\n") + 1)
        if partial:
            try:
                os.ftruncate(self._fd, os.fstat(self._fd).st_size - partial)
            except OSError:
                self._fresh_line = True

    def _drop_excess(self) -> None:
        while len(self.held) > self.keep:
            self.held.popleft()
            self.lost += 1


class EventLog:
    """The one writer of RUN_DIR/events.jsonl: numbers events (continuing the file's seq) and
    appends them through an AppendFile that holds them in memory while the disk is full."""

    def __init__(self, path: Path, keep: int = EVENT_BACKLOG):
        self.path = Path(path)
        self.file = AppendFile(self.path, keep=keep)
        self.seq = last_seq(self.path)
        self._lock = threading.Lock()

    def open(self) -> "EventLog":
        self.file.open()
        return self

    def add(self, kind: str, level: str, message: str, data: dict, at: Optional[float] = None) -> dict:
        """Number an event, append it, return its body (seq, time, kind, level, message, data)."""
        with self._lock:  # numbering and appending in one order across threads
            self.seq += 1
            body = {"seq": self.seq, "time": time.time() if at is None else at, "kind": kind,
                    "level": level, "message": message, "data": data}
            self.file.append([json.dumps(body, default=str)])
        return body

    def retry(self) -> bool:
        return self.file.retry()

    def sync(self) -> None:
        self.file.sync()

    def close(self) -> None:
        self.file.close()

    @property
    def error(self) -> Optional[OSError]:
        return self.file.error

    @property
    def held(self) -> int:
        return len(self.file.held)


# ----------------------------------------------------------------------------- readers
def parse_event(line: str) -> Optional[dict]:
    """An events.jsonl line as a dict with an int seq, or None (torn or not an event)."""
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("seq"), int):
        return None
    return body


def read_tail(path: Path, count: int) -> list[dict]:
    """The last `count` events of events.jsonl that parse (torn and foreign lines skipped)."""
    from trainer.runs import tail_lines

    return [body for line in tail_lines(Path(path), count) if (body := parse_event(line)) is not None]


def last_seq(path: Path) -> int:
    """The highest seq among the last events of the file (0 if none): writers continue it."""
    return max((body["seq"] for body in read_tail(path, 50)), default=0)

