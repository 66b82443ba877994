"""Reading a complete feature store: `FeatureStore.open(store_dir)` and its splits.

    store = FeatureStore.open(store_dir)     # StoreError when missing or damaged
    sp = store.split("train")
    sp.rows(item, variant, start, count)     # (count, row_size) in the stored dtype, a copy
    sp.raw(item, variant, start, count)      # the same as raw features: (C, F, count) / (1, count) / (C, H, W)

Shard files are read with os.pread through a small LRU of open descriptors, never memory-mapped:
the pages of a mapped file count in the process's RSS and would grow with the data set (the page
cache still keeps them, outside RSS). pread has no file position, so a forked child (a DataLoader
worker) reads through the descriptors it inherited. numpy + stdlib only: no torch.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from .layout import (ENTRIES_DTYPE, PREPARE_HINT, ShardHeader, StoreError, StorePaths, from_rows, read_manifest,
                     read_names, read_shard_header)

OPEN_SHARDS = 64  # open shard descriptors kept at most


class ShardFiles:
    """Open shard files of one store: at most `capacity` descriptors, least recently used closed first."""

    def __init__(self, paths: StorePaths, dtype: np.dtype, row_size: int, capacity: int = OPEN_SHARDS):
        self.paths, self.dtype, self.row_size, self.capacity = paths, np.dtype(dtype), row_size, capacity
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._headers: dict[str, ShardHeader] = {}
        self._lock, self._pid = threading.Lock(), os.getpid()

    def __reduce__(self):  # a copy in another process opens its own descriptors
        return (ShardFiles, (self.paths, self.dtype, self.row_size, self.capacity))

    @property
    def open_count(self) -> int:
        return len(self._fds)

    def read(self, key: str, first_row: int, count: int) -> np.ndarray:
        """Rows [first_row, first_row + count) of shard `key` as a new (count, row_size) array."""
        if self._pid != os.getpid():  # forked: a lock another thread held at fork is never released
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            fd, header = self._open(key)
            if first_row < 0 or first_row + count > header.rows:
                raise StoreError(f"{self.paths.shard_npy(key)}: rows {first_row}..{first_row + count} asked, "
                                 f"the shard has {header.rows}; {PREPARE_HINT}")
            size = count * header.row_bytes
            buf = bytearray(size)
            view, done = memoryview(buf), 0
            while done < size:
                got = os.preadv(fd, [view[done:]], header.offset + first_row * header.row_bytes + done)
                if got == 0:
                    raise StoreError(f"{self.paths.shard_npy(key)}: the shard ended early; {PREPARE_HINT}")
                done += got
        return np.frombuffer(buf, dtype=header.dtype).reshape(count, header.row_size)

    def _open(self, key: str) -> tuple[int, ShardHeader]:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd, self._headers[key]
        path = self.paths.shard_npy(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise StoreError(f"{path}: a shard of the feature store is missing; {PREPARE_HINT}") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot open a shard of the feature store: {exc.strerror}") from exc
        try:
            header = self._headers.get(key) or self._parse(path, fd)
        except BaseException:
            os.close(fd)
            raise
        self._headers[key] = header
        self._fds[key] = fd
        while len(self._fds) > self.capacity:
            os.close(self._fds.popitem(last=False)[1])
        return fd, header

    def _parse(self, path: Path, fd: int) -> ShardHeader:
        header = read_shard_header(path, fd)
        if header.rows and (header.dtype != self.dtype or header.row_size != self.row_size):
            raise StoreError(f"{path}: the shard holds rows of {header.row_size} {header.dtype}, the manifest "
                             f"says {self.row_size} {self.dtype}; {PREPARE_HINT}")
        return header

    def close(self) -> None:
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])


class FeatureStore:
    """A complete store, opened read-only: its manifest and its splits."""

    def __init__(self, paths: StorePaths, manifest: dict):
        self.paths = paths
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.recipe: dict = manifest["recipe"]
        self.classes: list[str] = list(manifest["classes"])
        self.kind: str = manifest["kind"]
        self.row_shape: tuple[int, ...] = tuple(int(s) for s in manifest["row_shape"])
        self.dtype = np.dtype(manifest["dtype"])
        self.files = ShardFiles(paths, self.dtype, int(np.prod(self.row_shape)))
        self._splits: dict[str, StoreSplit] = {}

    def __reduce__(self):  # the same store (this manifest) in a spawned process, without open files
        return (FeatureStore, (self.paths, self.manifest))

    @classmethod
    def open(cls, store_dir: str | os.PathLike) -> "FeatureStore":
        paths = StorePaths(store_dir)
        return cls(paths, read_manifest(paths))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.paths.root)!r}, fingerprint={self.fingerprint[:12]})"

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def has_split(self, name: str) -> bool:
        return name in self.manifest["splits"]

    def split(self, name: str) -> "StoreSplit":
        if name not in self.manifest["splits"]:
            raise StoreError(f"{self.paths.root}: the feature store has no {name!r} split "
                             f"(it has {', '.join(self.manifest['splits']) or 'none'})")
        if name not in self._splits:
            self._splits[name] = StoreSplit(self, name)
        return self._splits[name]

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreSplit:
    """One split of a store: its items (recordings or images) and each item's stored variants."""

    def __init__(self, store: FeatureStore, name: str):
        entry = store.manifest["splits"][name]
        self.store, self.name = store, name
        self.variants = int(entry["variants"])
        self.shards: list[str] = list(entry["shards"])
        self._items = int(entry["items"])
        self._names_path = store.paths.resolve(entry["names"])
        self._entries = self._load_entries(store.paths.resolve(entry["entries"]))
        self.labels = np.ascontiguousarray(self._entries["label"][:: self.variants + 1], dtype=np.int32)

    def _load_entries(self, path: Path) -> np.ndarray:
        try:
            entries = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"{path}: the entries of split {self.name!r} are missing; {PREPARE_HINT}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise StoreError(f"{path}: the entries of split {self.name!r} are damaged ({exc}); {PREPARE_HINT}") from None
        expected = self._items * (self.variants + 1)
        if entries.dtype != ENTRIES_DTYPE or entries.shape != (expected,):
            raise StoreError(f"{path}: {entries.shape} entries of {entries.dtype}, the manifest says "
                             f"{expected} ({self._items} items x {self.variants + 1}); {PREPARE_HINT}")
        if expected and (entries["shard"].min() < 0 or entries["shard"].max() >= len(self.shards)):
            raise StoreError(f"{path}: an entry points at a shard the manifest does not list; {PREPARE_HINT}")
        return entries

    def __reduce__(self):
        return (_split_of, (self.store, self.name))

    def __len__(self) -> int:
        return self._items

    def __repr__(self) -> str:
        return f"StoreSplit({self.name!r}, items={self._items}, variants={self.variants})"

    def names(self) -> list[str]:
        """The source name (path) of each item, read from disk each call (training never keeps them)."""
        names = read_names(self._names_path)
        if len(names) != self._items:
            raise StoreError(f"{self._names_path}: {len(names)} names for {self._items} items; {PREPARE_HINT}")
        return names

    def _entry(self, item: int, variant: int) -> np.void:
        if not 0 <= item < self._items:
            raise IndexError(f"item {item} out of range: split {self.name!r} has {self._items}")
        if not 0 <= variant <= self.variants:
            raise IndexError(f"variant {variant} out of range: split {self.name!r} has 0..{self.variants}")
        return self._entries[item * (self.variants + 1) + variant]

    def length(self, item: int, variant: int = 0) -> int:
        """Rows of that entry (frames, samples, or 1 for an image)."""
        return int(self._entry(item, variant)["rows"])

    def rows(self, item: int, variant: int = 0, start: int = 0, count: Optional[int] = None) -> np.ndarray:
        """Rows [start, start + count) of an entry (count None: to its end), (count, row_size), a copy."""
        entry = self._entry(item, variant)
        length = int(entry["rows"])
        count = length - start if count is None else count
        if start < 0 or count < 0 or start + count > length:
            raise IndexError(f"rows {start}..{start + count} of item {item} variant {variant}: it has {length}")
        return self.store.files.read(self.shards[int(entry["shard"])], int(entry["row"]) + start, count)

    def raw(self, item: int, variant: int = 0, start: int = 0, count: Optional[int] = None) -> np.ndarray:
        """rows() as raw features: (C, F, count) spectra, (1, count) waveforms, (C, H, W) images."""
        return from_rows(self.rows(item, variant, start, count), self.store.kind, self.store.row_shape)


def _split_of(store: FeatureStore, name: str) -> StoreSplit:
    return store.split(name)
