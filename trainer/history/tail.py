"""The newest records of a history file, read from its end: what `longhaul ls` and the picker
show of a run's speed without reading a history that may be hundreds of MB.

The file is a bare concatenation of msgpack maps, so its end holds no index: a record's start
is found by its first key (every writer puts ``kind`` first), and a guess is kept only when
everything from it to the end decodes as whole records.
"""

from __future__ import annotations

import os
from typing import Optional

import msgpack

from trainer.history.records import TRAIN, is_number, is_record

_KIND_KEY = msgpack.packb("kind")
_FIRST_WINDOW = 16 << 10
_LAST_WINDOW = 1 << 20  # an eval record with a large confusion matrix can be this long


def tail_records(path: str | os.PathLike, window: int = _FIRST_WINDOW) -> list[dict]:
    """The whole records in the last `window` bytes of the history (more when one record is
    longer than that); [] when there is no file or nothing at its end decodes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while True:
                start = max(0, size - window)
                f.seek(start)
                records = _records_from(f.read(size - start), whole_file=start == 0)
                if records or start == 0 or window >= _LAST_WINDOW:
                    return records
                window *= 4
    except OSError:
        return []


def _records_from(data: bytes, whole_file: bool) -> list[dict]:
    for start in ([0] if whole_file else _record_starts(data)):
        records = _decode_all(data[start:])
        if records:
            return records
    return []


def _record_starts(data: bytes):
    """Offsets where a map whose first key is `kind` may begin, earliest first."""
    at = data.find(_KIND_KEY)
    while at >= 0:
        if at >= 1 and 0x80 <= data[at - 1] <= 0x8F:  # fixmap header
            yield at - 1
        elif at >= 3 and data[at - 3] == 0xDE:  # map 16 header
            yield at - 3
        at = data.find(_KIND_KEY, at + 1)


def _decode_all(data: bytes) -> list[dict]:
    """Every record of `data` when it is whole records up to the end (a torn last one is
    dropped, as readers of the file do); [] when anything else is in it."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    records = []
    try:
        for obj in unpacker:
            if not is_record(obj):
                return []
            records.append(obj)
    except Exception:  # not msgpack from here: the guessed start was inside a record
        return []
    return records


def recent_rate(path: str | os.PathLike, records: int = 20) -> Optional[float]:
    """samples/s over the newest `records` logged train steps: their samples divided by their
    time (a slow step weighs by how long it took, as on the console's progress line); None
    without any."""
    rates = [r["samples_per_s"] for r in tail_records(path)
             if r["kind"] == TRAIN and is_number(r.get("samples_per_s")) and r["samples_per_s"] > 0]
    rates = rates[-records:]
    if not rates:
        return None
    return len(rates) / sum(1.0 / rate for rate in rates)
