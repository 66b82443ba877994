"""The longhaul wire protocol: framing, limits and every message type, defined once.

A frame is a 4-byte big-endian unsigned length followed by that many bytes holding exactly one
msgpack map with a ``"type"`` string key. The same framing is used between TUI/CLI clients and
the daemon (Unix socket) and between the daemon and its worker (socketpair).

Every message type is one entry of :data:`MESSAGES` (field name -> expected type); the decoder,
the constructors and ``docs/PROTOCOL.md`` all follow that table. Receivers validate the fields a
type requires and ignore fields they do not know, so adding an optional field is compatible;
adding a type or changing a field's meaning needs a new :data:`PROTOCOL_VERSION`.

This module is imported by the TUI: stdlib and msgpack only (no torch, no textual).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

import msgpack

if TYPE_CHECKING:  # the helpers only call methods of the streams they are given
    import asyncio

PROTOCOL_VERSION = 2
MAX_CLIENT_FRAME = 64 * 1024
"""Largest payload a client may send to the daemon (and the daemon to its worker), in bytes."""
MAX_SERVER_FRAME = 16 * 1024 * 1024
"""Largest payload the daemon sends to clients (a welcome with its snapshot is the big one) and
the worker to the daemon (its plan frame can be large), in bytes."""

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size

ACTIONS = ("pause", "resume", "checkpoint", "stop")
LEVELS = ("info", "warning", "error")
STREAMS = ("stdout", "stderr")


# ----------------------------------------------------------------------------- errors
class ErrorCode:
    """Values of ``ProtocolError.code`` and of the ``code`` field of ``error`` frames."""

    VERSION_MISMATCH = "version_mismatch"  # hello.version differs from the daemon's
    BAD_FRAME = "bad_frame"                # not one msgpack map, or no string "type"
    FRAME_TOO_LARGE = "frame_too_large"    # length prefix over the receiver's limit
    UNKNOWN_TYPE = "unknown_type"          # "type" names no message type
    UNEXPECTED_TYPE = "unexpected_type"    # a known type that this side must not send
    BAD_FIELD = "bad_field"                # a required field is missing or has the wrong type
    NOT_HELLO = "not_hello"                # the first client frame was not a hello
    FORBIDDEN = "forbidden"                # another user's connection, or too many clients
    INTERNAL = "internal"                  # the daemon failed while serving this connection


class ProtocolError(Exception):
    """A frame broke the protocol. ``code`` is one of :class:`ErrorCode`.

    ``frames`` holds the valid frames that :meth:`FrameDecoder.feed` decoded from the same chunk
    before the bad one (so a caller sees the same frames whatever the chunking was).
    """

    def __init__(self, code: str, message: str, frames: Optional[list[dict]] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.frames = frames if frames is not None else []


# ----------------------------------------------------------------------------- field types
class Spec:
    """The expected type of one field: a predicate plus the words used in error messages."""

    def __init__(self, expected: str, test: Callable[[Any], bool]):
        self.expected = expected
        self.test = test

    def check(self, value: Any, where: str) -> None:
        if not self.test(value):
            raise _bad_field(where, self.expected, value)


def _bad_field(where: str, expected: str, value: Any) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ProtocolError(ErrorCode.BAD_FIELD, f"{where}: expected {expected}, got {type(value).__name__} {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT = Spec("int", _is_int)
NUM = Spec("number", _is_num)
STR = Spec("string", lambda v: isinstance(v, str))
BOOL = Spec("bool", lambda v: isinstance(v, bool))
MAP = Spec("map", lambda v: isinstance(v, dict))
LIST = Spec("array", lambda v: isinstance(v, list))


class Nullable(Spec):
    """``inner`` or null (None)."""

    def __init__(self, inner: Spec):
        super().__init__(f"{inner.expected} or null", lambda v: True)
        self.inner = inner

    def check(self, value: Any, where: str) -> None:
        if value is None:
            return
        if type(self.inner) is Spec:  # a plain type: say "number or null"
            if not self.inner.test(value):
                raise _bad_field(where, self.expected, value)
        else:  # a structure: its own check names the exact nested field
            self.inner.check(value, where)


def one_of(*choices: str) -> Spec:
    """One of the given strings."""
    return Spec(" | ".join(repr(c) for c in choices), lambda v: isinstance(v, str) and v in choices)


class ListOf(Spec):
    """An array whose every element matches ``item``."""

    def __init__(self, item: Spec, length: Optional[int] = None):
        n = f" of length {length}" if length is not None else ""
        super().__init__(f"array{n} of {item.expected}", lambda v: True)
        self.item, self.length = item, length

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            raise _bad_field(where, self.expected, value)
        for i, element in enumerate(value):
            self.item.check(element, f"{where}[{i}]")


class MapOf(Spec):
    """A map from string keys to values that match ``value``."""

    def __init__(self, value: Spec):
        super().__init__(f"map of string to {value.expected}", lambda v: True)
        self.value = value

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _bad_field(where, self.expected, value)
        for key, element in value.items():
            self.value.check(element, f"{where}.{key}")


class Body(Spec):
    """A nested map validated against the named entry of :data:`BODIES` or :data:`MESSAGES`."""

    def __init__(self, name: str):
        super().__init__(f"{name} map", lambda v: True)
        self.name = name

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _bad_field(where, self.expected, value)
        fields = BODIES[self.name] if self.name in BODIES else MESSAGES[self.name]
        _check_fields(fields, value, where)


class MayBeAbsent(Spec):
    """A field that may be absent; when present it must match ``inner``."""

    def __init__(self, inner: Spec):
        super().__init__(inner.expected, inner.test)
        self.inner = inner

    def check(self, value: Any, where: str) -> None:
        self.inner.check(value, where)


class SeriesPoints(Spec):
    """One downsampled series: four arrays of equal length (step, value, min, max)."""

    def __init__(self) -> None:
        super().__init__("map with arrays step, value, min, max of equal length", lambda v: True)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _bad_field(where, self.expected, value)
        lengths = set()
        for key in ("step", "value", "min", "max"):
            LIST.check(value.get(key), f"{where}.{key}")
            lengths.add(len(value[key]))
        if len(lengths) != 1:
            raise _bad_field(where, self.expected, {k: len(value[k]) for k in ("step", "value", "min", "max")})


def _check_fields(fields: Mapping[str, Spec], msg: Mapping[str, Any], where: str) -> None:
    for name, spec in fields.items():
        if name not in msg:
            if isinstance(spec, MayBeAbsent):
                continue
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where}: missing field {name!r} ({spec.expected})")
        spec.check(msg[name], f"{where}.{name}")


# ----------------------------------------------------------------------------- the table
NUM_OR_NULL = Nullable(NUM)

BODIES: dict[str, dict[str, Spec]] = {
    "run": {"name": STR, "dir": STR, "daemon_pid": INT},
    "config_summary": {
        "model": STR, "source": STR, "features": STR, "classes": Nullable(ListOf(STR)),
        "threads": INT, "batch_size": INT, "accum_steps": INT, "seed": INT, "monitor": STR,
        "mode": MayBeAbsent(one_of("max", "min")), "min_delta": MayBeAbsent(NUM),
    },
    "history_record": {"kind": STR, "step": INT},
    "eval_summary": {"last": Nullable(MAP), "best": Nullable(MAP)},
    # one row of a system sample's process table; cpu in % of one core
    "process": {"pid": INT, "name": STR, "cpu": NUM, "rss": INT,
                "role": one_of("trainer", "daemon", "loader", "other")},
    "thread": {"tid": INT, "cpu": NUM},
    # one rank of a data-parallel run (trainer/distributed.py): its host, its last logged step's
    # seconds, the share of that step spent waiting for data and, exposed, in the gradient allreduce
    "rank": {"rank": INT, "host": STR, "step_seconds": NUM, "data_share": NUM, "allreduce_share": NUM_OR_NULL},
    "world": {"world_size": INT, "ranks": ListOf(Body("rank"))},
    # one GPU of the box (NVIDIA's management library); util in %, memory in bytes, temperature in C
    "gpu": {"index": INT, "name": STR, "util_percent": NUM_OR_NULL, "mem_used": INT, "mem_total": INT,
            "temp_c": NUM_OR_NULL},
    "snapshot": {
        "state": STR,
        "config": Body("config_summary"),
        "plan": MAP,
        "progress": Nullable(Body("progress")),
        "series": MapOf(SeriesPoints()),
        "eval": Body("eval_summary"),
        "events": ListOf(Body("event")),
        "logs": ListOf(Body("log")),
        "system": Nullable(Body("system")),
        "preparing": MayBeAbsent(Nullable(Body("preparing"))),
    },
}
"""Maps nested inside messages (no ``type`` key of their own)."""

MESSAGES: dict[str, dict[str, Spec]] = {
    # client -> daemon
    # progress_every: send this client progress frames at most this often, in seconds (a TUI
    # that repaints every 2 s has no use for five a second); a ping may carry a new value.
    "hello": {"version": INT, "client": STR, "progress_every": MayBeAbsent(NUM)},
    "request": {"id": INT, "action": one_of(*ACTIONS)},
    "ping": {"progress_every": MayBeAbsent(NUM)},
    # daemon -> client
    "welcome": {"version": INT, "run": Body("run"), "snapshot": Body("snapshot")},
    "error": {"code": STR, "message": STR},
    "progress": {
        "step": INT, "total_steps": INT, "epoch": INT, "total_epochs": INT, "phase": INT,
        "phase_name": STR, "epoch_step": INT, "steps_per_epoch": INT, "elapsed": NUM,
        "eta": NUM_OR_NULL, "phase_etas": ListOf(NUM_OR_NULL), "metrics": MapOf(NUM_OR_NULL),
        "time": NUM,
        # a data-parallel run only (world size > 1): every rank's step time and shares
        "world": MayBeAbsent(Body("world")),
    },
    # seq is set by the daemon on every event it sends to clients; the worker sends none.
    "event": {"seq": MayBeAbsent(INT), "time": NUM, "kind": STR, "level": one_of(*LEVELS),
              "message": STR, "data": MAP},
    "log": {"seq": INT, "time": NUM, "stream": one_of(*STREAMS), "line": STR},
    "system": {
        "time": NUM, "cpu_percent": ListOf(NUM), "load": ListOf(NUM, length=3),
        "mem_total": INT, "mem_used": INT, "swap_total": INT, "swap_used": INT,
        "trainer_rss": Nullable(INT), "disk_free": INT, "disk_total": INT,
        "disk_write_bps": NUM_OR_NULL, "cpu_temp": NUM_OR_NULL,
        # absent from daemons older than issue 13: the System view then shows no table
        "processes": MayBeAbsent(ListOf(Body("process"))), "trainer_threads": MayBeAbsent(ListOf(Body("thread"))),
        "cores": MayBeAbsent(INT),
        # a box with NVIDIA GPUs only (absent without the management library or a GPU)
        "gpus": MayBeAbsent(ListOf(Body("gpu"))),
    },
    "ack": {"id": INT, "ok": BOOL, "message": STR},
    "pong": {},
    # the feature store being prepared before training starts (coalesced: latest wins)
    "preparing": {"done": INT, "total": INT, "rate": NUM_OR_NULL, "eta": NUM_OR_NULL, "elapsed": NUM,
                  "time": NUM, "store": STR, "finished": BOOL},
    # worker <-> daemon
    "plan": {"plan": MAP, "config": MAP},
    "record": {"record": Body("history_record")},
    "control": {"id": INT, "action": one_of(*ACTIONS)},
}
"""Every message type: field name -> expected type. Extra fields are allowed and ignored."""

CLIENT_TO_DAEMON = frozenset({"hello", "request", "ping"})
DAEMON_TO_CLIENT = frozenset({"welcome", "error", "plan", "progress", "preparing", "event", "log", "system", "ack",
                              "pong"})
WORKER_TO_DAEMON = frozenset({"plan", "progress", "preparing", "event", "record", "ack"})
DAEMON_TO_WORKER = frozenset({"control"})
"""Which types each side of each connection may send (the ``accept`` sets of decoders)."""


def validate(msg: Any, accept: Optional[Iterable[str]] = None) -> dict:
    """Check one decoded message against :data:`MESSAGES` and return it.

    ``accept`` restricts the types allowed on this connection (e.g. :data:`CLIENT_TO_DAEMON`).
    Raises ProtocolError (bad_frame, unknown_type, unexpected_type or bad_field).
    """
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload must be a map, got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "payload has no string 'type' field")
    fields = MESSAGES.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    if accept is not None and kind not in accept:
        raise ProtocolError(ErrorCode.UNEXPECTED_TYPE, f"message type {kind!r} is not accepted on this connection")
    _check_fields(fields, msg, kind)
    return msg


def message(msg_type: str, /, *, check: bool = True, **fields: Any) -> dict:
    """Build a message of type ``msg_type``, validated (raises ProtocolError if a field is wrong).

    ``check=False`` is the fast path, for frames sent per step or per line: the daemon's own
    events and log lines, progress it relays, and everything the worker sends (the daemon
    validates the worker's frames on receipt, so a bad one is reported there, not raised in the
    middle of a training step).
    """
    msg = {"type": msg_type, **fields}
    return validate(msg) if check else msg


# ----------------------------------------------------------------------------- constructors
def hello(client: str, version: int = PROTOCOL_VERSION, progress_every: Optional[float] = None) -> dict:
    if progress_every is None:
        return message("hello", version=version, client=client)
    return message("hello", version=version, client=client, progress_every=progress_every)


def request(id: int, action: str) -> dict:
    return message("request", id=id, action=action)


def ping(progress_every: Optional[float] = None) -> dict:
    return message("ping") if progress_every is None else message("ping", progress_every=progress_every)


def pong() -> dict:
    return message("pong")


def welcome(run: dict, snapshot: dict, version: int = PROTOCOL_VERSION) -> dict:
    return message("welcome", version=version, run=run, snapshot=snapshot)


def error(code: str, text: str) -> dict:
    return message("error", code=code, message=text)


def progress(*, check: bool = True, **fields: Any) -> dict:
    """A progress message; ``fields`` are those of MESSAGES["progress"]."""
    return message("progress", check=check, **fields)


def preparing(*, check: bool = True, **fields: Any) -> dict:
    """A preparing message; ``fields`` are those of MESSAGES["preparing"]."""
    return message("preparing", check=check, **fields)


def event(kind: str, level: str, text: str, data: Optional[dict] = None, *,
          seq: Optional[int] = None, at: Optional[float] = None, check: bool = True) -> dict:
    """An event; ``seq`` is left out when None (the worker's events: the daemon numbers them)."""
    msg = {"time": time.time() if at is None else at, "kind": kind, "level": level,
           "message": text, "data": dict(data or {})}
    if seq is not None:
        msg["seq"] = seq
    return message("event", check=check, **msg)


def log(seq: int, stream: str, line: str, at: Optional[float] = None, *, check: bool = True) -> dict:
    return message("log", check=check, seq=seq, time=time.time() if at is None else at, stream=stream, line=line)


def system(**fields: Any) -> dict:
    """A system sample; ``fields`` are those of MESSAGES["system"]."""
    return message("system", **fields)


def ack(id: int, ok: bool, text: str = "") -> dict:
    return message("ack", id=id, ok=ok, message=text)


def plan(plan_dict: dict, config: dict, *, check: bool = True) -> dict:
    return message("plan", check=check, plan=plan_dict, config=config)


def record(history_record: dict, *, check: bool = True) -> dict:
    return message("record", check=check, record=history_record)


def control(id: int, action: str) -> dict:
    return message("control", id=id, action=action)


def request_key(kind: str) -> str:
    """The ``data`` field by which an event of ``kind`` names a request: ``id`` in a ``request``
    event (a request's outcome), ``request_id`` in any other event a request caused."""
    return "id" if kind == "request" else "request_id"


def request_id_of(event: Mapping[str, Any]) -> Optional[int]:
    """The id of the request that ``event`` (an event frame or body) completes, else None.

    A request is completed by its ``request`` event, or, for pause and resume, by the ``state``
    event the trainer answers with. Other events may name the request that caused them (a
    checkpoint it asked for) without completing it. A stop is also over when the run reaches a
    final state; that rule is the waiting client's (it knows which action it sent).
    """
    kind = event.get("kind")
    if kind not in ("request", "state"):
        return None
    value = (event.get("data") or {}).get(request_key(kind))
    return value if isinstance(value, int) else None


def check_hello(msg: dict) -> None:
    """Raise ProtocolError unless ``msg`` is a hello of this protocol version (the daemon's check)."""
    if msg.get("type") != "hello":
        raise ProtocolError(ErrorCode.NOT_HELLO, f"first frame must be 'hello', got {msg.get('type')!r}")
    if msg["version"] != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"client speaks protocol version {msg['version']}, this daemon speaks {PROTOCOL_VERSION}",
        )


