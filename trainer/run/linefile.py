"""Append-only text files of whole lines (events.jsonl, train.log), written so that no line is
ever torn into the next one, and read so that a torn last line is skipped. No torch.

Writers meet three faults:

- a torn last line left by a crash or a full disk: a new writer starts on a fresh line, so its
  first line is never glued onto the torn one (which readers skip);
- a write that fails (ENOSPC, EDQUOT, EIO): the append never raises into the caller. An
  `AppendFile` with `keep` > 0 holds the lines in memory (bounded) and writes them on the next
  append or `retry()`; with `keep=0` they are dropped and counted (`lost`). A short write is cut
  back to the last whole line (or, if that fails too, the next write starts with a newline);
- a power cut: `sync()` fsyncs (callers do it when a checkpoint makes the lines before it count).

One process writes a given file at a time (the daemon, or the foreground trainer), so the
truncation after a short write cannot cut another writer's line.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import threading
from pathlib import Path
from typing import Iterable, Optional


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


def tail_lines(path: Path, count: int, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
    """The last `count` lines of a text file (reads at most `max_bytes` from its end).

    A torn JSON line at the end (no newline and not valid JSON: events.jsonl after a crash or a
    full disk) is skipped; an unfinished text line (a log being written) is kept."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - max_bytes)
            block = 64 * 1024
            data = b""
            pos = size
            while pos > start and data.count(b"\n") <= count:
                step = min(block, pos - start)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if pos > 0 and lines:
        lines = lines[1:]  # first line is probably cut
    if lines and not data.endswith(b"\n") and _torn_json(lines[-1]):
        lines.pop()
    return lines[-count:]


def _torn_json(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        json.loads(line)
    except ValueError:
        return True
    return False
