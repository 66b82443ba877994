"""The history file format: an append-only msgpack file of records, its writer, reader and cut.

``history.msgpack`` in a run directory is a plain concatenation of msgpack maps, one per logged
train step or evaluation (record shapes: docs/ARCHITECTURE.md, "History records")::

    {"kind": "train", "step": 1200, "epoch": 3, "phase": 0, "time": 1.7e9, "train_loss": 0.41, ...}
    {"kind": "eval", "step": 1200, ..., "val_loss": 0.52, "val_f1_macro": 0.81, "per_class": {...}}

Crash safety: a record is appended with one write and no fsync; the checkpoint code calls
:meth:`HistoryWriter.fsync` and stores :meth:`HistoryWriter.tell` with the checkpoint, and a
resume cuts the file back to that length with :func:`truncate_history`, so the curve has no gaps
and no duplicates. Readers stop cleanly at a torn last record (a crash mid-append).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

import msgpack

TRAIN = "train"
EVAL = "eval"
META_KEYS = frozenset({"kind", "step", "epoch", "phase", "time"})
"""Record fields that describe where a record sits; they are not metric series."""


class HistoryError(ValueError):
    """A history file or record is unusable; the message says which and why."""


def is_number(value: Any) -> bool:
    """A metric value: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record(record: Any) -> None:
    """Raise HistoryError unless ``record`` is a map with a string ``kind`` and an int ``step``."""
    if not isinstance(record, dict):
        raise HistoryError(f"history record must be a map, got {type(record).__name__}")
    if not isinstance(record.get("kind"), str):
        raise HistoryError(f"history record needs a string 'kind' (train or eval), got {record.get('kind')!r}")
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise HistoryError(f"{record['kind']} record needs an int 'step', got {step!r}")


def is_record(obj: Any) -> bool:
    try:
        check_record(obj)
    except HistoryError:
        return False
    return True


def eval_series_name(key: str) -> str:
    """Series / export column name of an eval scalar: eval keys live in the ``val_`` namespace."""
    return key if key.startswith("val_") else "val_" + key


# ----------------------------------------------------------------------------- writing
class HistoryWriter:
    """Appends records to a history file: one unbuffered write per record, fsync on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd = -1
        self._torn = False  # a failed append may have left a partial record after _length
        self._packer = msgpack.Packer(use_bin_type=True)
        self.reopen()

    def append(self, record: dict) -> int:
        """Write one record; return the file length after it.

        The bytes reach the OS at once (a crash of the process loses nothing; a power cut may lose
        what was not fsync'ed). If the write fails (disk full) the partial record is cut off again.
        """
        check_record(record)
        data = self._packer.pack(record)
        self._cut_torn_tail()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            self._torn = True
            try:
                self._cut_torn_tail()
            except OSError:
                pass  # tried again before the next append; readers stop at the torn record
            raise
        self._length += len(data)
        return self._length

    def _cut_torn_tail(self) -> None:
        """Cut a record that a failed write (disk full) left half-written back off, so that a
        retried append continues right after the last whole record: no torn record, no gap."""
        if self._torn:
            os.ftruncate(self._fd, self._length)
            self._torn = False

    def reopen(self) -> None:
        """Reopen the file after :func:`truncate_history` cut it, so :meth:`tell` is right again."""
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._length = os.fstat(self._fd).st_size

    def tell(self) -> int:
        """Byte length of the file: what a checkpoint stores to truncate back to on resume."""
        return self._length

    def fsync(self) -> None:
        """Make every appended record durable (called by the checkpoint code before it commits)."""
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "HistoryWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def truncate_history(path: str | os.PathLike, length: int) -> int:
    """Cut the history file back to ``length`` bytes (the length a checkpoint recorded); return it.

    Whatever follows ``length`` (records logged after the checkpoint, a torn last record) is
    dropped and the cut is fsync'ed. If the file is shorter than ``length`` (records lost in a
    power cut before they were fsync'ed) it is cut to its last whole record instead and that
    shorter length is returned: callers should log a warning when the result differs.
    """
    if length < 0:
        raise HistoryError(f"cannot truncate {path} to a negative length ({length})")
    path = os.fspath(path)
    if not os.path.exists(path):
        if length == 0:
            return 0
        raise HistoryError(f"history file {path} is missing but the checkpoint recorded {length} bytes")
    size = os.path.getsize(path)
    if size < length:
        reader = read_history(path)
        for _ in reader:
            pass
        length = reader.valid_length
    with open(path, "r+b") as f:
        f.truncate(length)
        f.flush()
        os.fsync(f.fileno())
    return length


# ----------------------------------------------------------------------------- reading
class HistoryReader:
    """Iterates the records of a history file from a byte offset; see :func:`read_history`.

    After (or during) iteration: ``valid_length`` is the offset just past the last whole record
    yielded (where a tailing reader continues, or where a crashed file should be cut);
    ``torn`` is True when bytes after it do not form a whole record; ``problem`` says why.
    """

    def __init__(self, path: str | os.PathLike, since_offset: int = 0, chunk_size: int = 1 << 20):
        self.path = os.fspath(path)
        self.since_offset = since_offset
        self.chunk_size = chunk_size
        self.valid_length = since_offset
        self.torn = False
        self.problem: Optional[str] = None

    def __iter__(self) -> Iterator[dict]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            if self.since_offset:
                raise HistoryError(f"history file {self.path} is missing (reading from offset {self.since_offset})") from None
            return  # no record logged yet
        with f:
            size = os.fstat(f.fileno()).st_size
            if self.since_offset > size:
                raise HistoryError(
                    f"history file {self.path} has {size} bytes, less than the offset {self.since_offset}:"
                    " it was truncated (a resumed run); read it again from 0"
                )
            f.seek(self.since_offset)
            unpacker = msgpack.Unpacker(raw=False)
            read = 0
            while chunk := f.read(self.chunk_size):
                read += len(chunk)
                unpacker.feed(chunk)
                while True:
                    try:
                        obj = unpacker.unpack()
                    except msgpack.OutOfData:
                        break
                    except Exception as exc:  # corrupt bytes: msgpack raises several types
                        self._stop(f"undecodable bytes at offset {self.valid_length}: {type(exc).__name__}: {exc}")
                        return
                    if not is_record(obj):
                        self._stop(f"not a history record at offset {self.valid_length}: {str(obj)[:60]}")
                        return
                    self.valid_length = self.since_offset + unpacker.tell()
                    yield obj
            if self.since_offset + read > self.valid_length:
                self._stop(f"torn record at offset {self.valid_length} ({self.since_offset + read - self.valid_length} bytes)")

    def _stop(self, problem: str) -> None:
        self.torn = True
        self.problem = problem


def read_history(path: str | os.PathLike, since_offset: int = 0) -> HistoryReader:
    """Records of a history file from byte ``since_offset`` on, stopping cleanly at a torn or
    corrupt tail (its ``valid_length`` tells how many bytes were whole records).

    A missing file reads as empty (a run that has not logged yet).
    """
    return HistoryReader(path, since_offset)
