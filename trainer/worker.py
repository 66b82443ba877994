"""The trainer child process the daemon supervises.

    python -m trainer.worker RUN_DIR --control-fd N

Runs `engine.Trainer` on RUN_DIR/config.yaml and talks to the daemon over the socketpair end N
(same framing as clients, see docs/ARCHITECTURE.md "Worker <-> daemon"):

- a sender thread owns all writes: the trainer only appends to a queue (progress is coalesced to
  the latest body), so a slow daemon can never stall a training step;
- a reader thread turns `control` frames into `(id, action)` items of the controls queue that the
  engine drains at step boundaries. If the daemon goes away (EOF), that becomes a stop request:
  the run checkpoints and ends instead of training unsupervised.

Exit code 0 = finished or stopped (the last `state` event says which); 1 = crash, after a `crash`
event carrying the traceback. A finished run is then evaluated on its test split and gets its
report (trainer.posthoc.after) before the worker exits.
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from trainer import protocol, setup_stages
from trainer.run.errors import USER_ERROR_EXIT
from trainer.run.rundir import RunDir, apply_umask
from trainer.watchdog import STACKS_SIGNAL

log = logging.getLogger("trainer.worker")

#: Request id used for stops the worker raises itself (daemon gone, SIGTERM).
INTERNAL_REQUEST_ID = 0
#: Ordered frames (events, records) held while the daemon is not reading. Past this, history
#: records are dropped from the live stream (they are in history.msgpack anyway); events never.
MAX_QUEUED_RECORDS = 20_000


def plain(value: Any) -> Any:
    """Make engine values msgpack-friendly: numpy scalars/arrays -> Python, Paths -> str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float, bytes)):
        return value
    if hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return plain(value.tolist())
    return str(value)


class WorkerLink:
    """The worker's end of its channel to the daemon. All methods are thread-safe and never block on I/O."""

    def __init__(self, sock: socket.socket, controls: queue.SimpleQueue,
                 on_lost: Optional[Callable[[], None]] = None):
        self.sock = sock
        self.controls = controls
        self.on_lost = on_lost
        self._cond = threading.Condition()
        self._ordered: collections.deque = collections.deque()
        self._records_queued = 0
        self._progress: Optional[dict] = None
        self._closing = False
        self._busy = False
        self.dropped_records = 0
        self.frames_sent = 0
        self.daemon_gone = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="daemon-sender", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="daemon-reader", daemon=True)

    def start(self) -> "WorkerLink":
        self._sender.start()
        self._reader.start()
        return self

    # ------------------------------------------------------------------ producer side
    def send(self, msg: dict) -> None:
        """Queue an ordered frame (event, record, plan, ack)."""
        with self._cond:
            if self.daemon_gone.is_set():
                return
            if msg["type"] == "record":
                if self._records_queued >= MAX_QUEUED_RECORDS:
                    self.dropped_records += 1
                    return
                self._records_queued += 1
            elif self._progress is not None:
                # Progress that happened before this event goes out before it (the last
                # progress before "finished" must not arrive after it).
                self._ordered.append(protocol.progress(**self._progress, check=False))
                self._progress = None
            self._ordered.append(msg)
            self._cond.notify()

    def send_progress(self, body: dict) -> None:
        """Replace the pending progress body (latest wins)."""
        with self._cond:
            self._progress = body
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued (up to `timeout` seconds), then stop the sender. True if flushed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify()
            while (self._ordered or self._progress is not None or self._busy) and not self.daemon_gone.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        self._sender.join(timeout=max(0.0, deadline - time.monotonic()))
        return True

    # ------------------------------------------------------------------ threads
    def _next_frame(self) -> Optional[dict]:
        with self._cond:
            while not self._ordered and self._progress is None:
                if self._closing:
                    return None
                self._cond.wait()
            if self._ordered:
                msg = self._ordered.popleft()
                if msg["type"] == "record":
                    self._records_queued -= 1
            else:
                msg = protocol.progress(**self._progress, check=False)
                self._progress = None
            self._busy = True
            return msg

    def _send_loop(self) -> None:
        while True:
            msg = self._next_frame()
            if msg is None:
                return
            try:
                protocol.send_frame(self.sock, msg, protocol.MAX_SERVER_FRAME)
                self.frames_sent += 1
            except protocol.ProtocolError as exc:
                log.error("cannot send %s frame to the daemon: %s", msg.get("type"), exc)
            except OSError as exc:
                log.error("lost the daemon connection while sending: %s", exc)
                self._lost()
                return
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _read_loop(self) -> None:
        while True:
            try:
                msg = protocol.recv_frame(self.sock, protocol.MAX_CLIENT_FRAME, accept=protocol.DAEMON_TO_WORKER)
            except (EOFError, OSError, protocol.ProtocolError) as exc:
                if not self._closing:
                    log.warning("daemon channel closed (%s): stopping at the next step boundary", exc)
                self._lost()
                return
            self.controls.put((msg["id"], msg["action"]))

    def _lost(self) -> None:
        first = not self.daemon_gone.is_set()
        with self._cond:
            self.daemon_gone.set()
            self._ordered.clear()
            self._progress = None
            self._cond.notify_all()
        if first and self.on_lost is not None:
            self.on_lost()
        if first and not self._closing:
            self.controls.put((INTERNAL_REQUEST_ID, "stop"))


