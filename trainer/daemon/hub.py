"""The daemon's clients: the Unix socket server, each connection and its outgoing queue,
broadcast to all of them, and the rate limit of progress frames.

Each connection is checked (SO_PEERCRED uid), must say `hello` within handshake_timeout, gets a
`welcome` with a snapshot, then the live stream. Every client has its own outgoing queue:
`progress`/`system`/`plan` are coalesced (latest wins), events/logs/acks are kept in order; a
client whose backlog passes a bound is dropped. Nothing a client does (not reading, sending
garbage) can block the loop, the worker or the other clients.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Callable, Optional

from trainer import protocol
from trainer.daemon.settings import Settings
from trainer.protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

MAX_PROGRESS_EVERY = 10.0
"""The slowest pace a client may ask for, in seconds (a longer one would read as a stalled run)."""
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
        self.progress_every = 0.0  # this client's pace (hello/ping `progress_every`); 0: every frame
        self._progress_sent = 0.0
        self._held_progress: Optional[bytes] = None
        self._progress_timer: Optional[asyncio.TimerHandle] = None

    def __repr__(self) -> str:
        return f"client #{self.number} ({self.client})"

    def backlog(self) -> int:
        """Bytes this client has not taken yet (our queue plus the transport's buffer, less the
        welcome frame it is still allowed to be reading)."""
        return self.ordered_bytes + max(0, self.writer.transport.get_write_buffer_size() - self.allowance)

    def send(self, msg: dict) -> None:
        """Queue a message for this client only (an ack, a pong)."""
        self.push(protocol.encode(msg, protocol.MAX_SERVER_FRAME))

    def push(self, data: bytes, after_latest: bool = False) -> None:
        """Queue an ordered frame; drop the client if that puts it over its backlog bound.
        `after_latest`: send the pending coalesced frames first (an event must not overtake
        the progress that came before it)."""
        if self.closed:
            return
        if after_latest:
            self._flush_held_progress()
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

    def set_pace(self, seconds: float) -> None:
        """Progress at most every `seconds` (clamped to 0..MAX_PROGRESS_EVERY; not a number: 0)."""
        ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
        self.progress_every = min(MAX_PROGRESS_EVERY, max(0.0, float(seconds))) if ok else 0.0

    def push_progress(self, data: bytes) -> None:
        """A progress frame, or held back until this client's pace allows one (the newest wins)."""
        if self.closed:
            return
        wait = self.progress_every - (time.monotonic() - self._progress_sent)
        if wait <= 0:
            self._held_progress = None
            self._progress_sent = time.monotonic()
            self.push_latest("progress", data)
            return
        self._held_progress = data
        if self._progress_timer is None:
            self._progress_timer = asyncio.get_running_loop().call_later(wait, self._release_progress)

    def _release_progress(self) -> None:
        self._progress_timer = None
        if self._held_progress is not None:
            self.push_progress(self._held_progress)

    def _flush_held_progress(self) -> None:
        """Before an ordered frame: the progress held for pacing goes first (no event may overtake
        the progress that came before it)."""
        if self._held_progress is not None:
            self.latest["progress"] = self._held_progress
            self._held_progress = None
            self._progress_sent = time.monotonic()

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
        if self._progress_timer is not None:
            self._progress_timer.cancel()
        log.info("%r disconnected: %s", self, reason)
        self.ordered.clear()
        self.ordered_bytes = 0
        self.latest.clear()
        self.writer.transport.abort()
        self.wake.set()


