"""check-data through the store's index: decode only the files that are new or changed.

    with IndexedCheck.open(cfg, classes) as check:      # STORE/index.sqlite, created on first use
        kept, _, stats = check(split, items, decoder, problems)

For each scanned item the index is asked about this version of its file (path, size, mtime_ns);
a known file's outcome (ok with its duration / rate / size, or bad with the reason) comes from
there, any other file is decoded (no features) and its outcome recorded. So a second check of
unchanged data decodes nothing, and `longhaul prepare` (which records what its workers found under
the same keys, store.plan.item_key) leaves nothing for check-data to decode either.
"""
from __future__ import annotations

from typing import Optional

from .decode import BadItem, Decoded, Decoder, Item, SyntheticExample
from .index import DataIndex, FileRecord
from .report import DECODING, Problem, SplitStats
from .store.layout import ItemKey, StorePaths, StoreError
from .store.plan import item_key, store_dir

# Records written per transaction: a check killed half-way keeps all but the last few outcomes,
# and the WAL never holds more than a moment's work.
RECORD_BATCH = 256


def file_record(key: ItemKey, split: str, label: str, decoded: Optional[Decoded] = None,
                problem: Optional[str] = None) -> FileRecord:
    """The index record of one decode: `decoded` when it worked, else the `problem`."""
    if decoded is None:
        return FileRecord(key.path, key.size, key.mtime_ns, split, label, "bad", problem)
    width, height = decoded.size if decoded.size is not None else (None, None)
    return FileRecord(key.path, key.size, key.mtime_ns, split, label, "ok", None,
                      decoded.duration, decoded.rate, width, height)


class IndexedCheck:
    """The decode pass of check-data (datasets._examine's `check_split`), answered from the index."""

    def __init__(self, index: DataIndex, classes: list[str]):
        self.index = index
        self.classes = classes
        self.known = 0
        self.decoded = 0
        self._pending: list[FileRecord] = []

    @classmethod
    def open(cls, cfg, classes: list[str]) -> "IndexedCheck":
        """The check of `cfg`'s store (data.store); the store's folder is made if it is missing."""
        paths = StorePaths(store_dir(cfg))
        try:
            paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{paths.root}: cannot create the feature store folder: "
                             f"{exc.strerror or exc}") from None
        return cls(DataIndex(paths.index), classes)

    def __enter__(self) -> "IndexedCheck":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._flush()
        finally:
            self.index.close()

    def describe(self) -> str:
        return (f"{self.index.path}: {self.known} file(s) known and unchanged, "
                f"{self.decoded} decoded and recorded")

    def __call__(self, split: str, items: list[Item], decoder: Decoder,
                 problems: list[Problem]) -> tuple[list[Item], None, SplitStats]:
        """(usable items, no features, statistics) of one split; bad items become problems."""
        kept: list[Item] = []
        stats = SplitStats()
        for item in items:
            DECODING.step()
            record = self._outcome(split, item, decoder)
            if not record.ok:
                problems.append(item.problem(record.problem or "bad file"))
                continue
            kept.append(item)
            size = (record.width, record.height) if record.width is not None else None
            stats.count(item.name, record.duration, record.sample_rate, size,
                        decoder.sample_rate, decoder.n_samples)
        self._flush()
        return kept, None, stats

    def _outcome(self, split: str, item: Item, decoder: Decoder) -> FileRecord:
        """The item's record: from the index when its file is unchanged, else from a decode
        (recorded, unless the item has no file to key it by)."""
        key = None if isinstance(item, SyntheticExample) else item_key(item)
        if key is not None and key.size < 0:  # its file is gone: the decode says so, nothing to record
            key = None
        if key is not None:
            known = self.index.lookup(key.path, key.size, key.mtime_ns)
            if known is not None:
                self.known += 1
                return known
        self.decoded += 1
        try:
            decoded, problem = item.load(decoder), None
        except BadItem as exc:
            decoded, problem = None, str(exc)
        record = file_record(key or ItemKey(item.where, 0, 0), split, self.classes[item.label], decoded, problem)
        if key is not None:
            self._remember(record)
        return record

    def _remember(self, record: FileRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= RECORD_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.index.record(self._pending)
            self._pending = []
