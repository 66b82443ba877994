"""Crash-safe, checksummed checkpoint store.

Layout inside the store directory (``RUN/ckpt/``)::

    step-0000001234/
        state.pt        torch.save of the training state (nested dict of tensors and plain data)
        meta.json       step, epoch, phase, time, metric, mode, phase_end, ... (caller's dict)
        MANIFEST.json   written last: format version and size + sha256 of every other file
    .lock               POSIX lock of the process whose store writes here (holds its pid)

Write protocol (what makes a checkpoint survive kill -9 and power loss):

1. check free space (estimated size + ``min_free_mb``), refuse with DiskFullError otherwise
   (before anything is copied or written: ``save_async`` refuses in the caller's thread);
2. write every file into ``.tmp-step-N-<token>/`` and fsync it, then write and fsync the manifest;
3. fsync the temp directory, rename it to ``step-N`` and fsync the store directory.

A directory named ``step-N`` therefore either holds a complete checkpoint or is damaged on disk
(torn write, bit rot); loading verifies the manifest and falls back to the previous valid one.
Anything starting with ``.tmp-`` is an unfinished write or an unfinished removal and is deleted
when a writable store is opened. When ``step-N`` already exists (the same step saved again after
a resume, or by an explicit request), the old one is first renamed to ``.old-step-N``; opening the
store puts it back if the crash came before the new one was in place, and deletes it otherwise.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from trainer.checkpoint.capture import Snapshotter, _DeferredCopies, estimate_bytes
from trainer.checkpoint.errors import CheckpointError, DiskFullError, full_disk_error
from trainer.monitor import Monitor, usable
from trainer.run.manifest import (FORMAT_VERSION, MANIFEST_FILE, META_FILE, STATE_FILE, files_problem, read_manifest,
                                   read_meta)
from trainer.run.rundir import checkpoint_dir_name, checkpoint_step, fsync_dir

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


@dataclass(frozen=True)
class SaveResult:
    """Outcome of one save, passed to ``on_done`` and returned by ``save``.

    ``waited_s`` is how long the save waited for the previous background write to finish before
    it could start (part of the training-loop stall for ``save_async``).
    """

    step: int
    path: Path
    bytes: int = 0
    write_s: float = 0.0
    waited_s: float = 0.0
    error: Optional[BaseException] = None
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory whose manifest verified, with its parsed meta.json."""

    step: int
    path: Path
    meta: dict


class _HashingWriter:
    """File-like wrapper that hashes and counts everything written through it."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _write_file(path: Path, write: Callable[[Any], None]) -> dict:
    """Create ``path``, fill it with ``write(file)``, fsync it; return its manifest entry."""
    with open(path, "xb") as f:
        writer = _HashingWriter(f)
        write(writer)
        f.flush()
        os.fsync(f.fileno())
        on_disk = os.fstat(f.fileno()).st_size
    if on_disk != writer.size:  # the writer must be strictly sequential for the hash to hold
        raise CheckpointError(f"{path}: wrote {writer.size} bytes but the file has {on_disk}")
    return {"size": writer.size, "sha256": writer.sha256.hexdigest()}


def _remove_tree(path: Path) -> None:
    """Remove a directory so that no half-deleted checkpoint is ever visible under its name.

    It is renamed to a ``.tmp-`` name first; a crash during the deletion leaves only a temp
    directory that the next open cleans up.
    """
    doomed = path.parent / f"{TMP_PREFIX}del-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _remove_leftover(path: Path) -> None:
    """Delete garbage left by a crash; failing to is logged, not fatal (it is never loaded)."""
    try:
        shutil.rmtree(path)
    except OSError as e:
        log.warning("could not remove leftover %s: %s", path, e)


def _checked_meta(meta: Any) -> dict:
    """Copy of ``meta`` with a default ``time``; CheckpointError naming the problem otherwise."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint meta['step'] must be an int >= 0, got {step!r}")
    if meta.get("mode", "max") not in ("max", "min"):
        raise CheckpointError(f"checkpoint meta['mode'] must be 'max' or 'min', got {meta['mode']!r}")
    metric = meta.get("metric")
    if metric is not None and (isinstance(metric, bool) or not isinstance(metric, (int, float))):
        raise CheckpointError(f"checkpoint meta['metric'] must be a number or None, got {metric!r}")
    meta = dict(meta)
    meta.setdefault("time", time.time())
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint meta for step {step} is not JSON-serializable: {e}") from e
    return meta


