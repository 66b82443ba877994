"""The CLI's blocking side of a run's daemon: one request (pause, resume, checkpoint, stop), one
snapshot, a log tail.

The TUI has its own asyncio link; these helpers are for commands that connect, do one thing and
exit. They speak the protocol of docs/PROTOCOL.md over the run's Unix socket. No torch here.
"""
from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from trainer import protocol
from trainer.run.sockets import find_socket
from trainer.run.state import FINAL_STATES, effective_state

CONNECT_TIMEOUT = 5.0


class ClientError(Exception):
    """Talking to a run's daemon failed; the message says why (meant for the user)."""


class NoDaemon(ClientError):
    """The run has no live daemon to talk to."""


class Connection:
    """A handshaken connection to a run's daemon (context manager)."""

    def __init__(self, run_dir: Path, client: str = "longhaul-cli", timeout: float = CONNECT_TIMEOUT):
        self.run_dir = Path(run_dir)
        path = find_socket(self.run_dir)
        state = effective_state(self.run_dir)
        if path is None:
            raise NoDaemon(f"run {self.run_dir.name} has no running daemon (state: {state})")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
            protocol.send_frame(self.sock, protocol.hello(client), protocol.MAX_CLIENT_FRAME)
            first = protocol.recv_frame(self.sock, protocol.MAX_SERVER_FRAME, timeout=timeout)
        except (ConnectionRefusedError, FileNotFoundError):
            self.sock.close()
            raise NoDaemon(f"run {self.run_dir.name} has no running daemon (state: {state}; stale socket "
                           f"{path})") from None
        except (OSError, EOFError, protocol.ProtocolError) as exc:
            self.sock.close()
            raise ClientError(f"cannot talk to the daemon of {self.run_dir.name}: {exc}") from None
        if first["type"] == "error":
            self.sock.close()
            raise ClientError(f"the daemon of {self.run_dir.name} refused the connection: {first['message']}")
        if first["type"] != "welcome":
            self.sock.close()
            raise ClientError(f"the daemon of {self.run_dir.name} answered hello with {first['type']!r}")
        self.welcome = first

    def send(self, msg: dict) -> None:
        protocol.send_frame(self.sock, msg, protocol.MAX_CLIENT_FRAME)

    def recv(self, timeout: Optional[float]) -> dict:
        """Next frame; TimeoutError, EOFError (daemon gone) or ProtocolError otherwise."""
        return protocol.recv_frame(self.sock, protocol.MAX_SERVER_FRAME, timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def completes(event: dict, request_id: int, action: str) -> bool:
    """Whether an event frame/body is the completion of request `request_id` (`action`): the one
    the protocol names, or for a stop, the run reaching a final state by any way."""
    if protocol.request_id_of(event) == request_id:
        return True
    state = (event.get("data") or {}).get("state")
    return action == "stop" and event.get("kind") == "state" and state in FINAL_STATES


def request(run_dir: Path, action: str, timeout: float = 300.0) -> tuple[dict, Optional[dict]]:
    """Send `action` (pause/resume/checkpoint/stop) and wait for its ack, then for the event that
    completes it (at most `timeout` seconds in all). Returns (ack, completion event or None when
    it did not come in time or the daemon closed first)."""
    if action not in protocol.ACTIONS:
        raise ClientError(f"unknown action {action!r}; expected one of {', '.join(protocol.ACTIONS)}")
    deadline = time.monotonic() + timeout
    request_id = random.SystemRandom().randrange(1, 2**31)
    with Connection(run_dir) as conn:
        conn.send(protocol.request(request_id, action))
        ack = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if ack is None:
                    raise ClientError(f"no answer to {action} within {timeout:.0f} s")
                return ack, None
            try:
                msg = conn.recv(remaining)
            except TimeoutError:
                continue
            except (EOFError, OSError, protocol.ProtocolError) as exc:
                if ack is None:
                    raise ClientError(f"connection to the daemon lost before it answered {action}: {exc}") from None
                return ack, None
            if msg["type"] == "ack" and msg["id"] == request_id:
                ack = msg
                if not ack["ok"]:
                    return ack, None
            elif msg["type"] == "error":
                raise ClientError(f"the daemon closed the connection: {msg['message']}")
            elif ack is not None and msg["type"] == "event" and completes(msg, request_id, action):
                return ack, msg


def fetch_snapshot(run_dir: Path, timeout: float = CONNECT_TIMEOUT) -> Optional[dict]:
    """The daemon's current snapshot (docs/ARCHITECTURE.md "Snapshot"), or None when the run has
    no live daemon."""
    try:
        with Connection(run_dir, timeout=timeout) as conn:
            return conn.welcome["snapshot"]
    except NoDaemon:
        return None


def follow_logs(run_dir: Path, include_recent: bool = False) -> Iterator[str]:
    """Yield trainer log lines as the daemon relays them, until the daemon goes away.

    `include_recent` first yields the lines of the snapshot (the last 200). Raises NoDaemon when
    there is nothing to follow.
    """
    with Connection(run_dir, client="longhaul-logs") as conn:
        if include_recent:
            for body in conn.welcome["snapshot"]["logs"]:
                yield body["line"]
        while True:
            try:
                msg = conn.recv(None)
            except (EOFError, OSError):
                return
            if msg["type"] == "log":
                yield msg["line"]
            elif msg["type"] == "error":
                raise ClientError(f"the daemon closed the connection: {msg['message']}")
