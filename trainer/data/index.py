"""`DataIndex`: the SQLite index of a dataset's files (STORE/index.sqlite).

One row per source file: which version of it was seen (size, mtime_ns), its split and class, and
what decoding it found: ok with its duration / sample rate or image size, or bad with the reason.
A later check or prepare looks a file up by (path, size, mtime_ns) and decodes it again only when
it is new or changed, so a second `check-data` on unchanged data decodes nothing.

It is only an index: deleting it costs one decode pass, never data. So a damaged or foreign
database file is reported with its path and the advice to delete it, and an index written by
another schema version is rebuilt empty rather than migrated.

WAL journal: one process (prepare, check-data) writes while others read. synchronous=NORMAL: a
power cut may lose the last transactions (the files are then decoded again), never corrupt the
database. No torch (stdlib and the store's layout): prepare's main process and the CLI use it.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .store.layout import StoreError

SCHEMA_VERSION = 2  # 2: paths as file-system bytes
# A writer in another process holds the database for at most one transaction (one batch of
# records): waiting this long for it is waiting, anything longer is a stuck process.
BUSY_TIMEOUT_S = 60.0
STATUSES = ("ok", "bad")


class DataIndexError(StoreError):
    """The index database cannot be opened, read or written; the message names the file. A
    StoreError: the index is one of the store's files (StorePaths.index)."""


@dataclass(frozen=True)
class FileRecord:
    """What is known about one version (size, mtime_ns) of one source file."""

    path: str
    size: int
    mtime_ns: int
    split: str
    label: str
    """Class name (not index: the class list may change between scans)."""
    status: str
    """"ok" or "bad"."""
    problem: Optional[str] = None
    """Why the file is bad (None when ok)."""
    duration: Optional[float] = None
    """Audio: seconds before padding/trimming."""
    sample_rate: Optional[int] = None
    """Audio: the file's own rate."""
    width: Optional[int] = None
    height: Optional[int] = None
    """Images: the file's own size."""
    checked: Optional[float] = None
    """Unix time of the decode that found this (record() fills it in when None)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_COLUMNS = tuple(f.name for f in fields(FileRecord))
_as_row = attrgetter(*_COLUMNS)  # dataclasses.astuple deep-copies: 10x slower on a million records
# Paths are stored as the file system's bytes: a name that is not UTF-8 (surrogate-escaped in
# Python) round-trips exactly, where a TEXT column would refuse it. Other text is made valid.
_path_key = os.fsencode


def _text(value: Optional[str]) -> Optional[str]:
    return value if value is None else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _from_row(row: tuple) -> FileRecord:
    return FileRecord(os.fsdecode(row[0]), *row[1:])
_CREATE_FILES = f"""CREATE TABLE files (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    split TEXT NOT NULL, label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}), problem TEXT,
    duration REAL, sample_rate INTEGER, width INTEGER, height INTEGER, checked REAL NOT NULL
) WITHOUT ROWID"""
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM files"
# A row that says what the table already says is left alone (no page written, `checked` kept):
# prepare records the outcomes of every shard it reuses, most of them known already.
_SAME = " AND ".join(f"files.{c} IS excluded.{c}" for c in _COLUMNS if c not in ("path", "checked"))
_UPSERT = (f"INSERT INTO files ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT (path) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])} "
           f"WHERE NOT ({_SAME})")


class DataIndex:
    """The index at `path` (created on first use; its folder must exist).

    One connection per process: open a DataIndex after fork/spawn, never share one across.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise DataIndexError(f"{self.path}: cannot create the data index: folder "
                                 f"{self.path.parent} does not exist")
        self._db: Optional[sqlite3.Connection] = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        with self._guard("open"):
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below, not the
            # sqlite3 module's implicit ones.
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if not self._schema_current():  # only then the write lock: a reader never waits on a writer
                with self._transaction():
                    self._prepare_schema()

    def _schema_current(self) -> bool:
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return False
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return row is not None and row[0] == str(SCHEMA_VERSION)

    def _prepare_schema(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        if self._schema_current():  # another process made it while this one waited for the lock
            return
        # Another version's rows may mean other things: the index starts over (a re-check).
        db.execute("DROP TABLE IF EXISTS files")
        db.execute(_CREATE_FILES)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    # ------------------------------------------------------------------------- reading
    def lookup(self, path: str, size: int, mtime_ns: int) -> Optional[FileRecord]:
        """The record of this version of `path`; None when absent or the file changed since."""
        with self._guard("read"):
            row = self._connection().execute(_SELECT + " WHERE path = ?", (_path_key(str(path)),)).fetchone()
        if row is None or row[1] != size or row[2] != mtime_ns:
            return None
        return _from_row(row)

    def records(self) -> Iterator[FileRecord]:
        """Every record, by path (read in one snapshot: a concurrent writer is not seen)."""
        with self._guard("read"):
            cursor = self._connection().execute(_SELECT + " ORDER BY path")
            while True:
                rows = cursor.fetchmany(1024)
                if not rows:
                    return
                for row in rows:
                    yield _from_row(row)

    def __len__(self) -> int:
        with self._guard("read"):
            return self._connection().execute("SELECT COUNT(*) FROM files").fetchone()[0]

    # ------------------------------------------------------------------------- writing
    def record(self, records: Iterable[FileRecord]) -> int:
        """Add or replace the records of these files, all in one transaction; returns how many.
        A record equal to the stored one (but for `checked`) changes nothing."""
        now = time.time()
        rows = []
        for rec in records:
            if rec.status not in STATUSES:
                raise ValueError(f"{rec.path}: status must be one of {STATUSES}, got {rec.status!r}")
            path, size, mtime_ns, split, label, status, problem, *measures, checked = _as_row(rec)
            rows.append((_path_key(str(path)), size, mtime_ns, _text(split), _text(label), status, _text(problem),
                         *measures, now if checked is None else checked))
        with self._guard("write"), self._transaction():
            self._connection().executemany(_UPSERT, rows)
        return len(rows)

    def forget(self, paths: Iterable[str]) -> None:
        """Remove the records of these paths (files gone from the data)."""
        with self._guard("write"), self._transaction():
            self._connection().executemany("DELETE FROM files WHERE path = ?", ((_path_key(str(p)),) for p in paths))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "DataIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------- plumbing
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise DataIndexError(f"{self.path}: the data index is closed")
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock at the start, so two writers queue (busy timeout)
        # instead of one failing at its first write.
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """sqlite3 errors -> DataIndexError naming the file and what to do about it."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise DataIndexError(self._explain(doing, exc)) from None

    def _explain(self, doing: str, exc: sqlite3.DatabaseError) -> str:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return (f"{self.path}: the data index stayed locked by another process for "
                    f"{BUSY_TIMEOUT_S:g} s ({text})")
        if isinstance(exc, sqlite3.OperationalError) and ("unable to open" in text or "readonly" in text
                                                          or "disk I/O" in text or "full" in text):
            return f"{self.path}: cannot {doing} the data index: {text}"
        return (f"{self.path}: the data index is damaged ({text}); it only lists what is known about "
                f"the data files, so it can be deleted (with {self.path.name}-wal and "
                f"{self.path.name}-shm): the next check decodes the files again")