class LinkPublisher:
    """The engine's publisher in daemon mode: everything goes to the daemon link. Frames are not
    validated here: the daemon validates them on receipt and reports a bad one, so the engine is
    never interrupted by a field it got wrong."""

    def __init__(self, link: WorkerLink):
        self.link = link

    def progress(self, body: dict) -> None:
        self.link.send_progress(plain(body))

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        self.link.send(protocol.event(kind, level, str(message), plain(data), check=False))

    def record(self, record: dict) -> None:
        self.link.send(protocol.record(plain(record), check=False))

    def plan(self, body: dict) -> None:
        self.link.send(protocol.plan(plain(body["plan"]), plain(body["config"]), check=False))

    def preparing(self, body: dict) -> None:
        # ordered, not coalesced here: the engine already sends at most two a second
        self.link.send(protocol.preparing(**plain(body), check=False))


class OutputFallback:
    """Keeps the worker's prints working when the daemon dies.

    stdout/stderr are pipes the daemon reads; once it is gone a print would raise
    BrokenPipeError in the middle of training. `redirect()` points fds 1 and 2 at
    RUN_DIR/train.log instead, so the run can still checkpoint and stop cleanly (and the log
    goes on where the daemon left it).
    """

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._lock = threading.Lock()
        self.redirected = False

    def redirect(self) -> None:
        with self._lock:
            if self.redirected:
                return
            self.redirected = True
            try:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError:
                fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)


class SafeStream:
    """A text stream that switches to the fallback on BrokenPipeError and retries once."""

    def __init__(self, stream, fallback: OutputFallback):
        self._stream = stream
        self._fallback = fallback

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._fallback.redirect()
            return self._stream.write(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._fallback.redirect()
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def default_trainer_factory(cfg, run_dir: Path, publisher, controls):
    from trainer.engine import Trainer  # torch is imported here, not at module import
    from trainer.store_setup import accept_from_env

    return Trainer(cfg, run_dir, publisher, controls, accept_data_change=accept_from_env())


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker",
                                     description="longhaul trainer process (started by the daemon)")
    parser.add_argument("run_dir", type=Path)
    channel = parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--control-fd", "--fd", dest="control_fd", type=int,
                         help="file descriptor of the daemon's socketpair end")
    channel.add_argument("--control-socket", type=Path,
                         help="the daemon's worker socket, which rank 0 of a torchrun group connects to")
    return parser.parse_args(argv)


def group_rank(key: str = "RANK") -> Optional[int]:
    """This process's rank (`LOCAL_RANK`: on its box) under torchrun's agent (trainer/daemon/
    group.py), None outside one."""
    return int(os.environ[key]) if "TORCHELASTIC_RUN_ID" in os.environ and key in os.environ else None


class SilentPublisher:
    """A rank other than the first on its box: that one reports to the box's daemon; this one's
    log lines and tracebacks still reach train.log through the agent's output."""

    def progress(self, body: dict) -> None: ...
    def event(self, kind: str, level: str, message: str, **data: Any) -> None: ...
    def record(self, record: dict) -> None: ...
    def plan(self, body: dict) -> None: ...
    def preparing(self, body: dict) -> None: ...


def die_with_agent() -> None:
    """A rank dies when torchrun's agent does (PR_SET_PDEATHSIG): the agent starts each rank in a
    session of its own, so a power-cut test's (or the OOM killer's) kill of the agent would leave
    ranks training unsupervised beside the group the daemon starts next."""
    import ctypes

    agent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        log.warning("cannot tie this rank to its agent: prctl failed (errno %d)", ctypes.get_errno())
    if os.getppid() != agent:  # the agent died before the tie
        os._exit(1)


def open_link(args: argparse.Namespace, controls: queue.SimpleQueue, on_lost) -> Optional[WorkerLink]:
    """The channel to the daemon: the inherited socketpair end, or (the first rank on each box of
    a group) the worker socket; None for the other ranks. Rank 0 reports everything; the first
    rank of another box reports progress, evaluations and states to its own daemon, while rank 0's
    box keeps the history and the checkpoints."""
    if args.control_fd is not None:
        sock = socket.socket(fileno=args.control_fd)
    elif group_rank("LOCAL_RANK") == 0:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(args.control_socket))
    else:
        return None
    sock.setblocking(True)
    return WorkerLink(sock, controls, on_lost=on_lost).start()


