"""Small tmpfs mounts for fault-injection tests: a disk that really fills up.

`Tmpfs(size_mb)` mounts a private tmpfs (root only) and can be grown or shrunk in place with
`resize()`, which is how the tests take space away and give it back while a run is going. Where
mounting is impossible (not root, no mount command) the `tmpfs` fixture skips with that reason;
in CI (`CI` set, running as root) an impossible mount fails instead, so the suite never passes by
skipping its fault tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


class MountError(RuntimeError):
    """The tmpfs could not be mounted here."""


class Tmpfs:
    """A tmpfs mounted at a fresh directory under /tmp; `path` is its root."""

    def __init__(self, size_mb: float):
        if os.geteuid() != 0:
            raise MountError("mounting a tmpfs needs root")
        if shutil.which("mount") is None:
            raise MountError("no mount command")
        self.path = Path(tempfile.mkdtemp(prefix="lh-tmpfs-", dir="/tmp"))
        self.mounted = False
        self._mount(size_mb)

    def _mount(self, size_mb: float) -> None:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k,mode=0755",
                                 "tmpfs", str(self.path)], capture_output=True, text=True)
        if result.returncode != 0:
            self.path.rmdir()
            raise MountError(f"mount -t tmpfs failed: {result.stderr.strip()}")
        self.mounted = True

    def resize(self, size_mb: float) -> None:
        """Grow or shrink in place (shrinking below what is used fails, as on a real disk)."""
        subprocess.run(["mount", "-o", f"remount,size={int(size_mb * 1024)}k", str(self.path)],
                       check=True, capture_output=True)

    def fill(self, leave_kb: int = 0, name: str = ".filler") -> Path:
        """Take all free space but `leave_kb` KiB with one file; delete it to give the space back."""
        filler = self.path / name
        free = shutil.disk_usage(self.path).free - leave_kb * 1024
        with open(filler, "ab") as fh:
            chunk = b"\0" * (1 << 20)
            while free > 0:
                try:
                    fh.write(chunk[:min(free, len(chunk))])
                    fh.flush()
                except OSError:
                    break
                free -= len(chunk)
        return filler

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
        try:
            self.path.rmdir()
        except OSError:
            pass


def mount_or_skip(size_mb: float) -> Tmpfs:
    try:
        return Tmpfs(size_mb)
    except MountError as exc:
        if os.environ.get("CI") and os.geteuid() == 0:
            raise  # CI runs as root: a fault test must not pass by skipping
        pytest.skip(f"cannot mount a tmpfs for fault injection: {exc}")


@pytest.fixture
def tmpfs():
    """Factory fixture: `tmpfs(size_mb)` -> Tmpfs, unmounted after the test."""
    mounts: list[Tmpfs] = []

    def make(size_mb: float = 40) -> Tmpfs:
        mount = mount_or_skip(size_mb)
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        mount.unmount()
