"""The replica of a run: `DIR/<name>/`, laid out like the run directory, kept up to date after
each checkpoint by `Replica.sync` (the daemon calls it from its replication thread). No torch.

What a sync does, in this order, so that a replica is always a run that can be resumed exactly:
1. the run's files: append-only ones (history, events, train.log) get only their new bytes,
   the others (config, plan, state, best.pt, ...) are copied whole when their size or mtime
   changed, through a temp file and a rename. They come first: every checkpoint this sync copies
   had landed before it began, so the history copied holds every record up to each one's offset
   (it may run past it: a resume cuts it back, trainer/resume.py). Copied after the checkpoints,
   a sync killed in between (the box losing power) left a checkpoint whose history rows were not
   in the replica, and the restored run lost them;
2. checkpoints the run directory has and the replica lacks are copied into `ckpt/.tmp-...`,
   fsynced, verified against their manifest (trainer.run.manifest, every byte re-hashed) and only
   then renamed to `step-N`: a crash mid-copy leaves a temp directory the next sync removes,
   never a half checkpoint under a checkpoint's name;
3. retention: replica checkpoints the run directory no longer has are removed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainer.run.manifest import MANIFEST_FILE, verify
from trainer.run.rundir import RunDir, atomic_write_bytes, checkpoint_dir_name, checkpoint_step, fsync_dir

TMP_PREFIX = ".tmp-"  # the checkpoint store's prefix: its own cleanup knows these names
_BOUNDARY = 64 * 1024  # bytes compared before appending to an append-only file


class ReplicaError(Exception):
    """A sync that could not finish; the message names the replica path and the cause."""


@dataclass
class SyncResult:
    """What one sync copied: the checkpoint steps, the bytes written, the seconds it took."""

    steps: list[int] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    removed: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(step, reason) of local checkpoints that are damaged themselves and were not copied."""


def replica_of(run_dir: Path, replica_root: Path) -> Path:
    """Where the replica of `run_dir` lives under `replica_root`: `replica_root/<run name>`."""
    return Path(replica_root) / Path(run_dir).name


def owner_id(run_dir: Path) -> str:
    """Whose replica it is (its `replica-of.txt`): HOST:PATH of the run directory. The host
    matters: two boxes with the same home layout may replicate runs of the same name to one
    NFS directory, and each one's retention would remove the other's checkpoints."""
    return f"{socket.gethostname()}:{Path(run_dir).absolute()}"


def is_replica(path: Path) -> Optional[str]:
    """The owner a replica directory names (None: `path` is no replica)."""
    try:
        return RunDir(path).replica_origin.read_text().strip() or None
    except OSError:
        return None


def placement_problem(run_dir: Path, replica_root: Path) -> Optional[str]:
    """Why `replica_root` cannot hold the replica of `run_dir` (it is the run directory, inside it,
    or the run directory is inside the replica), or None."""
    run = Path(run_dir).resolve()
    target = replica_of(run, Path(replica_root).expanduser()).resolve()
    if target == run or run in target.parents or target in run.parents:
        return (f"{replica_root} would put the replica at {target}, which is the run directory {run} or "
                "overlaps it; a copy on the same disk is no copy: name another disk or mount")
    return None


