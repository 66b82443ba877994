"""The per-run daemon: socket server for clients, supervisor of the trainer child process.

    longhaul start/resume -> launch_daemon(run_dir) -> python -m trainer.daemon RUN_DIR

One asyncio loop does everything:

- *Clients* connect to the run's Unix socket (`runs.socket_path`). Each connection is checked
  (SO_PEERCRED uid), must say `hello` within HANDSHAKE_TIMEOUT, gets a `welcome` with a snapshot,
  then a live stream. Every client has its own outgoing queue: `progress`/`system` are coalesced
  (latest wins), events/logs/acks are kept in order; a client whose backlog passes a bound is
  dropped. Nothing a client does (not reading, sending garbage) can block the loop, the worker or
  the other clients.
- *The worker* (`python -m trainer.worker RUN_DIR --control-fd N`) runs the engine and sends
  progress, events, history records and its plan over a socketpair; its stdout/stderr become
  RUN_DIR/train.log and `log` frames. A crash is reported and the worker restarted with
  exponential backoff (it resumes from its last checkpoint by itself) up to
  `daemon.max_restarts` consecutive crashes; then the run is `failed`.
- *Durable state*: every state transition is an `event` (kind `state`) appended to
  RUN_DIR/events.jsonl, and RUN_DIR/state.json (runs.StateFile) is rewritten at every transition
  and at most every STATE_WRITE_INTERVAL seconds from progress, so `longhaul status` works from
  files. Blocking file syncs run in a helper thread, never on the loop. events.jsonl, train.log
  and daemon.log are fsynced at each relayed checkpoint, final state and exit: a power cut does
  not take back the events that led up to the checkpoint a resume starts from.
- *A full disk* never stops the daemon: events are held in memory (eventlog.EventLog) and
  retried, train.log lines are counted as lost, state.json fields stay pending until a write
  succeeds; each file's failure and recovery is said once (daemon.log and an `alert` event).
- *A stop whose final checkpoint failed* (the trainer answers `request` outcome "failed" and
  trains on) puts the run back in the trainer's real state; a later stop tries again.

SIGTERM/SIGINT: stop the worker (it checkpoints and exits 0), state `stopped`, remove the socket.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import dataclasses
import errno
import fcntl
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from trainer import eventlog, protocol, runs
from trainer.protocol import ErrorCode, ProtocolError

log = logging.getLogger("trainer.daemon")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ".daemon.lock"
SNAPSHOT_EVENTS = 200
SNAPSHOT_LOGS = 200
MAX_LOG_LINE = 4096
STDERR_TAIL = 40


@dataclasses.dataclass
class Settings:
    """Tunables of one daemon; tests shrink them."""

    handshake_timeout: float = 10.0
    """Seconds a new connection has to complete its hello."""
    frame_timeout: float = 10.0
    """Seconds a client has to finish a frame it has started sending."""
    max_backlog: int = 4 * 1024 * 1024
    """Bytes of queued events/logs plus transport buffer after which a client is dropped."""
    stall_timeout: float = 120.0
    """Seconds a client may leave the socket unread before it is dropped even without backlog."""
    max_clients: int = 64
    state_write_interval: float = 2.0
    """Minimum seconds between state.json rewrites caused by progress alone."""
    progress_interval: float = 0.2
    """Minimum seconds between progress frames to clients: a small model steps far faster than
    anyone can read, and every frame costs the daemon and each client CPU."""
    stop_timeout: float = 900.0
    """Seconds the worker gets to checkpoint and exit after a stop before it is terminated."""
    kill_timeout: float = 30.0
    """Seconds between SIGTERM and SIGKILL of a worker that ignored the stop."""
    linger: float = 2.0
    """Seconds the daemon keeps flushing to clients after the run ended."""
    write_retry_interval: float = 2.0
    """Seconds between retries of the run files that could not be written (a full disk):
    events held in memory and the pending state.json fields."""


class DaemonError(runs.RunError):
    """The daemon cannot start (run owned by another daemon, launch failed, ...)."""


# ----------------------------------------------------------------------------- peer check
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def peer_uid(sock: socket.socket) -> int:
    """uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return uid


def peer_refusal(peer: int, owner: int) -> Optional[str]:
    """None when a peer with uid `peer` may talk to a daemon run by `owner`, else why not."""
    if peer == owner:
        return None
    return f"connection from uid {peer} refused: this run belongs to uid {owner}"


# ----------------------------------------------------------------------------- small helpers
def clean_line(raw: bytes) -> str:
    """A log line as shown: decoded, carriage-return progress bars reduced to their last state."""
    text = raw.decode(errors="replace").rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[1]
    if len(text) > MAX_LOG_LINE:
        text = text[:MAX_LOG_LINE] + " [...]"
    return text


