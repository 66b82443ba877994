"""The feature store's on-disk format: every file named once, the recipe, shards, rows, durable writes.

    STORE/index.sqlite                      the dataset's index (trainer.data.index)
    STORE/prepare.lock                      held by the one prepare at work
    STORE/manifest.json                     written last; a store without it is not usable
    STORE/shards/<key>.json, <key>.npy      one shard: its items' outcomes, then its rows
    STORE/splits/<fp16>-<split>.npy|.names  a split's entries and its items' names

A shard is complete iff its .npy exists: the .json is written (temp, fsync, rename) before it.
Temp files (".<name>.tmp-<pid>") are never read. Every example is a 2-D block of rows so that a
window of a long recording is one contiguous read. numpy + stdlib only: no torch.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from trainer.run.rundir import fsync_dir

from .changes import describe_change, recipe_changes, summary  # noqa: F401  (re-exported: a store's identity in a run)

FORMAT = 1
SHARD_TARGET = 256  # a shard ends after an item whose path hashes to 0 modulo its target: ~256 items
SHARD_MAX = 1024  # ... or after 4 times its target
# Big items (512 px images, long recordings with variants) get smaller shards: a prepare worker
# holds one shard's rows before writing it, so its memory stays near this whatever the items.
SHARD_BYTES = 64 * 2 ** 20
SHARD_MIN_TARGET = 8
ENTRIES_DTYPE = np.dtype([("label", "<i4"), ("shard", "<i4"), ("row", "<i8"), ("rows", "<i4")])
entries_dtype = ENTRIES_DTYPE
SPECTRAL = ("mel", "mfcc")
ROW_KINDS = ("mel", "waveform", "image")
PREPARE_HINT = "run `longhaul prepare CONFIG` to rebuild it"
NOISE_SUFFIXES = (".wav", ".flac", ".ogg")


class StoreError(Exception):
    """The feature store is missing, damaged, or cannot be written; the message says which file."""

    retry_may_help = False
    """True for a failure of the moment (a prepare worker killed, a full disk): a daemon's run is
    restarted as after a crash. False: the config, the data or the store must change first."""


class StoreDiskFull(StoreError):
    """The store's disk is full: once space is freed, a prepare goes on from the finished shards."""

    retry_may_help = True


# ----------------------------------------------------------------------------- file names
class StorePaths:
    """Every file of a store directory, named once."""

    def __init__(self, store_dir: str | os.PathLike):
        self.root = Path(store_dir)
        self.index = self.root / "index.sqlite"
        self.lock = self.root / "prepare.lock"
        self.readers = self.root / "readers.lock"
        self.manifest = self.root / "manifest.json"
        self.shards = self.root / "shards"
        self.splits = self.root / "splits"

    def __repr__(self) -> str:
        return f"StorePaths({str(self.root)!r})"

    def shard_npy(self, key: str) -> Path:
        return self.shards / f"{key}.npy"

    def shard_json(self, key: str) -> Path:
        return self.shards / f"{key}.json"

    def entries(self, fingerprint: str, split: str) -> Path:
        return self.splits / f"{fingerprint[:16]}-{split}.npy"

    def names(self, fingerprint: str, split: str) -> Path:
        return self.splits / f"{fingerprint[:16]}-{split}.names"

    def relative(self, path: Path) -> str:
        """A store file as the manifest names it (relative to the store, '/'-separated)."""
        return Path(path).relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        return self.root / relative

    @staticmethod
    def temp(path: Path) -> Path:
        """The temp name `path` is written under before its rename (same directory)."""
        return path.with_name(f".{path.name}.tmp-{os.getpid()}")

    @staticmethod
    def is_temp(path: Path) -> bool:
        return path.name.startswith(".") and ".tmp-" in path.name

    def make_dirs(self) -> None:
        """The store's directories (and the store itself), created durably."""
        for folder in (self.root, self.shards, self.splits):
            try:
                existed = folder.is_dir()
                folder.mkdir(parents=True, exist_ok=True)
                if not existed:
                    fsync_dir(folder.parent)
            except OSError as exc:
                raise _write_error(folder, exc) from exc


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class ItemKey:
    """One version of one source item. `path` names it (a file path; for an example inside a
    JSON file, "<json path>#<index>"; for a synthetic example its name), size and mtime_ns are its
    file's (0 for synthetic examples)."""

    path: str
    size: int
    mtime_ns: int


