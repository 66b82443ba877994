"""Power-cut simulation: a FUSE pass-through file system that knows what was fsynced.

The model (as Jepsen's LazyFS and SQLite's crash tests use it): at a power cut every write not
yet fsynced is lost.

- A file's content survives only as of its last fsync (or fdatasync, or a write through an
  O_SYNC/O_DSYNC descriptor); a file never fsynced survives as 0 bytes, if its name survives.
- A directory entry (create, rename, unlink, mkdir) survives only if the directory was fsynced
  after it. So a temp file fsynced and renamed without a directory fsync keeps its old name, and
  a file renamed into place without fsyncing its content is 0 bytes.
- What was there when the file system was mounted starts durable.

Every program sees a normal file system: `DurableFS` writes through to a backing ("live")
directory and only keeps, on the side, the durable view: per file (an id the file system assigns,
which follows the file through renames) the content at its last fsync, and per directory its
name -> id map at its last fsync. `cut` materialises that view into a fresh directory; the tests
then mount it again and carry on, as after a reboot. Because this sits under the kernel's VFS it
sees every write of every process (torch.save's included), so no writer can escape the model.

Running: the file system is its own process (`python tests/powercut.py BACKING MOUNTPOINT`,
fusepy over libfuse2, single-threaded); `PowerCutMount` starts and stops it. The cut is asked for
with an extended attribute on the mount's root (``user.powercut.cut`` = target directory), which
returns only when the view is written. Mounting needs root, /dev/fuse, libfuse2 and fusepy:
`mount_or_skip` skips with the reason where that is impossible, and fails in CI as root.
"""
from __future__ import annotations

import ctypes.util
import errno
import importlib.util
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

CUT_XATTR = "user.powercut.cut"
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