def describe_exit(returncode: int) -> tuple[Optional[int], Optional[str], str]:
    """(signal number, signal name, human sentence) for a worker's return code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"trainer killed by {name}"
        if -returncode == signal.SIGKILL:
            text += " (possibly out of memory: check `dmesg` or `journalctl -k` for the OOM killer)"
        return -returncode, name, text
    return None, None, f"trainer exited with code {returncode}"


# ----------------------------------------------------------------------------- clients
class ClientConn:
    """One client connection: its outgoing queue and the task that writes it."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: Settings):
        self.number = number
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.client = "?"
        self.ordered: collections.deque[bytes] = collections.deque()
        self.ordered_bytes = 0
        self.latest: dict[str, bytes] = {}
        self.wake = asyncio.Event()
        self.closed = False
        self.close_reason = ""
        self.sender: Optional[asyncio.Task] = None
        self.allowance = 0  # the welcome's size: a big snapshot alone must not count as backlog

    def __repr__(self) -> str:
        return f"client #{self.number} ({self.client})"

    def backlog(self) -> int:
        """Bytes this client has not taken yet (our queue plus the transport's buffer, less the
        welcome frame it is still allowed to be reading)."""
        return self.ordered_bytes + max(0, self.writer.transport.get_write_buffer_size() - self.allowance)

    def push(self, data: bytes, after_latest: bool = False) -> None:
        """Queue an ordered frame; drop the client if that puts it over its backlog bound.
        `after_latest`: send the pending coalesced frames first (an event must not overtake
        the progress that came before it)."""
        if self.closed:
            return
        if after_latest and self.latest:
            for pending in self.latest.values():
                self.ordered.append(pending)
                self.ordered_bytes += len(pending)
            self.latest.clear()
        self.ordered.append(data)
        self.ordered_bytes += len(data)
        if self.backlog() > self.settings.max_backlog:
            self.abort(f"too slow: {self.backlog()} bytes not read (limit {self.settings.max_backlog})")
            return
        self._send_or_wake()

    def push_latest(self, kind: str, data: bytes) -> None:
        """Queue a coalesced frame: replaces an unsent one of the same kind."""
        if self.closed:
            return
        self.latest[kind] = data
        self._send_or_wake()

    def _backed_up(self) -> bool:
        transport = self.writer.transport
        return transport.get_write_buffer_size() - self.allowance > transport.get_write_buffer_limits()[1]

    def _send_or_wake(self) -> None:
        """A client that keeps up gets its frames handed to the transport at once: waking a
        sender task per frame per client cost the daemon more CPU than the frames themselves.
        Only a backed-up client (transport over its high-water mark) waits for the sender
        task, and meanwhile its progress and system frames coalesce."""
        if self._backed_up():
            self.wake.set()
        else:
            self._write_queued()

    def _write_queued(self) -> None:
        """Everything queued, in order, in one write (one syscall, not one per frame)."""
        chunks = list(self.ordered) + list(self.latest.values())
        self.ordered.clear()
        self.ordered_bytes = 0
        self.latest.clear()
        if chunks:
            self.writer.write(b"".join(chunks))

    def idle(self) -> bool:
        return not self.ordered and not self.latest and self.writer.transport.get_write_buffer_size() == 0

    async def send_loop(self) -> None:
        """Writes for a backed-up client once its transport has drained below the low-water mark."""
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                while not self.closed and (self.ordered or self.latest):
                    await asyncio.wait_for(self.writer.drain(), self.settings.stall_timeout)
                    if self.closed:
                        break
                    self._write_queued()
        except TimeoutError:
            self.abort(f"stalled: nothing read for {self.settings.stall_timeout:.0f} s")
        except (ConnectionError, OSError) as exc:
            self.abort(f"write failed: {exc}")

    def abort(self, reason: str) -> None:
        """Drop the connection at once (unsent data is discarded)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.info("%r disconnected: %s", self, reason)
        self.ordered.clear()
        self.ordered_bytes = 0
        self.latest.clear()
        self.writer.transport.abort()
        self.wake.set()


@dataclasses.dataclass
class Pending:
    """A request forwarded to the worker, waiting for its completion event."""

    conn: Optional[ClientConn]
    client_id: int
    action: str


# ----------------------------------------------------------------------------- the daemon
class Daemon:
    """Owns one run directory while it trains. `await Daemon(run_dir).run()` -> exit code."""

    def __init__(self, run_dir: Path, worker_argv: Optional[list[str]] = None,
                 settings: Optional[Settings] = None,
                 peer_uid_fn: Callable[[socket.socket], int] = peer_uid, owner_uid: Optional[int] = None):
        self.run_dir = Path(run_dir).absolute()
        self.worker_argv = worker_argv or [sys.executable, "-m", "trainer.worker"]
        self.settings = settings or Settings()
        self.peer_uid_fn = peer_uid_fn
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.name = self.run_dir.name
        self.state_file = runs.StateFile(self.run_dir)
        self.state: Optional[str] = None
        self.cfg = None
        # what a welcome snapshot is made of
        self.plan_body: Optional[dict] = None
        self.progress: Optional[dict] = None
        self.system: Optional[dict] = None
        self.series = None
        self.eval_last: Optional[dict] = None
        self.eval_best: Optional[dict] = None
        self.events: collections.deque = collections.deque(maxlen=SNAPSHOT_EVENTS)
        self.logs: collections.deque = collections.deque(maxlen=SNAPSHOT_LOGS)
        self.log_seq = 0
        # clients
        self.clients: set[ClientConn] = set()
        self._conn_numbers = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.pending: dict[int, Pending] = {}
        # worker
        self.worker: Optional[asyncio.subprocess.Process] = None
        self.worker_writer: Optional[asyncio.StreamWriter] = None
        self.worker_last_state: Optional[str] = None
        self.worker_traceback: Optional[str] = None
        self.worker_checkpointed = False
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL)
        self.series_reload_pending = False
        self.restart_pending = False
        # lifecycle
        self.shutting_down = False
        self.stop_reason: Optional[str] = None
        self.stop_event = asyncio.Event()
        self.socket_file: Optional[Path] = None
        self._socket_inode: Optional[int] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._lock_fh = None
        self.eventlog: Optional[eventlog.EventLog] = None
        self.train_log: Optional[eventlog.AppendFile] = None
        self._daemon_log_fd: Optional[int] = None
        self._unwritable: set[str] = set()  # run files that cannot be written now (said once)
        self._state_pending: dict = {}  # state.json fields a failed write still owes (I/O thread)
        self._stop_timer: Optional[asyncio.Task] = None
        self.last_checkpoint_failed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="daemon-io")
        self._io_futures: list[concurrent.futures.Future] = []
        self._last_progress_write = 0.0
        self._last_progress_sent = 0.0
        self._pending_progress: Optional[dict] = None
        self._progress_timer: Optional[asyncio.TimerHandle] = None
        self._tasks: set[asyncio.Task] = set()

    # ================================================================= lifecycle
    async def run(self, install_signals: bool = False) -> int:
        """Serve the run until it finishes, stops or fails. Returns the process exit code
        (0 finished/stopped, 1 failed). Raises DaemonError when the run is owned elsewhere."""
        try:
            self._acquire_run()
        except BaseException:
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None
            raise
        loop = self._loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.shutdown, f"signal {sig.name}")
        try:
            return await self._run()
        finally:
            await self._close()

    async def _run(self) -> int:
        self._load_recent()
        self.eventlog = eventlog.EventLog(self.run_dir / "events.jsonl").open()
        self.train_log = eventlog.AppendFile(self.run_dir / "train.log").open()
        self._daemon_log_fd = self._find_daemon_log()
        self._spawn(self._retry_writes())
        self._set_state("starting", f"daemon started (pid {os.getpid()})", data={"pid": os.getpid()}, pid=os.getpid(),
                        socket=str(self.socket_file), stop_reason=None, name=self.name)
        try:
            from trainer.config import load_config

            self.cfg = load_config(self.run_dir / runs.CONFIG_FILE, check_paths=False, check_model=False)
        except Exception as exc:  # ConfigError or unreadable file: nothing to supervise
            self._set_state("failed", f"cannot load the run's config: {exc}", level="error")
            return 1
        await self._load_history()
        self._load_plan_file()
        await self._serve()
        sampler = self._spawn(self._sample_system())
        final = await self._supervise()
        sampler.cancel()
        await self._linger()
        await self._prime_series_cache()
        return 0 if final in ("finished", "stopped") else 1

    def _acquire_run(self) -> None:
        """Take the run's lock and its socket path, or raise DaemonError if another daemon has them."""
        self._lock_fh = open(self.run_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            pid = self.state_file.read().get("pid")
            raise DaemonError(f"run {self.name} is already owned by a live daemon (pid {pid})") from None
        self.socket_file = runs.socket_path(self.run_dir)
        if self.socket_file.exists() or self.socket_file.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket_file))
            except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
                log.info("removing stale socket %s", self.socket_file)
                self.socket_file.unlink(missing_ok=True)
            else:
                raise DaemonError(f"another daemon answers on {self.socket_file}; not starting a second one")
            finally:
                probe.close()

    async def _serve(self) -> None:
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for other users
        try:
            self._server = await asyncio.start_unix_server(self._on_client, path=str(self.socket_file))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_file, 0o600)
        self._socket_inode = os.stat(self.socket_file).st_ino
        log.info("listening on %s", self.socket_file)

    def shutdown(self, reason: str = "shutdown") -> None:
        """Stop the run (signal handler; also callable from tests via call_soon_threadsafe)."""
        if self.shutting_down:
            log.warning("%s: already stopping", reason)
            return
        log.info("%s: stopping the run", reason)
        self.shutting_down = True
        self.stop_reason = reason
        if self.worker is not None and self.worker_writer is not None:
            self._begin_stop(Pending(None, 0, "stop"), reason)
        self.stop_event.set()

    def _begin_stop(self, pending: Pending, reason: str) -> None:
        """Ask the worker to checkpoint and stop; terminate it if it takes too long."""
        self.stop_reason = reason
        self._forward(pending)
        text = "stop requested" if reason == "request" else reason
        self._set_state("stopping", f"{text}: checkpointing and stopping", stop_reason=reason)
        self._cancel_stop_timer()
        self._stop_timer = self._spawn(self._enforce_stop_timeout(self.worker))

    def _cancel_stop_timer(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None

    def _on_stop_failed(self, text: str) -> None:
        """The trainer could not write its final checkpoint and kept training instead of
        stopping: show the state it is really in, and let a later stop try again. A daemon that
        is shutting down must still end: it terminates the worker, whose own stop ends the run
        with or without a checkpoint (the final state then says the checkpoint failed)."""
        self._cancel_stop_timer()
        if self.shutting_down:
            log.warning("the trainer refused to stop (%s): terminating it", text)
            if self.worker is not None:
                self._signal_worker(self.worker, signal.SIGTERM)
                self._stop_timer = self._spawn(self._enforce_stop_timeout(self.worker))
            return
        self.stop_reason = None
        state = self.worker_last_state if self.worker_last_state in ("running", "paused") else "running"
        self._set_state(state, f"stop failed, training goes on: {text}", level="warning", stop_reason=None)

    async def _enforce_stop_timeout(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), self.settings.stop_timeout)
        except TimeoutError:
            log.error("worker did not stop within %.0f s: terminating it", self.settings.stop_timeout)
            self._signal_worker(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.kill_timeout)
            except TimeoutError:
                self._signal_worker(proc, signal.SIGKILL)

    async def _linger(self) -> None:
        """Give clients a moment to receive the final events."""
        deadline = time.monotonic() + self.settings.linger
        while time.monotonic() < deadline and any(not c.closed and not c.idle() for c in self.clients):
            await asyncio.sleep(0.05)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.clients):
            conn.abort("daemon exiting")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.socket_file is not None and self._socket_inode is not None:
            try:
                if os.stat(self.socket_file).st_ino == self._socket_inode:
                    self.socket_file.unlink()
            except FileNotFoundError:
                pass
        if self.eventlog is not None and not self.eventlog.retry():
            log.error("%d event(s) could not be written to events.jsonl before exit (%s); clients got them",
                      self.eventlog.held, self.eventlog.error)
        self._sync_journals()  # a power cut after we are gone loses nothing we wrote
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)
        for fh in (self.eventlog, self.train_log):
            if fh is not None:
                fh.close()
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon task failed", exc_info=task.exception())

    # ================================================================= durable state
    def _write_state(self, **fields: Any) -> None:
        """Merge fields into state.json from the I/O thread (in submission order)."""
        self._io_futures = [f for f in self._io_futures if not f.done()]
        self._io_futures.append(self._io.submit(self._write_state_now, fields))

    def _write_state_now(self, fields: dict) -> None:
        """In the I/O thread. A write that fails (a full disk) keeps the wanted fields pending:
        the next write or the retry timer writes them, so state.json ends up true."""
        wanted = {**self._state_pending, **fields}
        if not wanted:
            return
        try:
            self.state_file.update(**wanted)
        except OSError as exc:
            if not self._state_pending:  # the first failure: say it once
                self._loop.call_soon_threadsafe(self._note_write, runs.STATE_FILE, exc)
            self._state_pending = wanted
            return
        if self._state_pending:
            self._state_pending = {}
            self._loop.call_soon_threadsafe(self._note_write, runs.STATE_FILE, None)

    async def _retry_writes(self) -> None:
        """While the disk is full: retry the held events and the pending state.json fields."""
        while True:
            await asyncio.sleep(self.settings.write_retry_interval)
            if self.eventlog.held:
                self.eventlog.retry()
                self._note_events_written()
            if self._state_pending:
                self._write_state()

    def _note_write(self, name: str, error: Optional[OSError], lost: int = 0) -> None:
        """Say once (daemon.log and an `alert` event) that a run file cannot be written, and once
        that it is written again, with what was lost meanwhile."""
        if error is not None:
            if name in self._unwritable:
                return
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            why = error.strerror or str(error)
            self._unwritable.add(name)
            consequence = {"events.jsonl": "events are kept in memory until it can be written again",
                           "train.log": "the trainer's output is not being logged (lines are counted)",
                           runs.STATE_FILE: "it is retried until it can be written"}.get(name, "")
            text = f"cannot write {self.run_dir / name}: {why}; {consequence}"
            log.error("%s", text)
            self._emit("alert", "error", text, {"what": "disk_full" if full else "write_failed", "file": name,
                                                "errno": error.errno})
        elif name in self._unwritable:
            self._unwritable.discard(name)
            text = f"{self.run_dir / name} is written again" + (f"; {lost} line(s) were lost meanwhile" if lost else "")
            log.warning("%s", text)
            self._emit("alert", "warning" if lost else "info", text, {"what": "write_resumed", "file": name,
                                                                      "lost": lost})

    def _find_daemon_log(self) -> Optional[int]:
        """fd 2 when it is this run's daemon.log (a launched daemon), so it is fsynced too."""
        try:
            ours, log_file = os.fstat(2), os.stat(self.run_dir / "daemon.log")
        except OSError:
            return None
        return 2 if (ours.st_dev, ours.st_ino) == (log_file.st_dev, log_file.st_ino) else None

    def _sync_journals(self) -> None:
        """fsync events.jsonl, train.log and daemon.log in the I/O thread: after a checkpoint,
        a final state or the daemon's exit, a power cut must not take back what led up to it."""
        self._io_futures = [f for f in self._io_futures if not f.done()]
        self._io_futures.append(self._io.submit(self._sync_now))

    def _sync_now(self) -> None:
        for name, fh in (("events.jsonl", self.eventlog), ("train.log", self.train_log)):
            if fh is None:
                continue
            try:
                fh.sync()
            except OSError as exc:
                log.warning("cannot fsync %s: %s", name, exc)
        if self._daemon_log_fd is not None:
            try:
                sys.stderr.flush()
                os.fsync(self._daemon_log_fd)
            except (OSError, ValueError) as exc:
                log.warning("cannot fsync daemon.log: %s", exc)

    def _set_state(self, state: str, message: Optional[str] = None, level: str = "info",
                   data: Optional[dict] = None, at: Optional[float] = None, **fields: Any) -> None:
        """Enter `state`: a `state` event (file + clients) and a state.json write. A repeated
        state is not a transition and is ignored."""
        data = {**(data or {}), "state": state}
        # Why the run is paused (a request, or the trainer's own pause on a full disk), for
        # `status` and clients; cleared by any other state.
        fields["pause_reason"] = (data.get("reason") or "request") if state == "paused" else None
        if state == "running" and state != self.state:
            # the trainer runs: this start lived, so the count of deaths at start is over
            fields = {"launch_failures": 0, "launch_error": None, **fields}
        if state == self.state:
            if state == "paused" or len(fields) > 1:
                self._write_state(**fields)
            return
        if state == "stopped" and self.last_checkpoint_failed:
            level = "warning"
            message = (f"{message or state}; the last checkpoint failed, so a resume starts from the "
                       "checkpoint before it")
            data["checkpoint_failed"] = True
        self.state = state
        self._emit("state", level, message or state, data, at=at)
        progress = runs.progress_fields(self.progress) if self.progress else {}
        self._write_state(**progress, state=state, **fields)
        if state in runs.FINAL_STATES:
            self._sync_journals()

    def _emit(self, kind: str, level: str, message: str, data: dict, at: Optional[float] = None) -> dict:
        """Number an event, append it to events.jsonl and send it to every client. A full
        disk never stops an event: the log holds it in memory and clients get it at once."""
        level = level if level in protocol.LEVELS else "info"
        body = self.eventlog.add(kind, level, message, data, at=at)
        self.events.append(body)
        self._broadcast({"type": "event", **body})
        self._note_events_written()
        return body

    def _note_events_written(self) -> None:
        error = self.eventlog.error
        self._note_write("events.jsonl", error, lost=0 if error else self.eventlog.file.take_lost())

    # ================================================================= startup data
    def _load_recent(self) -> None:
        """Recent events and log lines from the files, for snapshots (EventLog continues the seq)."""
        for body in eventlog.read_tail(self.run_dir / "events.jsonl", SNAPSHOT_EVENTS):
            body.pop("type", None)
            try:
                protocol.validate({"type": "event", **body})
            except ProtocolError:
                continue
            self.events.append(body)
        log_path = self.run_dir / "train.log"
        mtime = log_path.stat().st_mtime if log_path.exists() else time.time()
        for line in runs.tail_lines(log_path, SNAPSHOT_LOGS):
            self.log_seq += 1
            self.logs.append({"seq": self.log_seq, "time": mtime, "stream": "stdout", "line": clean_line(line.encode())})

    async def _load_history(self) -> None:
        from trainer.history import SeriesSet, load_series

        monitor = self.cfg.eval.monitor_rule
        path = self.run_dir / "history.msgpack"
        try:
            self.series = await asyncio.to_thread(load_series, path, monitor)
        except Exception as exc:  # a damaged history must not keep the run from training
            log.error("cannot load %s: %s", path, exc)
            self._emit("alert", "warning", f"history not loaded for the dashboard: {exc}", {"what": "history"})
            self.series = SeriesSet(monitor)
        self._after_series_load()

    async def _prime_series_cache(self) -> None:
        """The run is over: leave its downsampled series beside the history, so that attaching
        to it later does not re-read a history of millions of steps (history.load_summary)."""
        from trainer.history import load_summary

        path = self.run_dir / "history.msgpack"
        try:
            await asyncio.to_thread(load_summary, path, self.cfg.eval.monitor_rule)
        except Exception as exc:  # only a cache: the next reader builds it
            log.warning("could not cache the series of %s: %s", path, exc)

    def _after_series_load(self) -> None:
        self.eval_last = self.series.last_eval
        self.eval_best = self.series.best_eval

    def _load_plan_file(self) -> None:
        path = self.run_dir / "plan.json"
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return
        if isinstance(body, dict) and isinstance(body.get("plan"), dict):
            self.plan_body = {"plan": body["plan"], "config": body.get("config") or {}}

    def _config_summary(self) -> dict:
        summary = self.cfg.summary()
        if self.plan_body:
            summary.update(self.plan_body.get("config") or {})
        return summary

    def snapshot(self) -> dict:
        """What a new client needs to draw everything before the live stream starts."""
        return {
            "state": self.state or "starting",
            "config": self._config_summary(),
            "plan": (self.plan_body or {}).get("plan") or {},
            "progress": self.progress,
            "series": self.series.snapshot_series() if self.series is not None else {},
            "eval": {"last": self.eval_last, "best": self.eval_best},
            "events": list(self.events),
            "logs": list(self.logs),
            "system": self.system,
        }

    def _flush_progress(self) -> None:
        """Send the newest progress held back by the rate limit (if any)."""
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        msg, self._pending_progress = self._pending_progress, None
        if msg is not None:
            self._last_progress_sent = time.monotonic()
            self._broadcast(msg, coalesce=True)

    # ================================================================= clients
    def _broadcast(self, msg: dict, coalesce: bool = False) -> None:
        if msg["type"] == "event" and self._pending_progress is not None:
            self._flush_progress()  # an event must not overtake the progress that preceded it
        if not self.clients:
            return
        try:
            data = protocol.encode(msg, protocol.MAX_SERVER_FRAME)
        except ProtocolError as exc:
            log.error("not sent to clients: %s", exc)
            return
        for conn in list(self.clients):
            if coalesce:
                conn.push_latest(msg["type"], data)
            else:
                conn.push(data, after_latest=msg["type"] == "event")
            if conn.closed:
                self.clients.discard(conn)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConn(next(self._conn_numbers), reader, writer, self.settings)
        try:
            await self._serve_client(conn)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the client went away
        except Exception:
            log.exception("%r: internal error", conn)
            await self._refuse(conn, ErrorCode.INTERNAL, "internal error in the daemon (see daemon.log)")
        finally:
            self.clients.discard(conn)
            if conn.sender is not None:
                conn.sender.cancel()
            if not conn.closed:
                conn.closed = True
                writer.close()

    async def _serve_client(self, conn: ClientConn) -> None:
        reason = peer_refusal(self.peer_uid_fn(conn.writer.get_extra_info("socket")), self.owner_uid)
        if reason is None and len(self.clients) >= self.settings.max_clients:
            reason = f"too many clients ({self.settings.max_clients})"
        if reason is not None:
            log.warning("%r: %s", conn, reason)
            await self._refuse(conn, "forbidden", reason)
            return
        try:
            hello = await asyncio.wait_for(self._read_client_frame(conn), self.settings.handshake_timeout)
            protocol.check_hello(hello)
        except TimeoutError:
            await self._refuse(conn, ErrorCode.NOT_HELLO, f"no hello within {self.settings.handshake_timeout:.0f} s")
            return
        except ProtocolError as exc:
            await self._refuse(conn, exc.code, exc.message)
            return
        conn.client = hello["client"][:64]
        # Snapshot, welcome and registration happen without an await in between, so the client
        # misses no event and sees none twice.
        try:
            welcome = protocol.encode(protocol.welcome(self._run_info(), self.snapshot()), protocol.MAX_SERVER_FRAME)
        except ProtocolError as exc:
            log.error("cannot build the welcome snapshot: %s", exc)
            await self._refuse(conn, ErrorCode.INTERNAL, f"cannot build the snapshot: {exc}")
            return
        conn.writer.write(welcome)
        conn.allowance = len(welcome)
        self.clients.add(conn)
        conn.sender = asyncio.create_task(conn.send_loop())
        log.info("%r attached", conn)
        while not conn.closed:
            try:
                msg = await self._read_client_frame(conn, idle=True)
            except TimeoutError:
                await self._refuse(conn, ErrorCode.BAD_FRAME, "frame not completed within "
                                   f"{self.settings.frame_timeout:.0f} s")
                return
            except ProtocolError as exc:
                await self._refuse(conn, exc.code, exc.message)
                return
            match msg["type"]:
                case "request":
                    self._on_request(conn, msg["id"], msg["action"])
                case "ping":
                    conn.push(protocol.encode(protocol.pong(), protocol.MAX_SERVER_FRAME))
                case _:
                    await self._refuse(conn, ErrorCode.UNEXPECTED_TYPE, f"{msg['type']!r} is only valid as the first frame")
                    return

    async def _read_client_frame(self, conn: ClientConn, idle: bool = False) -> dict:
        """One frame from a client. Waiting for a frame to start has no time limit when `idle`;
        once its first byte is in, the rest must follow within frame_timeout (no half frames)."""
        first = await conn.reader.readexactly(1)
        timeout = self.settings.frame_timeout
        header = first + await asyncio.wait_for(conn.reader.readexactly(protocol.HEADER_SIZE - 1), timeout)
        (length,) = struct.unpack(">I", header)
        if length > protocol.MAX_CLIENT_FRAME:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                f"frame of {length} bytes announced, limit is {protocol.MAX_CLIENT_FRAME}")
        payload = await asyncio.wait_for(conn.reader.readexactly(length), timeout)
        return protocol.decode_payload(payload, protocol.CLIENT_TO_DAEMON)

    async def _refuse(self, conn: ClientConn, code: str, text: str) -> None:
        """Send an error frame and close this connection only."""
        if conn.closed:
            return
        log.info("%r: closing with %s: %s", conn, code, text)
        self.clients.discard(conn)
        conn.closed = True
        try:
            conn.writer.write(protocol.encode(protocol.error(code, text), protocol.MAX_SERVER_FRAME))
            conn.writer.close()
            await asyncio.wait_for(conn.writer.wait_closed(), 2.0)
        except (TimeoutError, ConnectionError, OSError):
            conn.writer.transport.abort()

    def _run_info(self) -> dict:
        return {"name": self.name, "dir": str(self.run_dir), "daemon_pid": os.getpid()}

    # ================================================================= requests
    def _ack(self, conn: ClientConn, request_id: int, ok: bool, text: str) -> None:
        conn.push(protocol.encode(protocol.ack(request_id, ok, text), protocol.MAX_SERVER_FRAME))

    def _refusal(self, action: str) -> Optional[str]:
        """Why `action` cannot be done now (None: it can)."""
        if self.worker is None or self.worker_writer is None:
            if action == "stop" and self.restart_pending:
                return None
            return f"no trainer is running (run is {self.state})"
        if self.shutting_down or self.state == "stopping":
            return "the run is already stopping"
        pending = {p.action for p in self.pending.values()}
        if action == "pause" and (self.state == "paused" or "pause" in pending):
            return "already paused"
        if action == "resume" and self.state != "paused" and "pause" not in pending:
            return f"not paused (run is {self.state})"
        return None

    def _on_request(self, conn: ClientConn, request_id: int, action: str) -> None:
        reason = self._refusal(action)
        if reason is not None:
            self._ack(conn, request_id, False, reason)
            return
        if self.worker is None:  # stop while a restart is pending: cancel it
            self.stop_reason = "request"
            self.stop_event.set()
            self._ack(conn, request_id, True, "restart cancelled")
            self._emit("request", "info", "stop: restart cancelled", {"id": request_id, "action": action, "outcome": "done"})
            return
        if action == "stop":
            self._begin_stop(Pending(conn, request_id, action), "request")
        else:
            self._forward(Pending(conn, request_id, action))
        self._ack(conn, request_id, True, f"{action} sent to the trainer")

    def _forward(self, pending: Pending) -> None:
        worker_id = next(self._request_ids)
        self.pending[worker_id] = pending
        try:
            self.worker_writer.write(protocol.encode(protocol.control(worker_id, pending.action), protocol.MAX_CLIENT_FRAME))
        except (ConnectionError, OSError) as exc:  # the exit handler reports the worker's end
            log.warning("cannot forward %s to the worker: %s", pending.action, exc)

    def _map_request_ids(self, kind: str, data: dict) -> Optional[Pending]:
        """Worker events name requests by the daemon's ids: give each client its own id back.
        Returns the request this event completes (a `request` event, or a `state` event that
        answers a pause/resume), else None."""
        key = "id" if kind == "request" else "request_id"
        worker_id = data.get(key)
        if not isinstance(worker_id, int) or worker_id not in self.pending:
            return None
        pending = self.pending[worker_id]
        data[key] = pending.client_id
        if kind in ("request", "state"):
            return self.pending.pop(worker_id)
        return None

    def _finish_pending(self, final_state: str) -> None:
        """Complete requests the worker never answered (it exited first)."""
        for pending in self.pending.values():
            if pending.action == "stop" and final_state in ("stopped", "finished"):
                outcome, text = "done", f"stop: run {final_state}"
            else:
                outcome, text = "failed", f"{pending.action}: trainer exited before doing it"
            self._emit("request", "info" if outcome == "done" else "warning", text,
                       {"id": pending.client_id, "action": pending.action, "outcome": outcome})
        self.pending.clear()

    # ================================================================= the worker
    def _worker_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    async def _supervise(self) -> str:
        """Run the worker until the run ends; returns the final state."""
        daemon_cfg = self.cfg.daemon
        crashes = 0
        while True:
            if self.stop_event.is_set():  # stopped before the first worker started
                self._set_state("stopped", f"{self.stop_reason}: stopped before training started",
                                stop_reason=self.stop_reason)
                return "stopped"
            returncode = await self._run_worker()
            # "failed" from a clean exit: the trainer decided (e.g. no best checkpoint); no restart
            if returncode == 0 and self.worker_last_state in ("finished", "stopped", "failed"):
                final = self.worker_last_state
                self._finish_pending(final)
                self._set_state(final, stop_reason=self.stop_reason if final == "stopped" else None)
                return final
            self._report_crash(returncode)
            if self.shutting_down or self.stop_reason == "request":
                self._finish_pending("stopped")
                self._set_state("stopped", "stopped (the trainer did not exit cleanly)", level="warning",
                                stop_reason=self.stop_reason)
                return "stopped"
            self._finish_pending("failed")
            # A crash after the worker made durable progress starts a new count: a rare crash
            # in a weeks-long run should not use up the budget of a crash loop.
            crashes = 1 if self.worker_checkpointed else crashes + 1
            if crashes > daemon_cfg.max_restarts:
                self._set_state("failed", f"giving up after {crashes - 1} restart(s): the trainer keeps crashing "
                                "(see train.log)", level="error")
                return "failed"
            delay = min(daemon_cfg.backoff_seconds * 2 ** (crashes - 1), daemon_cfg.backoff_max_seconds)
            self._emit("restart", "warning", f"restarting the trainer in {delay:.0f} s (attempt {crashes} of "
                       f"{daemon_cfg.max_restarts})", {"attempt": crashes, "delay": delay,
                                                       "max_restarts": daemon_cfg.max_restarts})
            self._set_state("starting", f"restarting after a crash in {delay:.0f} s")
            self.restart_pending = True
            try:
                await asyncio.wait_for(self.stop_event.wait(), delay)
            except TimeoutError:
                pass
            self.restart_pending = False
            if self.stop_event.is_set():
                self._set_state("stopped", "stopped while waiting to restart", stop_reason=self.stop_reason)
                return "stopped"

    def _report_crash(self, returncode: Optional[int]) -> None:
        signum = signame = None
        if returncode is None:
            text = "trainer could not be started"
        elif returncode == 0:
            text = "trainer exited with code 0 without reporting finished or stopped"
        else:
            signum, signame, text = describe_exit(returncode)
        trace = self.worker_traceback or "\n".join(self.stderr_tail)
        if self.worker_traceback:
            last = self.worker_traceback.strip().splitlines()[-1:]
            text += f": {last[0]}" if last else ""
        self._emit("crash", "error", text, {"returncode": returncode, "signal": signum, "signal_name": signame,
                                             "traceback": trace})

    async def _run_worker(self) -> Optional[int]:
        """Start the worker, relay it until it exits, return its exit code (None: no start)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [*self.worker_argv, str(self.run_dir), "--control-fd", str(child.fileno())]
        self.worker_last_state = None
        self.worker_traceback = None
        self.worker_checkpointed = False
        self.series_reload_pending = True
        self.stderr_tail.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(child.fileno(),), env=self._worker_env(), cwd=str(self.run_dir))
        except OSError as exc:
            parent.close()
            self.stderr_tail.append(f"cannot start {argv[0]}: {exc}")
            return None
        finally:
            child.close()
        log.info("worker started (pid %d)", proc.pid)
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        self.worker, self.worker_writer = proc, writer
        if self.shutting_down:  # the signal came while the worker was being started
            self._begin_stop(Pending(None, 0, "stop"), self.stop_reason)
        relays = [asyncio.create_task(self._pump_output(proc.stdout, "stdout")),
                  asyncio.create_task(self._pump_output(proc.stderr, "stderr")),
                  asyncio.create_task(self._read_worker(reader, proc))]
        returncode = await proc.wait()
        log.info("worker %d exited with %d", proc.pid, returncode)
        self.worker, self.worker_writer = None, None  # requests from now on are refused
        # Drain what the worker sent before exiting; children it left behind may hold the
        # pipes open, hence the timeout.
        _done, late = await asyncio.wait(relays, timeout=5.0)
        for task in late:
            task.cancel()
        writer.close()
        if self.progress is not None:
            self._write_state(**runs.progress_fields(self.progress))
        return returncode

    @staticmethod
    def _signal_worker(proc: asyncio.subprocess.Process, sig: int) -> None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass

    async def _read_worker(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        while True:
            try:
                msg = await protocol.read_frame(reader, protocol.MAX_SERVER_FRAME, protocol.WORKER_TO_DAEMON)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except ProtocolError as exc:
                self._emit("alert", "error", f"the trainer sent a bad frame ({exc}); restarting it",
                           {"what": "worker_protocol"})
                self._signal_worker(proc, signal.SIGTERM)
                return
            try:
                await self._on_worker_frame(msg)
            except Exception:
                log.exception("failed to handle a %s frame from the worker", msg.get("type"))

    async def _on_worker_frame(self, msg: dict) -> None:
        match msg["type"]:
            case "progress":
                self._on_progress(msg)
            case "event":
                self._on_worker_event(msg)
            case "record":
                await self._on_record(msg["record"])
            case "plan":
                self.plan_body = {"plan": msg["plan"], "config": msg["config"]}
                # clients that attached before the trainer laid out its plan need it too
                self._broadcast({"type": "plan", **self.plan_body}, coalesce=True)
            case "ack":
                if not msg["ok"]:
                    data = {"id": msg["id"], "outcome": "refused"}
                    pending = self.pending.get(msg["id"])
                    if pending is not None:
                        data["action"] = pending.action
                    self._map_request_ids("request", data)
                    self._emit("request", "warning", msg["message"] or "request refused by the trainer", data)

    def _on_progress(self, msg: dict) -> None:
        self.progress = {k: v for k, v in msg.items() if k != "type"}
        if self.state == "starting":
            self._set_state("running", "training")
        self._pending_progress = msg
        now = time.monotonic()
        wait = self.settings.progress_interval - (now - self._last_progress_sent)
        if wait <= 0:
            self._flush_progress()
        elif self._progress_timer is None:
            self._progress_timer = asyncio.get_running_loop().call_later(wait, self._flush_progress)
        if now - self._last_progress_write >= self.settings.state_write_interval:
            self._last_progress_write = now
            self._write_state(**runs.progress_fields(self.progress))

    def _on_worker_event(self, msg: dict) -> None:
        kind, level, text, at = msg["kind"], msg["level"], msg["message"], msg["time"]
        data = dict(msg["data"])
        if kind == "crash":  # reported once, with the exit code, when the worker has exited
            self.worker_traceback = data.get("traceback") or text
            return
        completed = self._map_request_ids(kind, data)
        if kind == "state":
            state = data.get("state")
            if state not in runs.RUN_STATES or state == "interrupted":
                self._emit("alert", "warning", f"trainer reported unknown state {state!r}", {"what": "state"})
                return
            self.worker_last_state = state
            if not (self.state == "stopping" and state in ("running", "paused")):  # keep showing the stop
                self._set_state(state, text, level=level, data=data, at=at)
            if completed is not None:  # the engine answers pause/resume with a state event only
                self._emit("request", "info", f"{completed.action}: done ({state})",
                           {"id": completed.client_id, "action": completed.action, "outcome": "done"})
            return
        if kind == "request" and completed is not None and completed.action == "stop" \
                and data.get("outcome") == "failed":
            self._on_stop_failed(text)
        if kind == "checkpoint_failed":
            self.last_checkpoint_failed = True
        if kind == "checkpoint":
            self.worker_checkpointed = True
            self.last_checkpoint_failed = False
            self._write_state(last_checkpoint={"time": at, "step": data.get("step"), "path": data.get("path")})
        self._emit(kind, level, text, data, at=at)
        if kind == "checkpoint":  # the events up to a checkpoint must survive a power cut
            self._sync_journals()

    async def _on_record(self, record: dict) -> None:
        if self.series_reload_pending:
            # A (re)started worker has cut history.msgpack back to its checkpoint before its
            # first record: reload, and skip records the file already holds.
            self.series_reload_pending = False
            await self._load_history()
        # SeriesSet ignores records at or before the last step of their kind: those the
        # reloaded file already holds.
        if self.series.feed(record) and record["kind"] == "eval":
            self.eval_last = self.series.last_eval
            self.eval_best = self.series.best_eval

    async def _pump_output(self, stream: asyncio.StreamReader, name: str) -> None:
        """Worker stdout/stderr -> train.log and `log` frames, line by line."""
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                if pending:
                    self._write_log([self._log_line(name, pending)])
                return
            pending += chunk
            *raws, pending = pending.split(b"\n")
            lines = [self._log_line(name, raw) for raw in raws]
            if len(pending) > MAX_LOG_LINE:
                lines.append(self._log_line(name, pending))
                pending = b""
            self._write_log(lines)

    def _write_log(self, lines: list[str]) -> None:
        """Append to train.log. A full disk loses these lines (counted, said once), never the
        relay: clients still get every line."""
        if not lines or self.train_log is None:
            return
        self.train_log.append(lines)
        self._note_write("train.log", self.train_log.error,
                         lost=0 if self.train_log.error else self.train_log.take_lost())

    def _log_line(self, stream: str, raw: bytes) -> str:
        """Relay one line to clients; returns it for train.log."""
        line = clean_line(raw)
        if stream == "stderr":
            self.stderr_tail.append(line)
        self.log_seq += 1
        body = {"seq": self.log_seq, "time": time.time(), "stream": stream, "line": line}
        self.logs.append(body)
        self._broadcast({"type": "log", **body})
        return line

    # ================================================================= system samples
    async def _sample_system(self) -> None:
        from trainer.sysmon import SystemSampler

        sampler = SystemSampler(self.run_dir, lambda: self.worker.pid if self.worker is not None else None)
        reported = False
        while True:
            try:
                body = await asyncio.to_thread(sampler.sample)
                msg = protocol.validate({"type": "system", **body})
            except Exception as exc:  # skip this sample; say so once, not every interval
                if not reported:
                    log.warning("system sample skipped (%s); later ones are skipped silently", exc)
                    reported = True
            else:
                self.system = body
                self._broadcast(msg, coalesce=True)
            await asyncio.sleep(self.cfg.daemon.system_interval)


# ----------------------------------------------------------------------------- launching
def launch_daemon(run_dir: Path, worker_script: Optional[Path] = None, wait: float = 30.0,
                  settings: Optional[dict] = None) -> int:
    """Start the daemon of `run_dir` in a new session and return its pid once it is alive.

    The daemon's stdout/stderr go to RUN_DIR/daemon.log. Waits at most `wait` seconds for its
    first sign of life (state.json names its pid and it is starting/running with its socket
    listening, or the trainer reported progress) or of death (it exited, or state.json says
    failed). Raises DaemonError if the run already has a live daemon, or when the daemon dies
    at start, with the cause (the failed state's message, the tail of daemon.log); each such
    death adds one to state.json's `launch_failures` (the daemon resets it once its trainer
    runs: only the daemon writes state.json while it lives), which is
    how `resume --all` at boot stops retrying a run that cannot start.
    A daemon still starting after `wait` seconds is left running and its pid returned.
    `worker_script` replaces `-m trainer.worker` (tests use a fake trainer); `settings`
    overrides fields of `Settings` (tests shrink timeouts and bounds).
    """
    run_dir = Path(run_dir).absolute()
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise DaemonError(f"{run_dir} has no {runs.CONFIG_FILE}: not a run directory")
    current = runs.read_state(run_dir)  # a damaged state.json is rebuilt, not a dead end
    if runs.effective_state(run_dir, current) in runs.LIVE_STATES:
        raise DaemonError(f"run {run_dir.name} is already {current.get('state')} (daemon pid {current.get('pid')})")
    runs.socket_path(run_dir)  # fail here, in the user's terminal, if no socket directory is safe
    _wait_for_exiting_daemon(run_dir)
    argv = [sys.executable, "-m", "trainer.daemon", str(run_dir)]
    if worker_script is not None:
        argv += ["--worker-script", str(Path(worker_script).absolute())]
    if settings:
        argv += ["--settings", json.dumps(settings)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(PACKAGE_ROOT)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    log_path = run_dir / "daemon.log"
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env, cwd=str(run_dir))
    failure = _first_sign(proc, run_dir, wait)
    if failure is not None:
        _count_launch_failure(run_dir, failure)
        tail = "".join(f"\n    {line}" for line in runs.tail_lines(log_path, 15))
        raise DaemonError(f"the daemon of {run_dir.name} died at start: {failure}"
                          + (f"\n  {log_path} ends with:{tail}" if tail else ""))
    return proc.pid


def _wait_for_exiting_daemon(run_dir: Path, timeout: float = 30.0) -> None:
    """A daemon whose run just stopped or finished still holds the run's lock for a moment
    (it flushes clients and caches the series): `stop` then `resume` must wait for it rather
    than fail with "already owned"."""
    deadline = time.monotonic() + timeout
    if not (run_dir / LOCK_FILE).exists():
        return  # no daemon has ever run here
    with open(run_dir / LOCK_FILE, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DaemonError(f"the daemon of {run_dir.name} is still exiting after {timeout:.0f} s "
                                      f"(see {run_dir / 'daemon.log'})") from None
                time.sleep(0.05)
                continue
            fcntl.flock(fh, fcntl.LOCK_UN)
            return


def _first_sign(proc: subprocess.Popen, run_dir: Path, wait: float) -> Optional[str]:
    """Poll until the daemon shows life (None) or death (the cause, a sentence); None also when
    `wait` runs out with the daemon still starting."""
    deadline = time.monotonic() + wait
    last_step = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return _death_cause(proc, run_dir)
        try:
            state = runs.StateFile(run_dir).read()
        except runs.StateFileError:
            state = {}
        if state.get("pid") == proc.pid:
            if state.get("state") == "failed":
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                return _death_cause(proc, run_dir)
            listening = isinstance(state.get("socket"), str) and os.path.exists(state["socket"])
            if state.get("state") in ("starting", "running") and listening:
                return None
            if last_step is not None and state.get("step") != last_step:
                return None  # the trainer reported progress
            last_step = state.get("step")
        time.sleep(0.02)
    return None


def _death_cause(proc: subprocess.Popen, run_dir: Path) -> str:
    """Why a daemon died at start: its last `failed` state message, else its exit status."""
    code = proc.poll()
    if code is None:
        exit_text = "it is exiting"
    elif code < 0:
        exit_text = describe_exit(code)[2].replace("trainer", "daemon", 1)
    else:
        exit_text = f"exit code {code}"
    states = [e for e in eventlog.read_tail(run_dir / "events.jsonl", 20) if e.get("kind") == "state"]
    if states and (states[-1].get("data") or {}).get("state") == "failed":
        return f"{states[-1].get('message')} ({exit_text})"
    return exit_text


def _count_launch_failure(run_dir: Path, cause: str) -> None:
    try:
        state = runs.read_state(run_dir)
        count = state.get("launch_failures") if isinstance(state.get("launch_failures"), int) else 0
        runs.StateFile(run_dir).update(launch_failures=count + 1, launch_error=cause[:2000])
    except (OSError, runs.RunError) as exc:
        log.warning("cannot record the launch failure in %s: %s", run_dir / runs.STATE_FILE, exc)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.daemon",
                                     description="longhaul run daemon (started by `longhaul start`)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--worker-script", type=Path,
                        help="run this Python script as the worker instead of trainer.worker (tests)")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="JSON object overriding daemon tunables (see Settings), e.g. '{\"max_backlog\": 1048576}'")
    args = parser.parse_args(argv)
    runs.apply_umask()  # run data is private (LONGHAUL_UMASK relaxes it); the worker inherits it
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s daemon[%(process)d]: %(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal; be explicit anyway
    worker_argv = [sys.executable, str(args.worker_script)] if args.worker_script else None
    try:
        daemon = Daemon(args.run_dir, worker_argv, Settings(**args.settings))
        return asyncio.run(daemon.run(install_signals=True))
    except (DaemonError, runs.RuntimeDirError) as exc:
        log.error("%s", exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
