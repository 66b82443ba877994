"""RUN_DIR/events.jsonl: the one writer (`EventLog`: numbers events, continuing the file's seq)
and the readers (`read_tail`, `read_events`, `last_seq`, `parse_event`) of the run's events.

An event is the body of a protocol `event` frame: {seq, time, kind, level, message, data}, one
JSON line each. Writers append through a `linefile.AppendFile`, so a full disk holds events in
memory (at most EVENT_BACKLOG) instead of raising, and a torn last line is skipped by readers.
No torch: the daemon, the foreground `longhaul train` and offline readers share it.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Optional

from trainer.run.linefile import AppendFile, tail_lines

#: Events held in memory while events.jsonl cannot be written (a full disk); past this the
#: oldest are dropped (and counted): the daemon must not grow without bound on a long outage.
EVENT_BACKLOG = 10_000
#: Events a reader takes from the end of the file by default (a snapshot's recent events).
RECENT_EVENTS = 200


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
    return body if _is_event(body) else None


def _is_event(body) -> bool:
    return isinstance(body, dict) and isinstance(body.get("seq"), int)


def read_events(path: Path, count: int = RECENT_EVENTS) -> tuple[list[dict], list[str]]:
    """The events among the last `count` lines of events.jsonl, and one problem per line that
    is not JSON (damage a reader should show; a torn last line is not one: it is skipped)."""
    path = Path(path)
    events, problems = [], []
    for line in tail_lines(path, count):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: unreadable line ({exc.msg}) near the end")
            continue
        if _is_event(body):
            events.append(body)
    return events, problems


def read_tail(path: Path, count: int) -> list[dict]:
    """The events among the last `count` lines of events.jsonl (torn and foreign lines skipped)."""
    return read_events(path, count)[0]


def last_seq(path: Path) -> int:
    """The highest seq among the last events of the file (0 if none): writers continue it."""
    return max((body["seq"] for body in read_tail(path, 50)), default=0)