@dataclass
class _Job:
    """One checkpoint write: the state to write (a snapshot for background writes) and its hooks."""

    state: Any
    meta: dict
    waited: float
    later: Optional[_DeferredCopies]
    before_commit: Optional[Callable[[], None]]
    after_commit: Optional[Callable[[Any, SaveResult], None]]


def _call_reporting_errors(what: str, callback: Optional[Callable], *args: Any) -> None:
    """Call a caller's hook; a bug in reporting must not take the checkpoint machinery down."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("checkpoint %s callback failed", what)


def _lower_thread_priority(increment: int) -> None:
    """Make the calling thread ``increment`` nicer (Linux keeps a nice value per thread).

    The write (pickling, hashing) takes ~0.5 s of CPU per 230 MiB; on a 2-core box at normal
    priority it slowed the training steps that overlapped it about twofold, which cost more
    training time than a synchronous save (bench/checkpoint_stall.py). At nice 19 it runs only
    in the gaps training leaves, and at full speed whenever the loop waits for it.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as e:
        log.warning("could not lower the checkpoint writer's priority: %s", e)


class CheckpointStore:
    """Atomic, checksummed checkpoints in ``ckpt_dir`` with retention.

    One writing process per directory: opening takes an exclusive POSIX lock (``lockf``) on
    ``ckpt_dir/.lock`` and raises CheckpointError if another process still holds it after
    ``lock_timeout`` seconds. The lock belongs to the process: the kernel drops it when the
    process dies (even by kill -9), forked children (data-loader workers) do not inherit it,
    and a later store in the same process (a new Trainer after the last one ended) reopens freely;
    closing any store of that directory in the process releases it.
    ``readonly=True`` opens without the lock and without cleaning up, for inspecting a directory
    that a trainer may be writing (saving is refused).

    Retention runs after every successful save and keeps the newest ``keep_last`` valid
    checkpoints, the best one by ``meta["metric"]`` (``meta["mode"]`` "max"/"min") if
    ``keep_best``, and the last ``meta["phase_end"]`` checkpoint of each phase if
    ``keep_phase_ends``. It also removes invalid (damaged) checkpoints older than the newest
    valid one. It never removes the newest valid checkpoint and removes nothing at all when a
    directory or file cannot be read.

    ``on_done(result: SaveResult)`` is called once per save that passed the free-space check
    (a refusal is raised by ``save``/``save_async`` itself), synchronous or not, from the thread
    that did the write; it must be thread-safe and quick. ``writer_nice`` is how much the
    background writer lowers its CPU priority once it holds its own copy of the state.
    """

    def __init__(
        self,
        ckpt_dir: Path,
        keep_last: int = 3,
        keep_best: bool = True,
        keep_phase_ends: bool = True,
        min_free_mb: float = 512,
        on_done: Optional[Callable[[SaveResult], None]] = None,
        readonly: bool = False,
        lock_timeout: float = 10.0,
        writer_nice: int = 0,
    ):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if min_free_mb < 0:
            raise ValueError(f"min_free_mb must be >= 0, got {min_free_mb}")
        self.ckpt_dir = Path(ckpt_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.keep_phase_ends = keep_phase_ends
        self.min_free_mb = min_free_mb
        self.on_done = on_done
        self.readonly = readonly
        self.writer_nice = writer_nice
        self.rejected: list[tuple[Path, str]] = []
        """(path, reason) of every checkpoint the last load_latest()/list_valid() skipped."""
        self._lock = threading.RLock()  # scans, renames and removals in this directory
        self._thread: Optional[threading.Thread] = None
        self._snapshots = Snapshotter()
        self._pending_error: Optional[BaseException] = None
        self._verified: dict[str, tuple] = {}  # dir name -> file fingerprint already hashed
        self._logged: set[tuple[str, str]] = set()
        self._lock_fd: Optional[int] = None
        if not readonly:
            if not self.ckpt_dir.is_dir():
                self.ckpt_dir.mkdir(parents=True)
                fsync_dir(self.ckpt_dir.parent)  # the first checkpoint must not lose its parent
            self._lock_fd = _lock_directory(self.ckpt_dir, lock_timeout)
            try:
                _clean_stale(self.ckpt_dir)
            except BaseException:
                self.close()
                raise

    # -- opening and closing -------------------------------------------------------------------

    def close(self) -> None:
        """Wait for a write in flight and release the directory lock (errors go to on_done)."""
        self._join_in_flight()
        if self._pending_error is not None:
            log.error("checkpoint write failed and was never waited for: %s", self._pending_error)
            self._pending_error = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- saving ----------------------------------------------------------------------------------

    def save(self, state: dict, meta: dict, before_commit: Optional[Callable[[], None]] = None,
             after_commit: Optional[Callable[[Any, SaveResult], None]] = None) -> SaveResult:
        """Write a checkpoint now (after any write in flight); raise CheckpointError on failure.

        ``state`` is written as it is; do not modify it until this returns. The hooks are those
        of ``save_async``.
        """
        meta = self._prepare(meta)
        waited = self._join_in_flight()
        self.check_free_space(meta["step"], state)
        result = self._write_and_report(_Job(state, meta, waited, None, before_commit, after_commit))
        if result.error is not None:
            raise result.error
        return result

    def save_async(self, state: dict, meta: dict, stable: Iterable[torch.Tensor] = (),
                   before_commit: Optional[Callable[[], None]] = None,
                   after_commit: Optional[Callable[[Any, SaveResult], None]] = None) -> None:
        """Snapshot ``state`` in memory and write the snapshot in a background thread.

        At most one write is in flight: if one is, this first waits for it (reported as
        ``waited_s``). Then the free space is checked: a checkpoint that does not fit raises
        DiskFullError here, before anything is copied. The copy reuses the buffers of the
        previous written snapshot where shapes match. Tensors of ``state`` that share memory
        with a tensor in ``stable`` are copied by the writer thread instead, as soon as it
        starts: the caller must not modify them until ``fence()`` returns (see
        ``capture._DeferredCopies``). The thread then lowers its CPU priority by
        ``writer_nice`` for the write itself.

        ``before_commit()`` runs in the writer before the checkpoint is renamed into place (e.g.
        to fsync a file the checkpoint points into); raising fails the checkpoint.
        ``after_commit(snapshot, result)`` runs after a successful commit with the written
        snapshot; raising is logged and does not fail the checkpoint.
        The outcome goes to ``on_done``; a failure is also raised by ``wait()``.
        """
        meta = self._prepare(meta)
        waited = self._join_in_flight()
        self.check_free_space(meta["step"], state)
        snap, later = self._snapshots.take(state, stable)
        job = _Job(snap, meta, waited, later, before_commit, after_commit)
        self._thread = threading.Thread(target=self._write_in_background, args=(job,),
                                        name=f"checkpoint-step-{meta['step']}")
        self._thread.start()

    def fence(self) -> float:
        """Block until the write in flight holds its own copy of the ``stable`` tensors passed to
        ``save_async``; return the seconds waited. Call it before modifying any of them."""
        return self._snapshots.fence()

    def wait(self) -> None:
        """Block until no write is in flight; raise the first background failure not yet raised."""
        self._join_in_flight()
        error, self._pending_error = self._pending_error, None
        if error is not None:
            raise error

    def check_free_space(self, step: int, state: Any) -> int:
        """The estimated size of a checkpoint of ``state``; DiskFullError if the free space is
        below it plus ``min_free_mb``."""
        estimate = estimate_bytes(state)
        free, needed = shutil.disk_usage(self.ckpt_dir).free, self.space_needed(estimate)
        if free < needed:
            raise DiskFullError(
                f"not enough disk space for checkpoint step {step} in {self.ckpt_dir}: "
                f"{free / 2**20:.0f} MiB free, need about {estimate / 2**20:.0f} MiB "
                f"plus min_free_mb={self.min_free_mb:g}",
                free=free, needed=needed,
            )
        return estimate

    def space_needed(self, estimate: int) -> int:
        """Bytes that must be free before writing a checkpoint of ``estimate`` bytes."""
        return estimate + int(self.min_free_mb * 2**20)

    def _prepare(self, meta: dict) -> dict:
        if self.readonly:
            raise CheckpointError(f"checkpoint store {self.ckpt_dir} was opened read-only")
        if self._lock_fd is None:
            raise CheckpointError(f"checkpoint store {self.ckpt_dir} is closed")
        return _checked_meta(meta)

    def _join_in_flight(self) -> float:
        thread, started = self._thread, time.perf_counter()
        if thread is None:
            return 0.0
        thread.join()
        self._thread = None
        self._snapshots.settled()
        return time.perf_counter() - started

    def _write_in_background(self, job: "_Job") -> None:
        job.later.run()
        _lower_thread_priority(self.writer_nice)
        result = self._write_and_report(job)
        self._snapshots.written(job.state)
        if result.error is not None and self._pending_error is None:
            self._pending_error = result.error

    def _write_and_report(self, job: "_Job") -> SaveResult:
        step = job.meta["step"]
        started = time.perf_counter()
        try:
            if job.later is not None and job.later.error is not None:
                raise CheckpointError(f"copying the state of checkpoint step {step} failed: {job.later.error}")
            path, nbytes = self._write(job.state, job.meta, job.before_commit)
            result = SaveResult(step, path, nbytes, time.perf_counter() - started, job.waited, meta=job.meta)
        except CheckpointError as e:
            log.error("%s", e)
            result = SaveResult(step, self.ckpt_dir / checkpoint_dir_name(step), waited_s=job.waited, error=e,
                                meta=job.meta)
        if result.ok:
            self._apply_retention()
            _call_reporting_errors("after_commit", job.after_commit, job.state, result)
        _call_reporting_errors("on_done", self.on_done, result)
        return result

    def _write(self, state: dict, meta: dict, before_commit: Optional[Callable[[], None]] = None) -> tuple[Path, int]:
        """Write one checkpoint with the protocol in the module docstring; return (path, bytes)."""
        step = meta["step"]
        name = checkpoint_dir_name(step)
        tmp = self.ckpt_dir / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            meta_bytes = json.dumps(meta, indent=2, sort_keys=True).encode()
            files = {
                STATE_FILE: _write_file(tmp / STATE_FILE, lambda f: torch.save(state, f)),
                META_FILE: _write_file(tmp / META_FILE, lambda f: f.write(meta_bytes)),
            }
            manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            _write_file(tmp / MANIFEST_FILE, lambda f: f.write(manifest_bytes))
            fsync_dir(tmp)
            if before_commit is not None:
                before_commit()
            with self._lock:
                final = _install(self.ckpt_dir, tmp, name)
                self._verified[name] = _fingerprint(final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, CheckpointError) or not isinstance(e, Exception):
                raise
            message = f"writing checkpoint step {step} in {self.ckpt_dir} failed: {e}"
            needed = self.space_needed(estimate_bytes(state))
            raise full_disk_error(e, message, self.ckpt_dir, needed) or CheckpointError(message) from e
        return final, sum(f["size"] for f in files.values()) + len(manifest_bytes)

    # -- finding and loading -------------------------------------------------------------------

    def list_valid(self) -> list[CheckpointInfo]:
        """Every checkpoint whose manifest verifies, oldest first; the others go to ``rejected``.

        Files this store already hashed (and that are unchanged since) are not hashed again.
        """
        with self._lock:
            self.rejected = []
            valid = []
            for step, path in self._step_dirs():
                info, reason = self._verify_reporting(step, path, use_cache=True)
                if info is not None:
                    valid.append(info)
            return valid

    def load_latest(self, map_location: Any = "cpu", weights_only: bool = False) -> Optional[tuple[dict, dict]]:
        """(state, meta.json plus `path`) of the newest checkpoint that verifies, or None if none.

        Every checkpoint is re-hashed here. Skipped ones are logged and listed in ``rejected``.
        ``weights_only=False`` because the state holds numpy/Python RNG states that torch's
        restricted unpickler refuses; the store only unpickles files whose sha256 matches the
        manifest it wrote itself into the run directory.
        A checkpoint that verifies but cannot be loaded raises CheckpointError: falling back would
        silently restart from older state because of a code or version problem, not damage.
        """
        with self._lock:
            self.rejected = []
            for step, path in reversed(self._step_dirs()):
                info, _ = self._verify_reporting(step, path, use_cache=False)
                if info is not None:  # meta.json does not name its own directory: the caller needs it
                    return self.load(info, map_location, weights_only), {**info.meta, "path": str(info.path)}
        return None

    def load(self, info: CheckpointInfo, map_location: Any = "cpu", weights_only: bool = False) -> dict:
        """The state of one verified checkpoint (see load_latest for ``weights_only``)."""
        try:
            return torch.load(info.path / STATE_FILE, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise CheckpointError(f"checkpoint {info.path} verified but could not be loaded: {e}") from e

    def _step_dirs(self) -> list[tuple[int, Path]]:
        """(step, path) of every ``step-N`` directory, ascending. OSError if listing fails."""
        found = []
        for entry in os.scandir(self.ckpt_dir):
            step = checkpoint_step(entry.name)
            if step is not None and entry.is_dir(follow_symlinks=False):
                found.append((step, Path(entry.path)))
        return sorted(found)

    def _verify_reporting(self, step: int, path: Path, use_cache: bool):
        """_verify, turning unreadable files into a rejection; records and logs rejections."""
        try:
            info, reason = self._verify(step, path, use_cache)
        except OSError as e:
            info, reason = None, f"unreadable: {e}"
        if reason is not None:
            self.rejected.append((path, reason))
            self._log_rejection(path, reason)
        return info, reason

    def _log_rejection(self, path: Path, reason: str) -> None:
        if (str(path), reason) not in self._logged:
            self._logged.add((str(path), reason))
            log.warning("skipping checkpoint %s: %s", path, reason)

    def _verify(self, step: int, path: Path, use_cache: bool) -> tuple[Optional[CheckpointInfo], Optional[str]]:
        """Check a checkpoint against its manifest: (info, None) if valid, (None, reason) if not.

        Damage (missing or mismatching files, bad JSON) is a reason; other OSErrors propagate so
        that callers which delete things can refuse to act on a directory they cannot read.
        """
        manifest, problem = read_manifest(path, step)
        if problem:
            return None, problem
        fingerprint = _fingerprint(path)
        if not (use_cache and fingerprint is not None and self._verified.get(path.name) == fingerprint):
            problem = files_problem(path, manifest)
            if problem:
                return None, problem
            self._verified[path.name] = fingerprint
        meta, problem = read_meta(path)
        return (None, problem) if problem else (CheckpointInfo(step, path, meta), None)

    # -- retention -------------------------------------------------------------------------------

    def _apply_retention(self) -> None:
        """Remove checkpoints no rule keeps (see the class docstring and ``_kept``); any
        listing/reading failure removes nothing. Invalid checkpoints newer than the newest valid
        one are left for inspection until a newer valid checkpoint exists."""
        with self._lock:
            try:
                entries = []
                for step, path in self._step_dirs():
                    info, reason = self._verify(step, path, use_cache=True)
                    if reason is not None:
                        self._log_rejection(path, reason)
                    entries.append((step, path, info))
            except OSError as e:
                log.warning("retention skipped: cannot read %s: %s", self.ckpt_dir, e)
                return
            valid = [info for _, _, info in entries if info is not None]
            if not valid:
                return
            keep = _kept(valid, self.keep_last, self.keep_best, self.keep_phase_ends)
            newest_valid = valid[-1].step
            for step, path, info in entries:
                if path in keep or (info is None and step > newest_valid):
                    continue
                try:
                    _remove_tree(path)
                    self._verified.pop(path.name, None)
                    log.info("retention removed %s%s", path, "" if info else " (invalid)")
                except OSError as e:
                    log.warning("retention could not remove %s: %s", path, e)


def _lock_directory(ckpt_dir: Path, timeout: float) -> int:
    """The fd of ``ckpt_dir/.lock``, exclusively locked and holding our pid (see CheckpointStore)."""
    # Waiting a little covers a supervisor that starts the next trainer while the kernel is
    # still tearing the killed one down.
    fd = os.open(ckpt_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CheckpointError(
                    f"checkpoint directory {ckpt_dir} is in use by another process "
                    f"(pid {holder}; waited {timeout:g} s)"
                ) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _clean_stale(ckpt_dir: Path) -> None:
    """Delete unfinished writes/removals; resolve a replacement interrupted half-way."""
    for entry in sorted(os.scandir(ckpt_dir), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if entry.name.startswith(TMP_PREFIX):
            log.info("removing unfinished checkpoint write %s", path)
            _remove_leftover(path)
        elif entry.name.startswith(OLD_PREFIX):
            final = ckpt_dir / entry.name[len(OLD_PREFIX):]
            if final.exists():
                _remove_leftover(path)
            else:
                log.warning("restoring %s: its replacement never landed", final)
                os.rename(path, final)
    fsync_dir(ckpt_dir)


def _install(ckpt_dir: Path, tmp: Path, name: str) -> Path:
    """Rename the finished temp dir to ``name``, moving an existing one aside first."""
    final = ckpt_dir / name
    old = ckpt_dir / f"{OLD_PREFIX}{name}"
    if final.exists():
        if old.exists():  # only possible after a failed cleanup; final is the newer one
            shutil.rmtree(old)
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)  # keep the previous checkpoint visible
            raise
        fsync_dir(ckpt_dir)
        _remove_leftover(old)  # the new one is in place: failing here must not fail the save
    else:
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
    return final


def _fingerprint(path: Path) -> Optional[tuple]:
    """Identity of a checkpoint's files (name, inode, size, mtime); None if one is missing."""
    try:
        stats = [(e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)]
    except FileNotFoundError:
        return None
    return tuple(sorted(stats))


def _kept(valid: list[CheckpointInfo], keep_last: int, keep_best: bool, keep_phase_ends: bool) -> set[Path]:
    """The checkpoints the retention rules keep: the newest ``keep_last`` valid ones (always the
    newest valid one), the best by ``meta["metric"]`` if ``keep_best``, and the last
    ``phase_end`` checkpoint of each phase if ``keep_phase_ends``."""
    keep = {info.path for info in valid[-keep_last:]}
    keep.add(valid[-1].path)
    if keep_best:
        best = _best(valid)
        if best is not None:
            keep.add(best.path)
    if keep_phase_ends:
        last_of_phase: dict[Any, CheckpointInfo] = {}
        for info in valid:  # ascending, so later ones overwrite earlier ones
            if info.meta.get("phase_end") is True:
                last_of_phase[info.meta.get("phase")] = info
        keep.update(info.path for info in last_of_phase.values())
    return keep


def _best(valid: list[CheckpointInfo]) -> Optional[CheckpointInfo]:
    """The checkpoint with the best finite metric; the earliest wins a tie.

    The direction and min_delta come from the newest checkpoint that has a metric (the current
    config), so the best kept here is the evaluation the engine took for best.pt.
    """
    scored = [info for info in valid if usable(info.meta.get("metric"))]
    if not scored:
        return None
    newest = scored[-1].meta
    rule = Monitor("metric", newest.get("mode", "max"), newest.get("min_delta") or 0.0)
    best = rule.best(info.meta for info in scored)
    return next(info for info in scored if info.meta is best)