# ============================================================================ the file system
def _file_system_class():
    """`DurableFS`, built on first use so that importing this module does not need fusepy."""
    from fuse import FuseOSError, Operations

    class DurableFS(Operations):
        use_ns = True

        def __init__(self, backing: str, mountpoint: str):
            self.backing = os.path.realpath(backing)
            self.mountpoint = os.path.realpath(mountpoint)
            self.next_id = 0
            self.ids: dict[str, int] = {}          # live path ("/a/b") -> id
            self.is_dir: dict[int, bool] = {}
            self.durable_dirs: dict[int, dict[str, int]] = {}     # dir id -> names at its last fsync
            self.durable_files: dict[int, tuple[bytes, int]] = {}  # file id -> (content, mode) at its last fsync
            self.handles: dict[int, tuple[int, bool]] = {}         # fh -> (file id, writes are synchronous)
            self._adopt_backing()

        # ------------------------------------------------------------------ ids and paths
        def _real(self, path: str) -> str:
            return self.backing + path

        def _new_id(self, path: str, is_dir: bool) -> int:
            self.next_id += 1
            self.ids[path] = self.next_id
            self.is_dir[self.next_id] = is_dir
            if is_dir:
                self.durable_dirs[self.next_id] = {}   # a new directory's entries are not durable yet
            return self.next_id

        def _adopt_backing(self) -> None:
            """Everything present at mount time is durable, as after a clean reboot."""
            self._new_id("/", True)
            for dirpath, dirnames, filenames in os.walk(self.backing):
                rel = os.path.relpath(dirpath, self.backing)
                rel = "/" if rel == "." else "/" + rel
                entries = {}
                for name in dirnames:
                    entries[name] = self._new_id(self._join(rel, name), True)
                for name in filenames:
                    full = os.path.join(dirpath, name)
                    file_id = self._new_id(self._join(rel, name), False)
                    with open(full, "rb") as fh:
                        self.durable_files[file_id] = (fh.read(), stat.S_IMODE(os.lstat(full).st_mode))
                    entries[name] = file_id
                self.durable_dirs[self.ids[rel]] = entries

        @staticmethod
        def _join(parent: str, name: str) -> str:
            return "/" + name if parent == "/" else f"{parent}/{name}"

        def _move_ids(self, old: str, new: str) -> None:
            """A rename: `new` (and, for a directory, everything below it) takes `old`'s ids."""
            for path in [p for p in self.ids if p == new or p.startswith(new + "/")]:
                del self.ids[path]
            for path in [p for p in self.ids if p == old or p.startswith(old + "/")]:
                self.ids[new + path[len(old):]] = self.ids.pop(path)

        def _forget_unreachable(self) -> None:
            """Drop durable content no live name and no durable directory can reach any more."""
            keep = set(self.ids.values())
            seen, todo = {self.ids["/"]}, [self.ids["/"]]
            while todo:   # every durably reachable directory, live or not, is walked
                for child in self.durable_dirs.get(todo.pop(), {}).values():
                    keep.add(child)
                    if self.is_dir.get(child) and child not in seen:
                        seen.add(child)
                        todo.append(child)
            for table in (self.durable_files, self.durable_dirs, self.is_dir):
                for node in [n for n in table if n not in keep]:
                    del table[node]

        # ------------------------------------------------------------------ durability
        def _record_file(self, fh: int) -> None:
            file_id, _ = self.handles[fh]
            size = os.fstat(fh).st_size
            chunks, offset = [], 0
            while offset < size:
                chunk = os.pread(fh, min(size - offset, 1 << 20), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            self.durable_files[file_id] = (b"".join(chunks), stat.S_IMODE(os.fstat(fh).st_mode))

        def _record_dir(self, path: str) -> None:
            self.durable_dirs[self.ids[path]] = {name: self.ids[self._join(path, name)]
                                                 for name in os.listdir(self._real(path))
                                                 if self._join(path, name) in self.ids}

        def materialise(self, target: str) -> None:
            """Write the durable view into `target` (a directory that does not exist yet)."""
            def build(dir_id: int, dest: str) -> None:
                os.mkdir(dest)
                for name, child in self.durable_dirs.get(dir_id, {}).items():
                    if self.is_dir.get(child):
                        build(child, os.path.join(dest, name))
                    else:
                        data, mode = self.durable_files.get(child, (b"", 0o644))
                        with open(os.path.join(dest, name), "wb") as out:
                            out.write(data)
                        os.chmod(os.path.join(dest, name), mode)
            build(self.ids["/"], target)

        # ------------------------------------------------------------------ metadata
        def getattr(self, path, fh=None):
            try:
                st = os.fstat(fh) if fh is not None and path is None else os.lstat(self._real(path))
            except FileNotFoundError:
                raise FuseOSError(errno.ENOENT)
            return {"st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
                    "st_uid": st.st_uid, "st_gid": st.st_gid, "st_atime": st.st_atime_ns,
                    "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._real(path))

        def statfs(self, path):
            sv = os.statvfs(self._real(path))
            return {key: getattr(sv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                      "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def chmod(self, path, mode):
            os.chmod(self._real(path), mode)

        def chown(self, path, uid, gid):
            os.chown(self._real(path), uid, gid)

        def utimens(self, path, times=None):
            os.utime(self._real(path), ns=times)

        def access(self, path, amode):
            if not os.access(self._real(path), amode):
                raise FuseOSError(errno.EACCES)

        # The kernel asks for security.capability on every write; ENOSYS makes it stop asking.
        def getxattr(self, path, name, position=0):
            raise FuseOSError(errno.ENOSYS)

        def listxattr(self, path):
            raise FuseOSError(errno.ENOSYS)

        def setxattr(self, path, name, value, options, position=0):
            if path == "/" and name == CUT_XATTR:
                target = os.path.realpath(value.decode())
                if target == self.mountpoint or target.startswith(self.mountpoint + "/"):
                    raise FuseOSError(errno.EINVAL)   # writing into our own mount would deadlock
                self.materialise(target)
                return 0
            raise FuseOSError(errno.ENOTSUP)

        # ------------------------------------------------------------------ namespace
        def mkdir(self, path, mode):
            os.mkdir(self._real(path), mode)
            self._new_id(path, True)

        def rmdir(self, path):
            os.rmdir(self._real(path))
            self.ids.pop(path, None)
            self._forget_unreachable()

        def unlink(self, path):
            os.unlink(self._real(path))
            self.ids.pop(path, None)
            self._forget_unreachable()

        def rename(self, old, new):
            os.rename(self._real(old), self._real(new))
            self._move_ids(old, new)
            self._forget_unreachable()

        def link(self, target, source):
            raise FuseOSError(errno.EPERM)   # one name per file keeps the model simple

        def symlink(self, target, source):
            raise FuseOSError(errno.EPERM)

        def mknod(self, path, mode, dev):
            raise FuseOSError(errno.EPERM)

        # ------------------------------------------------------------------ files
        def _open(self, path: str, flags: int, mode: int = 0o644) -> int:
            # Always read-write on the backing file, so fsync can read back what to keep; no
            # O_APPEND there, since the kernel already sends appends with their offset.
            keep = flags & (os.O_CREAT | os.O_EXCL | os.O_TRUNC)
            fd = os.open(self._real(path), os.O_RDWR | keep, mode)
            file_id = self.ids.get(path) or self._new_id(path, False)
            self.handles[fd] = (file_id, bool(flags & _SYNC_FLAGS))
            return fd

        def create(self, path, mode, fi=None):
            return self._open(path, os.O_CREAT, mode)

        def open(self, path, flags):
            return self._open(path, flags)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def write(self, path, data, offset, fh):
            written = os.pwrite(fh, data, offset)
            if self.handles[fh][1]:
                self._record_file(fh)
            return written

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._real(path), length)

        def flush(self, path, fh):
            return 0   # close() is no durability point

        def release(self, path, fh):
            self.handles.pop(fh, None)
            os.close(fh)

        def fsync(self, path, datasync, fh):
            self._record_file(fh)

        def fsyncdir(self, path, datasync, fh):
            self._record_dir(path)
            self._forget_unreachable()

    return DurableFS


def serve(backing: str, mountpoint: str) -> None:
    """Mount and serve until unmounted (foreground, one thread: requests never race)."""
    from fuse import FUSE

    FUSE(_file_system_class()(backing, mountpoint), mountpoint, foreground=True, nothreads=True, hard_remove=True,
         big_writes=True, max_write=131072, fsname="powercut")


# ============================================================================ test side
class MountError(RuntimeError):
    """The power-cut file system could not be mounted here."""


def unavailable_reason() -> Optional[str]:
    """Why a FUSE mount is impossible here, or None."""
    if os.geteuid() != 0:
        return "mounting the power-cut FUSE file system needs root (no fusermount is used)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if importlib.util.find_spec("fuse") is None:
        return "fusepy is not installed (pip install fusepy)"
    if not (os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library("fuse")):
        return "libfuse2 is not installed (apt-get install libfuse2)"
    return None


class PowerCutMount:
    """The file system over `backing`, mounted at `mountpoint` by a child process."""

    def __init__(self, backing: Path, mountpoint: Path, log: Path):
        self.backing, self.mountpoint, self.log = Path(backing), Path(mountpoint), Path(log)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log_fh:
            self.process = subprocess.Popen([sys.executable, __file__, str(self.backing), str(self.mountpoint)],
                                            stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise MountError(f"the FUSE file system did not mount at {self.mountpoint}: {self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def cut(self, target: Path) -> Path:
        """Materialise what a power cut would leave into `target` (must not exist yet). Stop
        every writer first: writes still in flight would race with the copy."""
        os.setxattr(self.mountpoint, CUT_XATTR, str(target).encode())
        return Path(target)

    def unmount(self) -> None:
        if self.process.poll() is None:
            subprocess.run(["umount", str(self.mountpoint)], capture_output=True)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
                self.process.kill()
                self.process.wait()


def mount_or_skip(backing: Path, mountpoint: Path, log: Path) -> PowerCutMount:
    """Mount, or skip the test saying why; in CI as root an impossible mount fails instead."""
    import pytest

    reason = unavailable_reason()
    in_ci_as_root = bool(os.environ.get("CI")) and os.geteuid() == 0
    if reason is None:
        try:
            return PowerCutMount(backing, mountpoint, log)
        except MountError as exc:
            reason = str(exc)
    if in_ci_as_root:
        pytest.fail(f"cannot mount the power-cut file system in CI as root: {reason}")
    pytest.skip(f"cannot mount the power-cut file system: {reason}")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
