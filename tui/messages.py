"""Textual messages posted by the daemon link (`tui.client`) to the run screen.

Progress and system samples only ever matter in their newest version, so they coalesce: when
several are queued back to back, the screen handles just the last one (`can_replace`). Events,
log lines and acks are never merged.
"""
from __future__ import annotations

from textual.message import Message


class LinkMessage(Message):
    """Base class of everything the daemon link posts."""

    bubble = False


class Connected(LinkMessage):
    """The handshake succeeded; `welcome` is the daemon's welcome frame (with the snapshot)."""

    def __init__(self, welcome: dict) -> None:
        super().__init__()
        self.welcome = welcome


class Disconnected(LinkMessage):
    """No connection: `reason` says why, the link retries in `retry_in` seconds (attempt `attempt`)."""

    def __init__(self, reason: str, retry_in: float, attempt: int, was_connected: bool) -> None:
        super().__init__()
        self.reason = reason
        self.retry_in = retry_in
        self.attempt = attempt
        self.was_connected = was_connected

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, Disconnected)


class LinkFailed(LinkMessage):
    """The daemon refused us for good (e.g. protocol version mismatch); the link stopped."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message


class ProgressReceived(LinkMessage):
    """A progress frame (coalesced: only the newest queued one is handled)."""

    def __init__(self, progress: dict) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProgressReceived)


class SystemReceived(LinkMessage):
    """A system sample (coalesced like progress)."""

    def __init__(self, system: dict) -> None:
        super().__init__()
        self.system = system

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SystemReceived)


class EventReceived(LinkMessage):
    """An event frame; never dropped."""

    def __init__(self, event: dict) -> None:
        super().__init__()
        self.event = event


class LogReceived(LinkMessage):
    """A line of the trainer's stdout/stderr."""

    def __init__(self, log: dict) -> None:
        super().__init__()
        self.log = log


class AckReceived(LinkMessage):
    """The daemon's immediate answer to one of our requests."""

    def __init__(self, ack: dict) -> None:
        super().__init__()
        self.ack = ack