def row_kind(features_kind: str) -> str:
    """What the store holds for a features.kind: mel and mfcc both store the log-mel."""
    return "mel" if features_kind in SPECTRAL else features_kind


def recipe(cfg) -> dict:
    """Everything that decides the stored rows, keyed by config key (JSON-able). Not normalize,
    augment, model or seed: changing those reuses the store."""
    data, feats = cfg.data, cfg.features
    out: dict[str, Any] = {"format": FORMAT, "data.source": data.source, "features.kind": row_kind(feats.kind)}
    if data.source == "synthetic":
        out.update({f"data.synthetic.{k}": getattr(data.synthetic, k) for k in ("classes", "seed", "snr_db")})
    if feats.kind == "image":
        out.update({"data.image_size": data.image_size, "data.image_channels": data.image_channels,
                    "data.store_dtype": "uint8"})
        return out
    if data.sample_rate == "auto" or data.duration == "auto":
        raise StoreError("the store's recipe needs a concrete data.sample_rate and data.duration "
                         "(resolve 'auto' first)")
    out.update({"data.sample_rate": int(data.sample_rate), "data.duration": float(data.duration),
                "data.store_dtype": data.store_dtype, "data.windows.enabled": data.windows.enabled})
    if feats.kind in SPECTRAL:
        out.update({f"features.{k}": getattr(feats, k) for k in ("n_fft", "hop_length", "n_mels", "f_min",
                                                                   "f_max", "top_db")})
    if data.windows.enabled:
        out["data.windows.max_seconds"] = data.windows.max_seconds
    out.update(_variants_recipe(cfg))
    return out


def _variants_recipe(cfg) -> dict:
    variants = cfg.data.variants
    out: dict[str, Any] = {"data.variants.count": variants.count}
    if variants.count == 0:
        return out
    for name in ("pitch_semitones", "time_stretch", "gain_db", "seed"):
        out[f"data.variants.{name}"] = getattr(variants, name)
    noise = cfg.resolve_path(variants.noise_dir) if variants.noise_dir else None
    out["data.variants.noise_files"] = noise_files_fingerprint(noise) if noise else None
    if noise:
        out["data.variants.noise_snr_db"] = list(variants.noise_snr_db)
    return out


def noise_files_fingerprint(folder: Path) -> str:
    """A digest of the noise folder's audio files (noise_listing): only the files the variants
    use, so a stray notes.txt or .DS_Store does not make every variant stale."""
    if not Path(folder).is_dir():
        raise StoreError(f"{folder}: data.variants.noise_dir is not a folder")
    return _digest([list(entry) for entry in noise_listing(Path(folder))])