# ----------------------------------------------------------------------------- framing
def encode(msg: dict, limit: int) -> bytes:
    """Frame ``msg``: length prefix + msgpack. Raises ProtocolError if the payload exceeds ``limit``.

    The message is not validated here (constructors and receivers do that).
    """
    try:
        payload = msgpack.packb(msg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"cannot encode {msg.get('type')!r} message: {exc}") from exc
    if len(payload) > limit:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"{msg.get('type')!r} message is {len(payload)} bytes, over the {limit}-byte limit",
        )
    return _HEADER.pack(len(payload)) + payload


def payload_length(header: bytes | bytearray, limit: int, offset: int = 0) -> int:
    """The payload length announced by the frame header at ``offset`` of ``header``; raises
    ProtocolError (frame_too_large) when it is over ``limit``, before any payload is read."""
    (length,) = _HEADER.unpack_from(header, offset)
    if length > limit:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes announced, limit is {limit}")
    return length


def decode_payload(payload: bytes | bytearray, accept: Optional[Iterable[str]] = None) -> dict:
    """Decode and validate the msgpack payload of one frame (without its length prefix)."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types (ValueError, FormatError, StackError, ...)
        raise ProtocolError(ErrorCode.BAD_FRAME, f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from None
    return validate(msg, accept)


class FrameDecoder:
    """Incremental frame decoder: feed it bytes as they arrive, get whole validated messages.

    An oversized length prefix is rejected as soon as its 4 bytes arrive, before any of the body
    is buffered. After a ProtocolError the decoder stays failed: close the connection.
    """

    def __init__(self, limit: int, accept: Optional[Iterable[str]] = None):
        self.limit = limit
        self.accept = frozenset(accept) if accept is not None else None
        self._buf = bytearray()
        self._error: Optional[ProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict]:
        """Add ``data``; return every message completed by it, in order.

        Raises ProtocolError at the first bad frame; the frames decoded before it from this
        chunk are in the error's ``frames`` attribute.
        """
        if self._error is not None:
            raise ProtocolError(self._error.code, "decoder already failed: " + self._error.message)
        self._buf += data
        frames: list[dict] = []
        pos = 0
        try:
            while len(self._buf) - pos >= HEADER_SIZE:
                length = payload_length(self._buf, self.limit, pos)
                end = pos + HEADER_SIZE + length
                if len(self._buf) < end:
                    break
                frames.append(decode_payload(self._buf[pos + HEADER_SIZE:end], self.accept))
                pos = end
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            exc.frames = frames
            raise
        del self._buf[:pos]
        return frames


# ----------------------------------------------------------------------------- asyncio helpers
async def read_frame(reader: asyncio.StreamReader, limit: int, accept: Optional[Iterable[str]] = None) -> dict:
    """Read one frame. Raises ProtocolError, or asyncio.IncompleteReadError at end of stream."""
    length = payload_length(await reader.readexactly(HEADER_SIZE), limit)
    return decode_payload(await reader.readexactly(length), accept)


async def write_frame(writer: asyncio.StreamWriter, msg: dict, limit: int) -> None:
    """Write one frame and wait until the transport buffer has drained."""
    writer.write(encode(msg, limit))
    await writer.drain()


# ----------------------------------------------------------------------------- blocking sockets
def send_frame(sock: socket.socket, msg: dict, limit: int) -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(encode(msg, limit))


def recv_frame(sock: socket.socket, limit: int, timeout: Optional[float] = None,
               accept: Optional[Iterable[str]] = None) -> dict:
    """Receive one frame from a blocking socket within ``timeout`` seconds (None: wait forever).

    Raises TimeoutError (if it expires mid-frame the stream is out of step: close the socket),
    EOFError when the peer closed the connection, ProtocolError for a bad frame.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    previous = sock.gettimeout()
    try:
        length = payload_length(_recv_exactly(sock, HEADER_SIZE, deadline), limit)
        return decode_payload(_recv_exactly(sock, length, deadline), accept)
    finally:
        sock.settimeout(previous)


def _recv_exactly(sock: socket.socket, n: int, deadline: Optional[float]) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after receiving {len(chunks)} of {n} bytes")
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(n - len(chunks), 1 << 20))
        except socket.timeout:  # an alias of TimeoutError since 3.10; reworded for the caller
            raise TimeoutError(f"timed out after receiving {len(chunks)} of {n} bytes") from None
        if not chunk:
            raise EOFError("connection closed" if not chunks else f"connection closed mid-frame ({len(chunks)} of {n} bytes)")
        chunks += chunk
    return bytes(chunks)
