"""The TUI's link to a run's daemon: one asyncio task that connects, reads frames, posts messages.

`DashboardLink.run()` is started as a single named Textual worker by the run screen. It keeps the
connection alive for as long as the screen exists: when the daemon is not there (not started yet,
restarting, the run ended) it retries with exponential backoff, posting `Disconnected` each
time, and a fresh `Connected` (with a new snapshot) when it gets through again. Frames are
turned into the messages of `tui.messages` by one `match`; the screen does the rest.
"""
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Callable, Optional

from textual.message import Message

from trainer import protocol
from trainer.run.errors import RuntimeDirError
from trainer.run.sockets import find_socket, socket_path
from tui import messages

CLIENT_NAME = "longhaul-tui"
HELD = (messages.ProgressReceived, messages.SystemReceived, messages.PreparingReceived, messages.LogsReceived)
"""The messages `DashboardLink.hold` delays: what they carry is only shown, at the next repaint."""


class NotConnected(RuntimeError):
    """A request was made while no daemon connection is open."""


class LinkRefused(Exception):
    """The daemon answered the hello with an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def describe(exc: BaseException) -> str:
    """A short, human reason for a failed or lost connection."""
    match exc:
        case FileNotFoundError():
            return "no daemon socket (daemon not running)"
        case ConnectionRefusedError():
            return "daemon socket refuses connections (daemon gone)"
        case asyncio.IncompleteReadError() | ConnectionResetError() | BrokenPipeError():
            return "daemon closed the connection"
        case asyncio.TimeoutError() | TimeoutError():
            return "daemon did not answer in time"
        case protocol.ProtocolError():
            return f"protocol error from daemon: {exc}"
        case RuntimeDirError():
            return str(exc)
        case LinkRefused():
            return f"daemon refused us: {exc.message}"
        case _:
            return f"{type(exc).__name__}: {exc}"


class DashboardLink:
    """Connection state machine for one run's socket.

    `post` delivers messages to the screen (its `post_message`). `retry_min`/`retry_max` bound
    the backoff between attempts; a successful handshake resets it. `hold`: seconds the frames of
    `HELD` messages are gathered before the message is posted (0: at once), and the daemon's pace
    for this client's progress frames (hello/ping `progress_every`).
    """

    def __init__(self, run_dir: Path, post: Callable[[Message], object], *,
                 retry_min: float = 0.5, retry_max: float = 5.0, handshake_timeout: float = 10.0,
                 socket_path: Optional[Path] = None, hold: float = 0.0) -> None:
        self.run_dir = Path(run_dir)
        self.post = post
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.handshake_timeout = handshake_timeout
        self._socket_path = socket_path
        self._writer: Optional[asyncio.StreamWriter] = None
        self.hold = hold
        self._waiting: dict[type, messages.MergingMessage] = {}  # posted or held, not yet taken, per type
        self._held: dict[type, asyncio.TimerHandle] = {}  # the timers of held messages, per type
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def socket_path(self) -> Path:
        """Where the daemon listens: the usual runtime-dir path, or the one it recorded in state.json."""
        if self._socket_path is not None:
            return self._socket_path
        return find_socket(self.run_dir) or socket_path(self.run_dir)

    def retry_now(self) -> None:
        """Cut the current backoff short (e.g. right after `longhaul resume` started a daemon)."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, stream, reconnect; forever (until cancelled) or until the daemon refuses us."""
        attempt = 0
        while True:
            was_connected = False
            try:
                reader, writer = await self._open()
                was_connected = True
                attempt = 0
                await self._stream(reader)
                reason = "daemon closed the connection"
            except asyncio.CancelledError:
                raise
            except LinkRefused as exc:
                if exc.code == protocol.ErrorCode.VERSION_MISMATCH:
                    self.post(messages.LinkFailed(exc.code, exc.message))
                    return
                reason = describe(exc)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    protocol.ProtocolError, RuntimeDirError) as exc:
                reason = describe(exc)
            finally:
                await self._close()
            attempt += 1
            delay = min(self.retry_max, self.retry_min * 2 ** (attempt - 1))
            self.post(messages.Disconnected(reason, delay, attempt, was_connected))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect and shake hands; posts Connected with the welcome frame."""
        path = self.socket_path()
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=protocol.MAX_SERVER_FRAME), self.handshake_timeout)
        self._writer = writer
        await protocol.write_frame(writer, protocol.hello(CLIENT_NAME, progress_every=self.hold or None),
                                   protocol.MAX_CLIENT_FRAME)
        first = await asyncio.wait_for(
            protocol.read_frame(reader, protocol.MAX_SERVER_FRAME, protocol.DAEMON_TO_CLIENT), self.handshake_timeout)
        if first["type"] == "error":
            raise LinkRefused(first["code"], first["message"])
        if first["type"] != "welcome":
            raise protocol.ProtocolError(protocol.ErrorCode.UNEXPECTED_TYPE,
                                         f"expected a welcome, got {first['type']!r}")
        self.post(messages.Connected(first))
        return reader, writer

    async def _stream(self, reader: asyncio.StreamReader) -> None:
        """Read frames until the connection ends (IncompleteReadError) and post each as a message."""
        while True:
            frame = await protocol.read_frame(reader, protocol.MAX_SERVER_FRAME, protocol.DAEMON_TO_CLIENT)
            match frame["type"]:
                case "plan":
                    self.post(messages.PlanReceived(frame))
                case "progress":
                    self._deliver(messages.ProgressReceived, frame)
                case "system":
                    self._deliver(messages.SystemReceived, frame)
                case "preparing":
                    self._deliver(messages.PreparingReceived, frame)
                case "event":
                    self._deliver(messages.EventsReceived, frame)
                case "log":
                    self._deliver(messages.LogsReceived, frame)
                case "ack":
                    self.post(messages.AckReceived(frame))
                case "error":
                    raise LinkRefused(frame["code"], frame["message"])
                case _:
                    pass  # pong, or a welcome repeated: nothing to show

    def _deliver(self, kind: type[messages.MergingMessage], frame: dict) -> None:
        """Post `frame`, or fold it into the message of its kind still waiting in the screen's queue."""
        waiting = self._waiting.get(kind)
        if waiting is not None and not waiting.taken:
            waiting.merge(frame)
            return
        message = kind(frame)
        self._waiting[kind] = message
        if self.hold > 0 and kind in HELD:
            self._held[kind] = asyncio.get_running_loop().call_later(self.hold, self._post_held, kind, message)
        else:
            self.post(message)

    def _post_held(self, kind: type, message: messages.MergingMessage) -> None:
        self._held.pop(kind, None)
        self.post(message)

    def take_held(self) -> list[messages.MergingMessage]:
        """The held messages not posted yet, now (their timers cancelled): a repaint shows what
        arrived since the last one instead of waiting for a hold that ends just after it."""
        held = []
        for kind, handle in self._held.items():
            handle.cancel()
            message = self._waiting.get(kind)
            if message is not None and not message.taken:
                held.append(message)
        self._held.clear()
        return held

    def set_hold(self, seconds: float) -> None:
        """Gather frames for `seconds` from now on, and ask the daemon for progress at that pace
        (a dashboard that repaints every 2 s took ten progress frames per repaint and showed one)."""
        self.hold = seconds
        if self._writer is None:
            return  # the next hello carries it
        try:
            self._writer.write(protocol.encode(protocol.ping(progress_every=seconds), protocol.MAX_CLIENT_FRAME))
        except (OSError, ConnectionError):
            pass  # the stream ends with the connection; the next hello carries the pace

    async def request(self, action: str) -> int:
        """Send a pause/resume/checkpoint/stop request; returns its id (the ack and event carry it)."""
        if self._writer is None:
            raise NotConnected("not connected to the daemon")
        request_id = next(self._ids)
        try:
            await protocol.write_frame(self._writer, protocol.request(request_id, action), protocol.MAX_CLIENT_FRAME)
        except (OSError, ConnectionError) as exc:
            raise NotConnected(f"could not send {action}: {describe(exc)}") from exc
        return request_id

    async def _close(self) -> None:
        # The last frames before a daemon exits (the final step, a traceback in the log) are
        # posted, ahead of Disconnected; a new connection starts with a new snapshot.
        for message in self.take_held():
            self.post(message)
        self._waiting.clear()
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass
