"""The byte layout of a flat train record, to check and decode runs of them as numpy rows.

msgpack-python encodes records with the same keys and value types the same way up to the numeric
payloads; :class:`Layout` finds those payloads once and reads a run of records as columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import msgpack

from trainer.history.records import is_number
from trainer.history.series import is_train_series

if TYPE_CHECKING:
    import numpy as np

_NUMERIC_FORMATS = {
    0xCA: ">f4", 0xCB: ">f8", 0xCC: ">u1", 0xCD: ">u2", 0xCE: ">u4", 0xCF: ">u8",
    0xD0: ">i1", 0xD1: ">i2", 0xD2: ">i4", 0xD3: ">i8",
}
_POSITIVE_FIXINT = "+fixint"  # value is the byte itself (0x00-0x7f)
_NEGATIVE_FIXINT = "-fixint"  # value is the byte minus 256 (0xe0-0xff)


@dataclass(eq=False)
class Layout:
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
    def of(cls, record: dict, raw: bytes) -> Optional["Layout"]:
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
            if not is_number(value):
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
        return [key for key in self.slots if is_train_series(key)]