def noise_files(folder: Path) -> list[Path]:
    """The noise folder's audio files (wav/flac/ogg, any case), recursively, sorted by relative
    path: the files variants.NoiseBank mixes in, and the ones the recipe fingerprints."""
    found = [p for p in folder.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def noise_listing(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of each noise file: a changed noise folder makes the
    variants stale (recipe) and gets a new bank (variants.NoiseBank)."""
    out = []
    for path in noise_files(folder):
        st = path.stat()
        out.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def recipe_id(recipe_dict: dict) -> str:
    return _digest(recipe_dict)[:32]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- shards
def shard_target(recipe_dict: dict, variants: int) -> int:
    """Items per shard on average for a recipe: SHARD_TARGET, fewer when an item's rows (all its
    variants) are big, so that a shard holds about SHARD_BYTES at most."""
    return max(SHARD_MIN_TARGET, min(SHARD_TARGET, SHARD_BYTES // max(1, item_bytes(recipe_dict) * (1 + variants))))


def item_bytes(recipe_dict: dict) -> int:
    """Bytes of one stored example (a whole recording of data.windows.max_seconds in windows mode)."""
    if recipe_dict["features.kind"] == "image":
        return recipe_dict["data.image_channels"] * recipe_dict["data.image_size"] ** 2
    seconds = recipe_dict.get("data.windows.max_seconds") or recipe_dict["data.duration"]
    samples = int(seconds * recipe_dict["data.sample_rate"])
    width = np.dtype(recipe_dict["data.store_dtype"]).itemsize
    if recipe_dict["features.kind"] == "waveform":
        return samples * width
    return (samples // recipe_dict["features.hop_length"] + 1) * recipe_dict["features.n_mels"] * width


def plan_shards(keys: Sequence[ItemKey], target: int = SHARD_TARGET) -> list[range]:
    """Items (in scan order) cut into shards at content-defined boundaries, so that adding or
    removing one item changes one shard (two at most), not every later one."""
    shards, start = [], 0
    for i, key in enumerate(keys):
        size = i + 1 - start
        if size >= min(SHARD_MAX, 4 * target) or _ends_shard(key.path, target):
            shards.append(range(start, i + 1))
            start = i + 1
    if start < len(keys):
        shards.append(range(start, len(keys)))
    return shards


def _ends_shard(path: str, target: int = SHARD_TARGET) -> bool:
    return int(hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % target == 0


def shard_key(recipe_id_: str, split: str, variants: int, keys: Iterable[ItemKey]) -> str:
    items = [[k.path, int(k.size), int(k.mtime_ns)] for k in keys]
    return _digest([recipe_id_, split, int(variants), items])[:32]


# ----------------------------------------------------------------------------- rows
def to_rows(raw, kind: str) -> np.ndarray:
    """Raw features -> a 2-D block of rows: spectra (C, F, T) -> (T, C*F) frame-major, waveforms
    (1, T) -> (T, 1), images (C, H, W) -> (1, C*H*W). `raw` may be anything numpy can view."""
    raw = np.asarray(raw)
    kind = row_kind(kind)
    if kind == "mel" and raw.ndim == 3:
        c, f, t = raw.shape
        return np.ascontiguousarray(raw.reshape(c * f, t).T)
    if kind == "waveform" and raw.ndim == 2 and raw.shape[0] == 1:
        return np.ascontiguousarray(raw.reshape(-1, 1))
    if kind == "image" and raw.ndim == 3:
        return np.ascontiguousarray(raw.reshape(1, -1))
    raise ValueError(f"cannot store raw features of shape {raw.shape} as {kind!r} rows")


def from_rows(rows: np.ndarray, kind: str, row_shape: Sequence[int]) -> np.ndarray:
    """The inverse of to_rows: (count, row_size) -> (C, F, count) / (1, count) / (C, H, W)."""
    kind = row_kind(kind)
    if kind == "mel":
        c, f = row_shape
        return np.ascontiguousarray(rows.T.reshape(c, f, rows.shape[0]))
    if kind == "waveform":
        return rows.reshape(1, -1)
    if kind == "image":
        return rows.reshape(tuple(row_shape))
    raise ValueError(f"unknown row kind {kind!r}")


def row_shape_of(raw, kind: str) -> tuple[int, ...]:
    """The row_shape of the manifest for raw features of this shape: (C, F), (1,) or (C, H, W)."""
    shape = tuple(np.shape(raw))
    kind = row_kind(kind)
    return shape[:2] if kind == "mel" else (1,) if kind == "waveform" else shape


def stored_dtype(recipe_dict: dict) -> np.dtype:
    return np.dtype(recipe_dict["data.store_dtype"])


# ----------------------------------------------------------------------------- durable writes
def _write_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreDiskFull(f"{path}: the disk is full (no space left to write the feature store); "
                          "free some space and run `longhaul prepare` again")
    return StoreError(f"{path}: cannot write the feature store: {exc.strerror or exc}")


def durable_write(path: Path, write: Callable[[Any], None]) -> None:
    """`write(fh)` into a temp name beside `path`, fsync, rename, fsync the directory: readers see
    the whole file or none. On any failure the temp file is removed; OS errors become StoreError."""
    path = Path(path)
    tmp = StorePaths.temp(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    durable_write(path, lambda fh: fh.write(data))


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_shard(paths: StorePaths, key: str, split: str, variants: int, blocks: Sequence[np.ndarray],
                outcomes: Sequence[dict], dtype) -> dict:
    """Write one shard: its sidecar (the items' outcomes), then its rows. `outcomes`: one dict per
    item in shard order, {"path", "size", "mtime_ns", "ok": True, "duration", "rate", "wh"} or
    {"path", "size", "mtime_ns", "ok": False, "problem"}; `blocks`: one 2-D array per stored entry
    (each ok item's variant 0, 1, ..., V in item order). Returns the sidecar written."""
    dtype = np.dtype(dtype)
    per_item = int(variants) + 1
    ok = [o for o in outcomes if o.get("ok")]
    if len(blocks) != len(ok) * per_item:
        raise ValueError(f"shard {key}: {len(blocks)} blocks for {len(ok)} ok items x {per_item} variants")
    widths = {b.shape[1] for b in blocks if np.ndim(b) == 2}
    if len(widths) > 1 or any(np.ndim(b) != 2 for b in blocks):
        raise ValueError(f"shard {key}: blocks must be 2-D with one row size, found {[np.shape(b) for b in blocks]}")
    items, block_rows = [], iter([len(b) for b in blocks])
    for outcome in outcomes:
        item = {k: v for k, v in outcome.items() if k != "rows"}
        if item.get("ok"):
            item["rows"] = [next(block_rows) for _ in range(per_item)]
        items.append(item)
    sidecar = {"format": FORMAT, "key": key, "split": split, "variants": int(variants), "items": items}
    _write_json(paths.shard_json(key), sidecar)
    shape = (sum(len(b) for b in blocks), widths.pop() if widths else 0)

    def write_rows(fh) -> None:
        fh.write(npy_header(dtype, shape))
        for block in blocks:
            fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    durable_write(paths.shard_npy(key), write_rows)
    return sidecar


def shard_rows(outcomes: Sequence[dict]) -> list[Optional[list[tuple[int, int]]]]:
    """Where each item's entries are in its shard: per outcome, None for a bad item, else
    [(first row, rows)] for variants 0..V (rows are stored in item order, variant by variant)."""
    out, row = [], 0
    for outcome in outcomes:
        if not outcome.get("ok"):
            out.append(None)
            continue
        spans = []
        for count in outcome["rows"]:
            spans.append((row, int(count)))
            row += int(count)
        out.append(spans)
    return out


@dataclass(frozen=True)
class ShardHeader:
    """Where a shard's rows start and how they are laid out (parsed once per shard)."""

    offset: int
    rows: int
    row_size: int
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.row_size * self.dtype.itemsize


def read_shard_header(path: Path, fd: int) -> ShardHeader:
    """The header of an open shard .npy, checked against the file's size: StoreError naming the
    shard when it is damaged or truncated."""
    buf = io.BytesIO(os.pread(fd, 4096, 0))
    try:
        version = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf)
    except (ValueError, EOFError, SyntaxError) as exc:
        raise StoreError(f"{path}: the shard's header is damaged ({exc}); {PREPARE_HINT}") from None
    if fortran or len(shape) != 2:
        raise StoreError(f"{path}: the shard holds {shape} rows, not a 2-D C-order array; {PREPARE_HINT}")
    header = ShardHeader(offset=buf.tell(), rows=shape[0], row_size=shape[1], dtype=dtype)
    expected, actual = header.offset + header.rows * header.row_bytes, os.fstat(fd).st_size
    if actual != expected:
        raise StoreError(f"{path}: the shard is truncated or damaged ({actual:,} bytes, expected "
                         f"{expected:,}); {PREPARE_HINT}")
    return header


def _shard_whole(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        read_shard_header(path, fd)
        return True
    except StoreError:
        return False
    finally:
        os.close(fd)


def read_shard_outcomes(paths: StorePaths, key: str) -> Optional[list[dict]]:
    """The outcomes of a complete shard (its .npy exists, its header matches its size, and its
    .json is whole), else None: a shard that is not complete is computed again."""
    if not _shard_whole(paths.shard_npy(key)):
        return None
    try:
        sidecar = json.loads(paths.shard_json(key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT or sidecar.get("key") != key:
        return None
    items = sidecar.get("items")
    return items if isinstance(items, list) else None


# ----------------------------------------------------------------------------- splits, manifest
def write_entries(paths: StorePaths, fp: str, split: str, entries: np.ndarray, names: Sequence[str]) -> dict:
    """Write a split's entries (ENTRIES_DTYPE, one per (item, variant)) and its items' names; returns
    {"entries": relative path, "names": relative path} for the manifest."""
    entries = np.asarray(entries)
    if entries.dtype != ENTRIES_DTYPE or entries.ndim != 1:
        raise ValueError(f"{split}: entries must be a 1-D array of {ENTRIES_DTYPE}, found {entries.dtype}")
    bad = [n for n in names if "\n" in n or "\r" in n]
    if bad:
        raise StoreError(f"{bad[0]!r}: a source name with a line break cannot be stored")
    buf = io.BytesIO()
    np.save(buf, entries, allow_pickle=False)
    entries_path, names_path = paths.entries(fp, split), paths.names(fp, split)
    durable_write(entries_path, lambda fh: fh.write(buf.getvalue()))
    text = "".join(f"{n}\n" for n in names).encode("utf-8", "surrogateescape")
    durable_write(names_path, lambda fh: fh.write(text))
    return {"entries": paths.relative(entries_path), "names": paths.relative(names_path)}


def read_names(path: Path) -> list[str]:
    """A split's names file as written by write_entries (one name a line; only "\n" ends a line:
    str.splitlines would also cut at form feeds and other separators a file name may hold)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise StoreError(f"{path}: cannot read a split's names: {exc.strerror}; {PREPARE_HINT}") from None
    return text.split("\n")[:-1] if text else []


def fingerprint(recipe_id_: str, classes: Sequence[str], splits: dict[str, tuple[Sequence[str], np.ndarray]]) -> str:
    """The store's identity: its recipe, classes, and for each split its shard keys and entries."""
    h = hashlib.sha256()
    h.update(json.dumps([recipe_id_, list(classes)]).encode())
    for split in sorted(splits):
        keys, entries = splits[split]
        h.update(json.dumps([split, list(keys)]).encode())
        h.update(np.ascontiguousarray(np.asarray(entries, dtype=ENTRIES_DTYPE)).tobytes())
    return h.hexdigest()


def write_manifest(paths: StorePaths, manifest: dict) -> None:
    """Written last: once it is in place the store is complete and usable."""
    _write_json(paths.manifest, manifest)


def read_manifest(paths: StorePaths) -> dict:
    """The manifest; StoreError naming the file when there is none or it is damaged."""
    try:
        text = paths.manifest.read_text()
    except FileNotFoundError:
        raise StoreError(f"{paths.root}: no complete feature store (manifest.json missing); "
                         "run `longhaul prepare CONFIG`") from None
    except OSError as exc:
        raise StoreError(f"{paths.manifest}: cannot read the store's manifest: {exc.strerror or exc}") from exc
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{paths.manifest}: the store's manifest is damaged ({exc}); {PREPARE_HINT}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(f"{paths.manifest}: {problem}; {PREPARE_HINT}")
    return manifest


def _manifest_problem(manifest: Any) -> Optional[str]:
    if not isinstance(manifest, dict):
        return "the store's manifest is not a JSON object"
    if manifest.get("format") != FORMAT:
        return f"store format {manifest.get('format')!r}, this longhaul reads format {FORMAT}"
    missing = [k for k in ("fingerprint", "recipe", "kind", "row_shape", "dtype", "classes", "splits")
               if k not in manifest]
    if missing:
        return f"the store's manifest lacks {', '.join(missing)}"
    for split, entry in manifest["splits"].items():
        lacks = [k for k in ("shards", "items", "variants", "entries", "names") if k not in entry]
        if lacks:
            return f"split {split!r} of the manifest lacks {', '.join(lacks)}"
    return None


def make_manifest(*, fp: str, recipe_dict: dict, kind: str, row_shape: Sequence[int], classes: Sequence[str],
                  splits: dict[str, dict], stats: Optional[dict] = None, total_bytes: int = 0,
                  created: Optional[float] = None) -> dict:
    """The manifest's fields in one place. `splits[name]`: {"shards", "items", "variants",
    "entries", "names", "counts", "bad"}."""
    return {"format": FORMAT, "fingerprint": fp, "recipe": recipe_dict, "recipe_id": recipe_id(recipe_dict),
            "kind": row_kind(kind), "row_shape": [int(s) for s in row_shape],
            "dtype": str(stored_dtype(recipe_dict)), "classes": list(classes),
            "created": time.time() if created is None else created, "bytes": int(total_bytes),
            "splits": splits, "stats": stats or {}}


# ----------------------------------------------------------------------------- garbage, size
def referenced(paths: StorePaths, manifest: dict) -> set[Path]:
    """The shard and split files a manifest uses."""
    keep: set[Path] = set()
    for entry in manifest.get("splits", {}).values():
        for key in entry["shards"]:
            keep |= {paths.shard_npy(key), paths.shard_json(key)}
        keep |= {paths.resolve(entry["entries"]), paths.resolve(entry["names"])}
    return keep


def hold_for_reading(paths: StorePaths) -> Optional[int]:
    """A shared lock on the store's readers.lock, held while the returned descriptor is open (a
    FeatureStore keeps it for its life; forked DataLoader workers share it). While anyone holds it,
    a prepare leaves the files of older manifests in place: a training run that opened the store
    before a re-prepare keeps reading the shards it knows. None on a store that cannot be written
    (nothing can remove files there either)."""
    try:
        fd = os.open(paths.readers, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def remove_unreferenced(paths: StorePaths, manifest: dict) -> Optional[tuple[int, int]]:
    """Delete shard and split files (and leftover temp files) the manifest does not use; call only
    after the new manifest is in place, holding the prepare lock. Returns (files, bytes) removed,
    or None when a reader holds the store (hold_for_reading): then nothing is removed, and the
    next prepare that finds no reader removes it."""
    fd = os.open(paths.readers, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return _remove_files(paths, referenced(paths, manifest))
    finally:
        os.close(fd)


def _remove_files(paths: StorePaths, keep: set) -> tuple[int, int]:
    files = size = 0
    for folder in (paths.shards, paths.splits):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path in keep or not path.is_file():
                continue
            try:
                size += path.stat().st_size
                path.unlink()
                files += 1
            except FileNotFoundError:
                pass
        fsync_dir(folder)
    return files, size


def store_bytes(paths: StorePaths) -> int:
    """Bytes on disk of every file of the store."""
    total = 0
    for path in paths.root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total

