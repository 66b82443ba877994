"""load_series: the SeriesSet of a whole history file, fast.

Runs of train records with one byte layout (:class:`~trainer.history.layout.Layout`) are read as
numpy columns instead of decoding each map in Python; eval records and odd train records are
decoded one by one. numpy is imported inside: this is a bulk path.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any, Iterator, Optional

import msgpack

from trainer.history.downsample import DEFAULT_MAX_POINTS, Downsampler, increasing
from trainer.history.layout import Layout
from trainer.history.records import EVAL, TRAIN, HistoryError, is_number, is_record
from trainer.history.series import SMOOTH_KEY, SeriesSet, is_train_series
from trainer.history.smoothing import DEFAULT_SMOOTHING, ema
from trainer.monitor import Monitor

if TYPE_CHECKING:
    import numpy as np


class _TrainColumns:
    """Train points gathered while loading: numpy chunks from layouts, lists from odd records."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.last_step: Optional[int] = None
        self._odd: dict[str, tuple[list[int], list[float]]] = {}

    def add_rows(self, steps: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        self._flush_odd()
        keep = increasing(steps, self.last_step)
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
            if is_train_series(key) and is_number(value):
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


def _scan(data: mmap.mmap | bytes, result: SeriesSet) -> "_TrainColumns":
    """Walk the records of ``data``: train runs into columns, eval records into ``result``."""
    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8)
    train = _TrainColumns()
    layouts: list[Layout] = []  # most recent first
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
        if decoded is None or not is_record(decoded[0]):
            break
        record, end = decoded
        if record["kind"] == TRAIN:
            new_layout = Layout.of(record, data[pos:end])
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