class Hub:
    """Every client of one daemon. `welcome()` builds the welcome message of a new client;
    `on_request(conn, id, action)` gets each request a client sends."""

    def __init__(self, settings: Settings, welcome: Callable[[], dict],
                 on_request: Callable[[ClientConn, int, str], None],
                 peer_uid_fn: Callable[[socket.socket], int] = peer_uid, owner_uid: Optional[int] = None):
        self.settings = settings
        self.welcome = welcome
        self.on_request = on_request
        self.peer_uid_fn = peer_uid_fn
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.clients: set[ClientConn] = set()
        self._numbers = itertools.count(1)
        self._server: Optional[asyncio.AbstractServer] = None
        self._socket_file: Optional[Path] = None
        self._socket_inode: Optional[int] = None
        self._last_progress_sent = 0.0
        self._pending_progress: Optional[dict] = None
        self._progress_timer: Optional[asyncio.TimerHandle] = None

    # ------------------------------------------------------------------ the socket
    async def listen(self, path: Path) -> None:
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for other users
        try:
            self._server = await asyncio.start_unix_server(self._on_client, path=str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._socket_file, self._socket_inode = path, os.stat(path).st_ino
        log.info("listening on %s", path)

    async def linger(self) -> None:
        """Give clients a moment to receive the final events."""
        deadline = time.monotonic() + self.settings.linger
        while time.monotonic() < deadline and any(not c.closed and not c.idle() for c in self.clients):
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Stop accepting and drop every client."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.clients):
            conn.abort("daemon exiting")

    def remove_socket(self) -> None:
        """Unlink our socket, unless another daemon has put its own in its place since."""
        if self._socket_file is None or self._socket_inode is None:
            return
        try:
            if os.stat(self._socket_file).st_ino == self._socket_inode:
                self._socket_file.unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ the live stream
    def broadcast(self, msg: dict, coalesce: bool = False) -> None:
        """Send `msg` to every client; `coalesce`: it replaces an unsent one of its type."""
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
            if msg["type"] == "progress":
                conn.push_progress(data)
            elif coalesce:
                conn.push_latest(msg["type"], data)
            else:
                conn.push(data, after_latest=msg["type"] == "event")
            if conn.closed:
                self.clients.discard(conn)

    def send_progress(self, msg: dict) -> None:
        """Broadcast a progress frame, at most one per progress_interval (the newest wins)."""
        self._pending_progress = msg
        wait = self.settings.progress_interval - (time.monotonic() - self._last_progress_sent)
        if wait <= 0:
            self._flush_progress()
        elif self._progress_timer is None:
            self._progress_timer = asyncio.get_running_loop().call_later(wait, self._flush_progress)

    def _flush_progress(self) -> None:
        """Send the newest progress held back by the rate limit (if any)."""
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        msg, self._pending_progress = self._pending_progress, None
        if msg is not None:
            self._last_progress_sent = time.monotonic()
            self.broadcast(msg, coalesce=True)

    # ------------------------------------------------------------------ one connection
    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConn(next(self._numbers), reader, writer, self.settings)
        try:
            if await self._admit(conn):
                await self._serve(conn)
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

    async def _admit(self, conn: ClientConn) -> bool:
        """Peer check, hello, welcome: True once the client is on the live stream."""
        reason = peer_refusal(self.peer_uid_fn(conn.writer.get_extra_info("socket")), self.owner_uid)
        if reason is None and len(self.clients) >= self.settings.max_clients:
            reason = f"too many clients ({self.settings.max_clients})"
        if reason is not None:
            log.warning("%r: %s", conn, reason)
            await self._refuse(conn, ErrorCode.FORBIDDEN, reason)
            return False
        try:
            hello = await asyncio.wait_for(self._read_frame(conn), self.settings.handshake_timeout)
            protocol.check_hello(hello)
        except TimeoutError:
            await self._refuse(conn, ErrorCode.NOT_HELLO, f"no hello within {self.settings.handshake_timeout:.0f} s")
            return False
        except ProtocolError as exc:
            await self._refuse(conn, exc.code, exc.message)
            return False
        conn.client = hello["client"][:64]
        conn.set_pace(hello.get("progress_every", 0.0))
        # Snapshot, welcome and registration happen without an await in between, so the client
        # misses no event and sees none twice.
        try:
            welcome = protocol.encode(self.welcome(), protocol.MAX_SERVER_FRAME)
        except ProtocolError as exc:
            log.error("cannot build the welcome snapshot: %s", exc)
            await self._refuse(conn, ErrorCode.INTERNAL, f"cannot build the snapshot: {exc}")
            return False
        conn.writer.write(welcome)
        conn.allowance = len(welcome)
        self.clients.add(conn)
        conn.sender = asyncio.create_task(conn.send_loop())
        log.info("%r attached", conn)
        return True

    async def _serve(self, conn: ClientConn) -> None:
        """The client's frames after its hello, until it goes or breaks the protocol."""
        while not conn.closed:
            try:
                msg = await self._read_frame(conn, idle=True)
            except TimeoutError:
                await self._refuse(conn, ErrorCode.BAD_FRAME, "frame not completed within "
                                   f"{self.settings.frame_timeout:.0f} s")
                return
            except ProtocolError as exc:
                await self._refuse(conn, exc.code, exc.message)
                return
            match msg["type"]:
                case "request":
                    self.on_request(conn, msg["id"], msg["action"])
                case "ping":
                    if "progress_every" in msg:
                        conn.set_pace(msg["progress_every"])
                    conn.send(protocol.pong())
                case _:
                    await self._refuse(conn, ErrorCode.UNEXPECTED_TYPE, f"{msg['type']!r} is only valid as the first frame")
                    return

    async def _read_frame(self, conn: ClientConn, idle: bool = False) -> dict:
        """One frame from a client. Waiting for a frame to start has no time limit when `idle`;
        once its first byte is in, the rest must follow within frame_timeout (no half frames)."""
        first = await conn.reader.readexactly(1)
        timeout = self.settings.frame_timeout
        header = first + await asyncio.wait_for(conn.reader.readexactly(protocol.HEADER_SIZE - 1), timeout)
        length = protocol.payload_length(header, protocol.MAX_CLIENT_FRAME)
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
