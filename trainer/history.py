"""Metric history: an append-only msgpack file of records, and bounded downsampled series of it.

``history.msgpack`` in a run directory is a plain concatenation of msgpack maps, one per logged
train step or evaluation (record shapes: docs/ARCHITECTURE.md, "History records")::

    {"kind": "train", "step": 1200, "epoch": 3, "phase": 0, "time": 1.7e9, "train_loss": 0.41, ...}
    {"kind": "eval", "step": 1200, ..., "val_loss": 0.52, "val_f1_macro": 0.81, "per_class": {...}}

Crash safety: a record is appended with one write and no fsync; the checkpoint code calls
:meth:`HistoryWriter.fsync` and stores :meth:`HistoryWriter.tell` with the checkpoint, and a
resume cuts the file back to that length with :func:`truncate_history`, so the curve has no gaps
and no duplicates. Readers stop cleanly at a torn last record (a crash mid-append).

For display, each scalar metric becomes a :class:`Downsampler`: at most ``max_points`` buckets,
each keeping the mean, min and max of the raw points it stands for. :func:`load_series` builds
them from a big file quickly by reading runs of identically laid-out train records with numpy
instead of decoding each map in Python.

Imported by the TUI: stdlib and msgpack at import time; numpy only inside the bulk paths.
"""

from __future__ import annotations

import csv
import json
import math
import mmap
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Iterator, Optional

import msgpack

from trainer.monitor import Monitor

if TYPE_CHECKING:
    import numpy as np
# numpy is imported where it is used: a client attached to a daemon feeds records one by one and
# never pays its import time; only the bulk paths (load_series, from_arrays) need it.

TRAIN = "train"
EVAL = "eval"
META_KEYS = frozenset({"kind", "step", "epoch", "phase", "time"})
"""Record fields that describe where a record sits; they are not metric series."""
SMOOTH_KEY = "train_loss_smooth"
"""Series computed by :class:`SeriesSet`: the EMA of ``train_loss`` (see :class:`LossSmoother`)."""
DEFAULT_MAX_POINTS = 1000
DEFAULT_SMOOTHING = 0.98


class HistoryError(ValueError):
    """A history file or record is unusable; the message says which and why."""


def _is_number(value: Any) -> bool:
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


def _is_record(obj: Any) -> bool:
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
                    if not _is_record(obj):
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


# ----------------------------------------------------------------------------- smoothing
class LossSmoother:
    """Exponential moving average of the train loss, one update per train record.

    ``value = beta * value + (1 - beta) * loss``, starting at the first loss; NaN/inf losses are
    skipped. The engine can use the same class for the ``train_loss_smooth`` of progress frames.
    """

    def __init__(self, beta: float = DEFAULT_SMOOTHING):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.value: Optional[float] = None

    def update(self, loss: float) -> Optional[float]:
        """Fold ``loss`` in and return the smoothed value (None until a finite loss was seen)."""
        if math.isfinite(loss):
            self.value = loss if self.value is None else self.beta * self.value + (1.0 - self.beta) * loss
        return self.value


def ema(values: np.ndarray, beta: float, start: float, block: int = 256) -> np.ndarray:
    """Vectorised EMA (y[i] = beta*y[i-1] + (1-beta)*x[i], y[-1] = start) of finite ``values``.

    Works block by block: inside a block the sum is a matrix product with a triangular matrix of
    powers of beta; a short Python loop carries the state from block to block. Matches
    :class:`LossSmoother` to rounding error.
    """
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block)
    padded[:n] = x
    j = np.arange(block)
    lag = j[:, None] - j[None, :]
    weights = np.where(lag >= 0, (1.0 - beta) * beta ** np.maximum(lag, 0), 0.0)
    local = padded.reshape(n_blocks, block) @ weights.T  # local[k, j]: block k's own inputs
    decay = beta ** (j + 1.0)                             # weight of the state entering the block
    carry = np.empty(n_blocks)
    state = start
    last_local = local[:, -1].tolist()
    for k in range(n_blocks):
        carry[k] = state
        state = decay[-1] * state + last_local[k]
    return (local + carry[:, None] * decay[None, :]).ravel()[:n]


