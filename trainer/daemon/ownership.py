"""One daemon per run: the run's lock file and its socket.

The live daemon holds an exclusive `flock` on RUN/.daemon.lock for its whole life. A socket left
by a dead daemon is removed; one that still answers means another daemon serves the run.
"""
from __future__ import annotations

import fcntl
import logging
import socket
import time
from pathlib import Path
from typing import Optional

from trainer.run.errors import RunError
from trainer.run.rundir import RunDir
from trainer.run.sockets import socket_path
from trainer.run.state import StateFile

log = logging.getLogger(__name__)


class DaemonError(RunError):
    """The daemon cannot start (run owned by another daemon, launch failed, ...)."""


class RunLock:
    """A daemon's hold on its run: the flock, and the socket path it alone may listen on."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.socket_file: Optional[Path] = None
        self._fh = None

    def acquire(self) -> Path:
        """Take the run's lock and its socket path, or raise DaemonError if another daemon has them."""
        fh = open(RunDir(self.run_dir).daemon_lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            pid = StateFile(self.run_dir).read().get("pid")
            raise DaemonError(f"run {self.run_dir.name} is already owned by a live daemon (pid {pid})") from None
        self._fh = fh
        try:
            self.socket_file = _claim_socket(socket_path(self.run_dir))
        except BaseException:
            self.release()
            raise
        return self.socket_file

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # releases the flock
            self._fh = None


def _claim_socket(path: Path) -> Path:
    """`path`, once a stale socket there is removed; DaemonError if a daemon answers on it."""
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise DaemonError(f"another daemon answers on {path}; not starting a second one")
        finally:
            probe.close()
    return path


def wait_for_exiting_daemon(run_dir: Path, timeout: float = 30.0) -> None:
    """A daemon whose run just stopped or finished still holds the run's lock for a moment
    (it flushes clients and caches the series): `stop` then `resume` must wait for it rather
    than fail with "already owned"."""
    deadline = time.monotonic() + timeout
    files = RunDir(run_dir)
    if not files.daemon_lock.exists():
        return  # no daemon has ever run here
    with open(files.daemon_lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DaemonError(f"the daemon of {run_dir.name} is still exiting after {timeout:.0f} s "
                                      f"(see {files.daemon_log})") from None
                time.sleep(0.05)
                continue
            fcntl.flock(fh, fcntl.LOCK_UN)
            return