def lost_peer(exc: BaseException) -> bool:
    """A collective of the group failed: a rank died, or a node stopped answering (gloo's
    connection errors and timeouts)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return group_rank() is not None and ("gloo" in text or "connection closed by peer" in text
                                         or "distbackenderror" in text or "timed out" in text)


def user_errors() -> tuple[type, ...]:
    """Errors in what the user gave (config, data, store) that no restart can fix; see is_user_error."""
    from trainer.config import ConfigError
    from trainer.data.report import DataError
    from trainer.data.store import StoreError

    return ConfigError, DataError, StoreError


def is_user_error(exc: BaseException) -> bool:
    """Whether the run must fail without a restart. A StoreError that a restart may fix (a prepare
    worker killed by the OOM killer, a full disk: retry_may_help) is an ordinary crash: the
    daemon restarts the run, whose prepare goes on from the finished shards."""
    return isinstance(exc, user_errors()) and not getattr(exc, "retry_may_help", False)


def main(argv: Optional[list[str]] = None, trainer_factory: Callable = default_trainer_factory) -> int:
    """Run one trainer under the daemon; returns the process exit code."""
    args = parse_args(argv)
    apply_umask()  # private run data (the daemon that started us checked LONGHAUL_UMASK)
    files = RunDir(args.run_dir)
    fallback = OutputFallback(files.train_log)
    sys.stdout = SafeStream(sys.stdout, fallback)
    sys.stderr = SafeStream(sys.stderr, fallback)
    # The trainer's own log lines are ordinary output; stderr is left for tracebacks and warnings
    # from libraries, which clients mark as such.
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if group_rank() is not None:
        die_with_agent()
    controls: queue.SimpleQueue = queue.SimpleQueue()
    link = open_link(args, controls, fallback.redirect)
    publisher = LinkPublisher(link) if link is not None else SilentPublisher()
    if group_rank():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for the group

    def on_term(signum, frame):
        # A second SIGTERM gets the default action: die now.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log.warning("SIGTERM: stopping at the next step boundary")
        controls.put((INTERNAL_REQUEST_ID, "stop"))

    # In a group SIGTERM comes from the agent, which restarts (or ends) the whole group from the
    # last checkpoint: a rank dies at once rather than stop alone (the daemon stops a group
    # through rank 0's channel).
    if group_rank() is None:
        signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # the stall watchdog asks for every thread's Python stack; fd 2 is the pipe to train.log
    faulthandler.register(STACKS_SIGNAL, file=sys.__stderr__, all_threads=True)
    # importing torch takes seconds (tens on a busy box): say so before, so nobody stares at "starting"
    setup_stages.announce(publisher.event, "start", "starting the trainer (importing torch)")
    try:
        from trainer.config import load_config

        cfg = load_config(files.config, check_model=False)
        trainer = trainer_factory(cfg, args.run_dir, publisher, controls)
        result = trainer.run()
    except BaseException as exc:  # includes KeyboardInterrupt/SystemExit: always report
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        return report_crash(exc, text, publisher, link)
    # The engine announces its final state itself; repeat it so the daemon never has to guess
    # (the daemon ignores a state it is already in).
    publisher.event("state", "info", result, state=result)
    if result == "finished" and not group_rank():  # test evaluation and report (rank 0 of a group);
        from trainer.posthoc.after import after_run  # failures are alerts, the run stays finished

        after_run(args.run_dir, publisher.event)
    if link is not None and link.dropped_records:
        log.warning("%d history records were not streamed live (daemon was not reading)", link.dropped_records)
    if link is not None:
        link.close(timeout=10.0)
    return 0


def report_crash(exc: BaseException, text: str, publisher, link: Optional[WorkerLink]) -> int:
    """The crash event (and, when a collective failed, the node_lost alert); the exit code. In a
    group, an error a restart cannot fix also ends the agent, which would restart it in vain."""
    user_error = is_user_error(exc)
    if lost_peer(exc):
        publisher.event("alert", "error", f"a rank of the data-parallel group stopped answering ({exc}); "
                        "torchrun's agent restarts the group from the last checkpoint", what="node_lost",
                        rank=group_rank(), error=str(exc)[:500])
    what = "cannot train" if user_error else f"trainer crashed: {type(exc).__name__}"
    publisher.event("crash", "error", f"{what}: {exc}", traceback=text, user_error=user_error)
    if link is not None:
        link.close(timeout=5.0)
    if user_error and group_rank() is not None:
        os.kill(os.getppid(), signal.SIGTERM)
    return USER_ERROR_EXIT if user_error else 1


if __name__ == "__main__":
    sys.exit(main())