class Replica:
    """Keeps `replica_root/<name>/` a verified copy of the run directory `run_dir`."""

    def __init__(self, run_dir: Path, replica_root: Path):
        self.source = RunDir(run_dir)
        self.root = Path(replica_root)
        self.target = RunDir(replica_of(run_dir, replica_root))
        self._inodes: dict[str, int] = {}  # append-only file -> its inode when last appended from

    def sync(self) -> SyncResult:
        """Bring the replica up to date (see the module docstring). ReplicaError when it cannot:
        whatever was half-written is removed first, what was complete stays. Every file system
        access is here, in the caller's thread: a mount that hangs holds that thread only."""
        started = time.monotonic()
        result = SyncResult()
        problem = placement_problem(self.source.path, self.root)
        if problem:
            raise ReplicaError(problem)
        if not self.root.is_dir():
            raise ReplicaError(f"replica directory {self.root} does not exist (not mounted?); it is not "
                               "created, so that an absent mount is not filled on the wrong disk")
        try:
            self._prepare()
            self._claim()
            missing = self._missing_steps()  # listed first: one landing later waits for the next sync
            self._copy_run_files(result)
            for step in missing:
                self._copy_checkpoint(step, result)
            self._apply_retention(result)
        except OSError as exc:
            raise ReplicaError(f"replica {self.target.path}: {_os_error_text(exc)}") from exc
        result.seconds = time.monotonic() - started
        return result

    # ------------------------------------------------------------------ checkpoints
    def _prepare(self) -> None:
        """Create `NAME/ckpt/` in the replica and remove the temp files and directories a crash
        (kill -9 of the daemon mid-copy) left there."""
        for path in (self.target.path, self.target.checkpoints):
            if not path.is_dir():
                os.mkdir(path, 0o700)
                fsync_dir(path.parent)
        for folder in (self.target.path, self.target.checkpoints):
            for entry in os.scandir(folder):
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def _claim(self) -> None:
        """Mark the replica as this run's; refuse one that copies another run of the same name
        (its retention would remove that run's checkpoints)."""
        origin, me = self.target.replica_origin, owner_id(self.source.path)
        try:
            owner = origin.read_text().strip()
        except FileNotFoundError:
            atomic_write_bytes(origin, f"{me}\n".encode())
            return
        if owner != me:
            raise ReplicaError(f"{self.target.path} is the replica of another run ({owner}, {origin.name}); "
                               "give this run another checkpoint.replicate_to.dir, or remove that replica")

    def _missing_steps(self) -> list[int]:
        """Local checkpoints the replica lacks, or holds with another manifest or file sizes."""
        return [step for step in local_steps(self.source) if not self._same_checkpoint(step)]

    def _same_checkpoint(self, step: int) -> bool:
        """Cheap identity (manifest bytes, file sizes): each copy was fully verified when made."""
        mine, theirs = self.source.checkpoint(step), self.target.checkpoint(step)
        try:
            if (mine / MANIFEST_FILE).read_bytes() != (theirs / MANIFEST_FILE).read_bytes():
                return False
            return all((theirs / e.name).stat().st_size == e.stat().st_size for e in os.scandir(mine))
        except OSError:
            return False

    def _copy_checkpoint(self, step: int, result: SyncResult) -> None:
        name = checkpoint_dir_name(step)
        tmp = self.target.checkpoints / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            copied = copy_checkpoint(self.source.checkpoint(step), tmp, step)
        except FileNotFoundError:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.source.checkpoint(step).exists():
                raise
            return  # the local retention removed it meanwhile: nothing to keep
        except BadCheckpoint as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _, source_problem = verify(self.source.checkpoint(step), step)
            if source_problem is not None:  # damaged on the local disk: the store skips it too
                result.skipped.append((step, source_problem))
                return
            raise ReplicaError(f"the copy of checkpoint {name} in {self.target.checkpoints} does not "
                               f"match its manifest: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, self.target.checkpoint(step))
        result.steps.append(step)
        result.bytes += copied

    def _apply_retention(self, result: SyncResult) -> None:
        """Remove replica checkpoints the run directory no longer keeps (after the new ones landed)."""
        kept = set(local_steps(self.source))
        if not kept:  # never empty a replica because the local store could not be read
            return
        for step in local_steps(self.target):
            if step not in kept:
                remove_dir(self.target.checkpoint(step))
                result.removed.append(step)

    # ------------------------------------------------------------------ run files
    def _copy_run_files(self, result: SyncResult) -> None:
        src, dst = self.source, self.target
        for name in ("history", "events", "train_log"):
            result.bytes += self._append_new_bytes(getattr(src, name), getattr(dst, name))
        for name in ("config", "plan", "data_auto", "data_store", "state", "best_weights", "last_weights",
                     "calibration", "evaluation", "cv_fold"):
            result.bytes += copy_if_changed(getattr(src, name), getattr(dst, name))
        fsync_dir(dst.path)

    def _append_new_bytes(self, src: Path, dst: Path) -> int:
        """Append what `src` gained since the replica's copy; copy it whole when it was cut back
        (a resume cuts the history to its checkpoint), replaced (moved aside) or differs."""
        try:
            info = src.stat()
        except FileNotFoundError:
            return 0
        have = dst.stat().st_size if dst.exists() else -1
        same_file = self._inodes.get(src.name, info.st_ino) == info.st_ino
        if have < 0 or have > info.st_size or not same_file or not same_bytes_before(src, dst, have):
            written = copy_whole(src, dst)
        else:
            written = append_range(src, dst, have, info.st_size)
        self._inodes[src.name] = info.st_ino
        return written


class BadCheckpoint(Exception):
    """A copied checkpoint that does not match its manifest."""


def local_steps(run: RunDir) -> list[int]:
    """The steps of the `step-N` directories under `run.checkpoints`, ascending ([] when none)."""
    try:
        entries = list(os.scandir(run.checkpoints))
    except FileNotFoundError:
        return []
    steps = (checkpoint_step(e.name) for e in entries if e.is_dir(follow_symlinks=False))
    return sorted(s for s in steps if s is not None)


def copy_checkpoint(source: Path, tmp: Path, step: int) -> int:
    """Copy checkpoint directory `source` into the new directory `tmp` (the manifest last, every
    file fsynced), verify the copy against its manifest; return the bytes copied. BadCheckpoint
    when the copy does not verify."""
    os.mkdir(tmp, 0o700)
    names = sorted(os.listdir(source), key=lambda n: n == MANIFEST_FILE)
    copied = sum(copy_file(source / n, tmp / n) for n in names)
    fsync_dir(tmp)
    _, problem = verify(tmp, step)
    if problem is not None:
        raise BadCheckpoint(problem)
    return copied


def copy_file(src: Path, dst: Path) -> int:
    """Copy `src` to the new file `dst` (kernel copy), fsync it, keep `src`'s mtime; its size."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
        size = fout.tell()
    stat = os.stat(src)
    os.utime(dst, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return size


def copy_whole(src: Path, dst: Path) -> int:
    """Replace `dst` by a copy of `src` through a temp file and a rename; the bytes copied."""
    tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}-{secrets.token_hex(4)}")
    try:
        size = copy_file(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def copy_if_changed(src: Path, dst: Path) -> int:
    """`copy_whole` when `src` exists and `dst` differs in size or mtime (as rsync decides); else 0."""
    try:
        mine = src.stat()
    except FileNotFoundError:
        return 0
    try:
        theirs = dst.stat()
        if (theirs.st_size, theirs.st_mtime_ns) == (mine.st_size, mine.st_mtime_ns):
            return 0
    except FileNotFoundError:
        pass
    return copy_whole(src, dst)


def same_bytes_before(src: Path, dst: Path, end: int) -> bool:
    """Whether both files hold the same bytes in the 64 KiB before `end`: `dst` is still a prefix
    of `src` (an append-only file cut back and grown again differs there: records carry times)."""
    start = max(0, end - _BOUNDARY)
    with open(src, "rb") as a, open(dst, "rb") as b:
        return os.pread(a.fileno(), end - start, start) == os.pread(b.fileno(), end - start, start)


def append_range(src: Path, dst: Path, start: int, end: int) -> int:
    """Append bytes [start, end) of `src` to `dst` (which has `start` bytes), fsync; on failure
    `dst` is cut back to `start`, so it never ends in a half-copied tail. The bytes copied."""
    if end <= start:
        return 0
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        try:
            fin.seek(start)
            fout.seek(start)
            left = end - start
            while left:
                chunk = fin.read(min(left, 1 << 20))
                if not chunk:
                    break
                fout.write(chunk)
                left -= len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            fout.truncate(start)
            raise
    return end - start - left


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final` (an old `final` is removed first), fsync the parent."""
    if final.exists():
        remove_dir(final)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def remove_dir(path: Path) -> None:
    """Remove a checkpoint directory without ever showing a half-deleted one under its name."""
    doomed = path.parent / f"{TMP_PREFIX}del-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _os_error_text(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