# ----------------------------------------------------------------------------- downsampling
class Downsampler:
    """A bounded, incremental summary of one metric series.

    Points go into buckets of ``width`` consecutive points (all buckets but the last are full).
    When a point would make more than ``max_points`` buckets, neighbouring buckets are merged
    in pairs and ``width`` doubles, so appending is amortised O(1) and the summary never exceeds
    ``max_points`` buckets. Each bucket keeps its last step, the sum and count of its values, and
    their min and max: :meth:`to_dict` reports the bucket *mean* as ``value`` (a noisy loss reads
    better averaged; min/max show the spread) at the bucket's last step (so the newest point is
    always at the newest step). The global min and max of the raw series survive every merge.

    Points must come in increasing step order: a point whose step is not after the last one is
    ignored (a resumed run repeats steps it already logged). NaN/inf values are ignored.
    """

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS):
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        self.max_points = max_points
        self.width = 1
        self.last_step: Optional[int] = None
        self.count = 0  # raw points accepted
        self._step: list[int] = []
        self._sum: list[float] = []
        self._n: list[int] = []
        self._min: list[float] = []
        self._max: list[float] = []

    def __len__(self) -> int:
        return len(self._step)

    def append(self, step: int, value: float) -> bool:
        """Add one point; return whether it was kept (see the class docstring for what is not)."""
        value = float(value)
        if not math.isfinite(value) or (self.last_step is not None and step <= self.last_step):
            return False
        self.last_step = step
        self.count += 1
        if self._n and self._n[-1] < self.width:
            self._step[-1] = step
            self._sum[-1] += value
            self._n[-1] += 1
            if value < self._min[-1]:
                self._min[-1] = value
            if value > self._max[-1]:
                self._max[-1] = value
            return True
        self._step.append(step)
        self._sum.append(value)
        self._n.append(1)
        self._min.append(value)
        self._max.append(value)
        if len(self._step) > self.max_points:
            self._halve()
        return True

    def _halve(self) -> None:
        """Merge buckets (0,1), (2,3), ...; an odd last bucket stays alone and keeps filling."""
        pairs = range(0, len(self._step), 2)
        self._step = [self._step[min(i + 1, len(self._step) - 1)] for i in pairs]
        self._sum = [sum(self._sum[i:i + 2]) for i in pairs]
        self._n = [sum(self._n[i:i + 2]) for i in pairs]
        self._min = [min(self._min[i:i + 2]) for i in pairs]
        self._max = [max(self._max[i:i + 2]) for i in pairs]
        self.width *= 2

    @classmethod
    def from_arrays(cls, steps: Any, values: Any, max_points: int = DEFAULT_MAX_POINTS) -> "Downsampler":
        """The Downsampler that appending these points one by one would give, built with numpy."""
        import numpy as np

        ds = cls(max_points)
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            steps, values = steps[finite], values[finite]
        increasing = _increasing(steps)
        if increasing is not None:
            steps, values = steps[increasing], values[increasing]
        n = len(steps)
        if n == 0:
            return ds
        while -(-n // ds.width) > max_points:
            ds.width *= 2
        starts = np.arange(0, n, ds.width)
        ds._step = steps[np.minimum(starts + ds.width, n) - 1].tolist()
        ds._sum = np.add.reduceat(values, starts).tolist()
        ds._n = np.diff(np.append(starts, n)).tolist()
        ds._min = np.minimum.reduceat(values, starts).tolist()
        ds._max = np.maximum.reduceat(values, starts).tolist()
        ds.last_step = int(steps[-1])
        ds.count = n
        return ds

    def to_dict(self) -> dict[str, list]:
        """``{"step": [...], "value": [...], "min": [...], "max": [...]}``, one entry per bucket."""
        return {
            "step": list(self._step),
            "value": [s / n for s, n in zip(self._sum, self._n)],
            "min": list(self._min),
            "max": list(self._max),
        }


def _increasing(steps: np.ndarray, after: Optional[int] = None) -> Optional[np.ndarray]:
    """Mask of the steps greater than every step before them (and than ``after``); None if all are."""
    import numpy as np

    if len(steps) == 0 or (
        (after is None or steps[0] > after) and bool(np.all(steps[1:] > steps[:-1]))
    ):
        return None  # the usual case, checked without building a mask
    before = np.empty_like(steps)
    before[0] = np.iinfo(np.int64).min if after is None else after
    np.maximum.accumulate(steps[:-1], out=before[1:])
    np.maximum(before[1:], before[0], out=before[1:])
    return steps > before


# ----------------------------------------------------------------------------- series set
class SeriesSet:
    """Every scalar metric of a run as a :class:`Downsampler`, plus the last and best evaluation.

    Train records give one series per numeric field (``train_loss``, ``lr``, ``grad_norm``, ...)
    and ``train_loss_smooth`` (see :class:`LossSmoother`); eval records give one series per
    numeric field, named with a ``val_`` prefix (see :func:`eval_series_name`). Lists and maps
    (per_class, confusion, classes) are not series. A record whose step is not after the last
    record of its kind is ignored, like a Downsampler point.
    """

    def __init__(self, monitor: Monitor = Monitor(), max_points: int = DEFAULT_MAX_POINTS,
                 smoothing: float = DEFAULT_SMOOTHING):
        self.monitor = monitor
        self.max_points = max_points
        self.series: dict[str, Downsampler] = {}
        self.smoother = LossSmoother(smoothing)
        self.last_eval: Optional[dict] = None
        self.best_eval: Optional[dict] = None
        self.last_step: dict[str, int] = {}
        """Step of the last record accepted, per kind."""
        self.valid_length = 0
        """Bytes of the history file this set reflects (set by load_series)."""

    def feed(self, record: dict) -> bool:
        """Take one history record; return False if it was ignored (unknown kind, old step)."""
        check_record(record)
        kind, step = record["kind"], record["step"]
        if kind not in (TRAIN, EVAL) or not self._accept(kind, step):
            return False
        if kind == TRAIN:
            for key, value in record.items():
                if key not in META_KEYS and key != SMOOTH_KEY and _is_number(value):
                    self._point(key, step, value)
            loss = record.get("train_loss")
            if _is_number(loss) and math.isfinite(loss):
                self._point(SMOOTH_KEY, step, self.smoother.update(loss))
        else:
            self._note_eval(record)
            for key, value in record.items():
                if key not in META_KEYS and _is_number(value):
                    self._point(eval_series_name(key), step, value)
        return True

    def _accept(self, kind: str, step: int) -> bool:
        last = self.last_step.get(kind)
        if last is not None and step <= last:
            return False
        self.last_step[kind] = step
        return True

    def _point(self, name: str, step: int, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Downsampler(self.max_points)
        series.append(step, value)

    def _note_eval(self, record: dict) -> None:
        self.last_eval = record
        if self.monitor.better(self.monitor.value(record), self.monitor.value(self.best_eval)):
            self.best_eval = record

    def snapshot_series(self) -> dict[str, dict[str, list]]:
        """``{name: Downsampler.to_dict()}`` for the protocol snapshot, names sorted."""
        return {name: self.series[name].to_dict() for name in sorted(self.series)}

    def eval_summary(self) -> dict[str, Optional[dict]]:
        """``{"last": eval record | None, "best": eval record | None}`` (the snapshot's ``eval``)."""
        return {"last": self.last_eval, "best": self.best_eval}


# ----------------------------------------------------------------------------- fast loading
_NUMERIC_FORMATS = {
    0xCA: ">f4", 0xCB: ">f8", 0xCC: ">u1", 0xCD: ">u2", 0xCE: ">u4", 0xCF: ">u8",
    0xD0: ">i1", 0xD1: ">i2", 0xD2: ">i4", 0xD3: ">i8",
}
_POSITIVE_FIXINT = "+fixint"  # value is the byte itself (0x00-0x7f)
_NEGATIVE_FIXINT = "-fixint"  # value is the byte minus 256 (0xe0-0xff)


@dataclass(eq=False)
class _Layout:
    """The byte layout of a flat train record: every byte is fixed except the numeric payloads.

    Consecutive train records usually share it (same keys, same value types, same int widths),
    so a run of them can be checked and decoded as rows of a 2-D uint8 array.
    """

    template: np.ndarray                     # the bytes of the record the layout was read from
    fixed: np.ndarray                        # bool per byte: must equal the template
    slots: dict[str, tuple[int, str]]        # numeric field -> (offset of its payload, format)
    prefix: bytes                            # the leading bytes that are all fixed: a cheap first test
    last_run: int = 0                        # rows matched last time: the size of the first check

    @property
    def length(self) -> int:
        return len(self.template)

    @classmethod
    def of(cls, record: dict, raw: bytes) -> Optional["_Layout"]:
        """The layout of ``record`` as encoded in ``raw``, or None if it has none (nested values,
        or bytes that are not msgpack-python's canonical encoding of the record)."""
        import numpy as np

        packer = msgpack.Packer(use_bin_type=True)
        header = packer.pack_map_header(len(record))
        parts, fixed = [header], bytearray(b"\x01" * len(header))
        slots: dict[str, tuple[int, str]] = {}
        for key, value in record.items():
            if not isinstance(value, (int, float, str, type(None))):
                return None
            key_bytes, value_bytes = packer.pack(key), packer.pack(value)
            parts += [key_bytes, value_bytes]
            fixed += b"\x01" * len(key_bytes)
            offset = len(fixed)
            if not _is_number(value):
                fixed += b"\x01" * len(value_bytes)  # strings, bools, null: part of the layout
            elif value_bytes[0] in _NUMERIC_FORMATS:
                slots[key] = (offset + 1, _NUMERIC_FORMATS[value_bytes[0]])
                fixed += b"\x01" + bytes(len(value_bytes) - 1)
            else:
                slots[key] = (offset, _POSITIVE_FIXINT if value_bytes[0] < 0x80 else _NEGATIVE_FIXINT)
                fixed += b"\x00"
        if b"".join(parts) != raw or "step" not in slots:
            return None
        first_variable = fixed.find(b"\x00")
        return cls(np.frombuffer(raw, dtype=np.uint8), np.frombuffer(bytes(fixed), dtype=bool), slots,
                   raw[:first_variable] if first_variable >= 0 else raw)

    def matching_rows(self, data: bytes, buf: np.ndarray, pos: int) -> int:
        """How many consecutive records from ``pos`` have this layout (checked in growing blocks).

        ``buf`` is ``data`` as a uint8 array.
        """
        import numpy as np

        if data[pos:pos + len(self.prefix)] != self.prefix:
            return 0
        positive = [offset for offset, fmt in self.slots.values() if fmt == _POSITIVE_FIXINT]
        negative = [offset for offset, fmt in self.slots.values() if fmt == _NEGATIVE_FIXINT]
        # Runs between two evals tend to have the same length: try that length (+1 to see the
        # record that ends it) first, then grow the block geometrically.
        count, block = 0, max(64, self.last_run + 1)
        while True:
            start = pos + count * self.length
            m = min(block, (len(buf) - start) // self.length)
            if m <= 0:
                break
            rows = buf[start:start + m * self.length].reshape(m, self.length)
            differs = rows != self.template
            differs &= self.fixed
            ok = ~differs.any(axis=1)
            if positive:
                ok &= (rows[:, positive] < 0x80).all(axis=1)
            if negative:
                ok &= (rows[:, negative] >= 0xE0).all(axis=1)
            bad = np.flatnonzero(~ok)
            if bad.size:
                count += int(bad[0])
                break
            count += m
            block = min(block * 2, 1 << 16)
        if count:
            self.last_run = count
        return count

    def column(self, buf: np.ndarray, pos: int, rows: int, key: str) -> np.ndarray:
        """The values of ``key`` in ``rows`` records of this layout starting at ``pos``."""
        import numpy as np

        offset, fmt = self.slots[key]
        if fmt in (_POSITIVE_FIXINT, _NEGATIVE_FIXINT):
            raw = buf[pos + offset:pos + rows * self.length:self.length].astype(np.int64)
            return raw - 256 if fmt == _NEGATIVE_FIXINT else raw
        strided = np.ndarray((rows,), dtype=fmt, buffer=buf, offset=pos + offset, strides=(self.length,))
        return strided.astype(np.int64 if key == "step" else np.float64)

    def series_keys(self) -> list[str]:
        """The numeric fields of this layout that are metric series."""
        return [key for key in self.slots if key not in META_KEYS and key != SMOOTH_KEY]


class _TrainColumns:
    """Train points gathered while loading: numpy chunks from layouts, lists from odd records."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.last_step: Optional[int] = None
        self._odd: dict[str, tuple[list[int], list[float]]] = {}

    def add_rows(self, steps: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self._flush_odd()
        keep = _increasing(steps, self.last_step)
        if keep is not None:
            steps = steps[keep]
            columns = {key: values[keep] for key, values in columns.items()}
        if len(steps):
            self.last_step = int(steps[-1])
        for key, values in columns.items():
            self.chunks.setdefault(key, []).append((steps, values))

    def add_record(self, record: dict) -> None:
        step = record["step"]
        if self.last_step is not None and step <= self.last_step:
            return
        self.last_step = step
        for key, value in record.items():
            if key not in META_KEYS and key != SMOOTH_KEY and _is_number(value):
                steps, values = self._odd.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))

    def _flush_odd(self) -> None:
        import numpy as np

        for key, (steps, values) in self._odd.items():
            self.chunks.setdefault(key, []).append((np.array(steps, dtype=np.int64), np.array(values)))
        self._odd = {}

    def arrays(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        import numpy as np

        self._flush_odd()
        for key, chunks in self.chunks.items():
            yield key, np.concatenate([s for s, _ in chunks]), np.concatenate([v for _, v in chunks])


def _decode_at(data: bytes, pos: int) -> tuple[Any, int] | None:
    """Decode the msgpack object at ``pos``; return it and its end, or None if it is cut short.

    Raises HistoryError for bytes that are not msgpack.
    """
    window = 4096
    while True:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data[pos:pos + window])
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            if pos + window >= len(data):
                return None
            window *= 8
            continue
        except Exception as exc:
            raise HistoryError(f"undecodable bytes at offset {pos}: {type(exc).__name__}: {exc}") from None
        return obj, pos + unpacker.tell()


def load_series(path: str | os.PathLike, monitor: Monitor = Monitor(), max_points: int = DEFAULT_MAX_POINTS, smoothing: float = DEFAULT_SMOOTHING) -> SeriesSet:
    """Build the :class:`SeriesSet` of a whole history file (as if every record were fed in order).

    Runs of train records with one byte layout are decoded as numpy columns; eval records and
    odd train records are decoded one by one. Stops at a torn or corrupt tail like
    :func:`read_history`; the set's ``valid_length`` is the byte length of the whole records.
    """
    result = SeriesSet(monitor, max_points, smoothing)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return result
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return result
        # A read-only map: no copy of a file that may be hundreds of MB.
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            train = _scan(data, result)
        finally:
            try:
                data.close()
            except BufferError:
                pass  # an exception's traceback still holds numpy views; unmapped when collected
    _build_train_series(result, train, max_points)
    return result


SERIES_CACHE = "series-cache.msgpack"
_SERIES_CACHE_VERSION = 2  # 2: the key holds min_delta


@dataclass
class SeriesSummary:
    """What a reader shows of a history file: the downsampled series (wire form, as in the
    protocol snapshot) and the last and best eval records."""

    series: dict[str, dict[str, list]]
    last_eval: Optional[dict]
    best_eval: Optional[dict]


def load_summary(path: str | os.PathLike, monitor: Monitor = Monitor(), max_points: int = DEFAULT_MAX_POINTS, smoothing: float = DEFAULT_SMOOTHING) -> SeriesSummary:
    """:func:`load_series` of ``path`` as a :class:`SeriesSummary`, through a cache file beside it.

    Downsampling a million-step history takes ~0.4 s; the cache (``series-cache.msgpack``, a few
    hundred KB) loads in milliseconds. It is used only while the history file has exactly the size
    and modification time it was built from, and for the same monitor and resolution; it is
    rebuilt otherwise. Writing it is best effort: a read-only run directory just goes uncached.
    """
    path = os.fspath(path)
    key = _summary_key(path, monitor, max_points, smoothing)
    if key is None:  # no history yet
        return SeriesSummary({}, None, None)
    cache = os.path.join(os.path.dirname(path), SERIES_CACHE)
    cached = _read_summary_cache(cache, key)
    if cached is not None:
        return cached
    built = load_series(path, monitor, max_points, smoothing)
    summary = SeriesSummary(built.snapshot_series(), built.last_eval, built.best_eval)
    if _summary_key(path, monitor, max_points, smoothing) == key:  # not appended meanwhile
        _write_summary_cache(cache, key, summary)
    return summary


def _summary_key(path: str, monitor: Monitor, max_points: int, smoothing: float) -> Optional[dict]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"version": _SERIES_CACHE_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "monitor": monitor.metric, "mode": monitor.mode, "min_delta": monitor.min_delta,
            "max_points": max_points, "smoothing": smoothing}


def _read_summary_cache(cache: str, key: dict) -> Optional[SeriesSummary]:
    """The cached summary if the cache is intact and was built for ``key``; None otherwise."""
    try:
        with open(cache, "rb") as f:
            data = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, msgpack.UnpackException):  # torn or foreign: rebuild it
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("series"), dict):
        return None
    return SeriesSummary(data["series"], data.get("last_eval"), data.get("best_eval"))


def _write_summary_cache(cache: str, key: dict, summary: SeriesSummary) -> None:
    tmp = f"{cache}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(msgpack.packb({"key": key, "series": summary.series, "last_eval": summary.last_eval,
                                   "best_eval": summary.best_eval}, use_bin_type=True))
        os.replace(tmp, cache)  # no fsync: a cache lost to a power cut is just rebuilt
    except (OSError, ValueError, TypeError):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _scan(data: mmap.mmap | bytes, result: SeriesSet) -> "_TrainColumns":
    """Walk the records of ``data``: train runs into columns, eval records into ``result``."""
    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8)
    train = _TrainColumns()
    layouts: list[_Layout] = []  # most recent first
    pos = 0
    while pos < len(data):
        rows, layout = 0, None
        for layout in layouts:
            rows = layout.matching_rows(data, buf, pos)
            if rows:
                break
        if rows:
            if layout is not layouts[0]:
                layouts.remove(layout)
                layouts.insert(0, layout)
            steps = layout.column(buf, pos, rows, "step")
            train.add_rows(steps, {key: layout.column(buf, pos, rows, key) for key in layout.series_keys()})
            pos += rows * layout.length
            continue
        try:
            decoded = _decode_at(data, pos)
        except HistoryError:
            break
        if decoded is None or not _is_record(decoded[0]):
            break
        record, end = decoded
        if record["kind"] == TRAIN:
            new_layout = _Layout.of(record, data[pos:end])
            if new_layout is not None and new_layout.matching_rows(data, buf, pos):
                layouts = [new_layout] + layouts[:7]
                continue  # the run starting here is read by the layout loop above
            train.add_record(record)
        elif record["kind"] == EVAL:
            result.feed(record)
        pos = end
    result.valid_length = pos
    del buf
    return train


def _build_train_series(result: SeriesSet, train: "_TrainColumns", max_points: int) -> None:
    """Turn the gathered train columns into Downsamplers, and train_loss into its EMA series."""
    import numpy as np

    for key, steps, values in train.arrays():
        result.series[key] = Downsampler.from_arrays(steps, values, max_points)
        if key == "train_loss":
            finite = np.isfinite(values)
            losses, loss_steps = values[finite], steps[finite]
            if len(losses):
                smooth = ema(losses, result.smoother.beta, start=float(losses[0]))
                result.series[SMOOTH_KEY] = Downsampler.from_arrays(loss_steps, smooth, max_points)
                result.smoother.value = float(smooth[-1])
    if train.last_step is not None:
        result.last_step[TRAIN] = train.last_step


# ----------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    """What an export read: the rows written and, for a torn or corrupt tail, where it stopped."""

    rows: int = 0
    torn: bool = False
    valid_length: int = 0
    problem: Optional[str] = None


EXPORT_LEADING = ("step", "epoch", "phase", "time", "kind")
"""First columns of every export, in this order (``kind`` last of them, so the columns that came
before it keep their places); then the train metrics, then the ``val_*`` eval metrics, each
group in the order the history first shows them."""


def export_rows(path: str | os.PathLike, report: Optional[ExportReport] = None) -> Iterator[dict]:
    """One row per train or eval record of the history, in file order, for ``longhaul export``.

    Each row starts with step, epoch, phase, time and ``kind`` ("train" or "eval"), then the
    record's scalar fields: train metrics as named (train_loss, lr, ...), eval metrics in the
    ``val_`` namespace (see :func:`eval_series_name`). An evaluation is its own row, never merged
    into the train row of the same step. Lists and maps (per_class, confusion) are left out.
    """
    reader = read_history(path)
    for record in reader:
        kind = record["kind"]
        if kind not in (TRAIN, EVAL):
            continue
        row = {key: record[key] for key in EXPORT_LEADING if key in record}
        for key, value in record.items():
            if key in META_KEYS or isinstance(value, (list, dict, bytes)):
                continue
            row[key if kind == TRAIN else eval_series_name(key)] = value
        yield row
    if report is not None:  # a torn tail ends the rows early: the caller must say so
        report.torn, report.valid_length, report.problem = reader.torn, reader.valid_length, reader.problem


def write_export(path: str | os.PathLike, out: IO[str], fmt: str, report: Optional[ExportReport] = None) -> int:
    """Write :func:`export_rows` to ``out`` as ``jsonl`` or ``csv``; return the number of rows.

    jsonl writes NaN/inf as null (strict JSON). csv needs every column name before the first
    row, so it reads the history twice; its header is ``EXPORT_LEADING``, then the train
    columns, then the ``val_*`` columns; cells a row lacks are empty (an eval row has no
    train_loss, a train row no val_loss). ``report`` (if given) gets
    the row count and whether the file ended in a torn record.
    """
    count = _write_export(path, out, fmt, report)
    if report is not None:
        report.rows = count
    return count


def _write_export(path: str | os.PathLike, out: IO[str], fmt: str, report: Optional[ExportReport]) -> int:
    if fmt == "jsonl":
        count = 0
        for row in export_rows(path, report):
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            out.write(json.dumps(clean) + "\n")
            count += 1
        return count
    if fmt == "csv":
        train: dict[str, None] = {}
        evals: dict[str, None] = {}
        for row in export_rows(path):
            (train if row["kind"] == TRAIN else evals).update(dict.fromkeys(row))
        columns = dict.fromkeys(EXPORT_LEADING) | train | evals
        writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
        writer.writeheader()
        count = 0
        for row in export_rows(path, report):
            writer.writerow(row)
            count += 1
        return count
    raise ValueError(f"export format must be 'jsonl' or 'csv', got {fmt!r}")
