"""Textual messages posted by the daemon link (`tui.link`) to the run screen.

A busy run sends many frames a second (progress per step, a log line per print). Two rules keep
the screen's work bounded without losing anything that must not be lost:

- Progress and system samples are shown in their newest version. While one is still waiting in
  the screen's queue, the link updates it in place instead of posting another (`merge`); a
  merged progress message keeps the older frames too, as points of the progress series.
  Messages posted back to back without the link (`can_replace`) coalesce to the last one.
- Events and log lines are never dropped: while a batch is waiting, the link appends to it.

The screen calls `take()` first thing in its handler; from then on the link posts a new message.
"""
from __future__ import annotations

from textual.message import Message


class LinkMessage(Message):
    """Base class of everything the daemon link posts."""

    bubble = False

    def __init__(self) -> None:
        super().__init__()
        self.taken = False

    def take(self) -> None:
        """Mark the message as being handled: the link stops merging frames into it."""
        self.taken = True


class MergingMessage(LinkMessage):
    """A message the link may still add frames to while it waits in the queue."""

    def merge(self, frame: dict) -> None:
        raise NotImplementedError


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


class PlanReceived(LinkMessage):
    """The trainer laid out its phase plan after we attached (`frame` has plan and config)."""

    def __init__(self, frame: dict) -> None:
        super().__init__()
        self.frame = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PlanReceived)


class ProgressReceived(MergingMessage):
    """The newest progress frame, plus the older frames merged into it while it waited.

    The header needs only the newest frame, but each frame is also a point of the progress
    series: keeping the older ones (bounded) makes the sparklines independent of how busy the
    app was when the frames arrived.
    """

    MAX_EARLIER = 500

    def __init__(self, progress: dict) -> None:
        super().__init__()
        self.progress = progress
        self.earlier: list[dict] = []

    def merge(self, frame: dict) -> None:
        self.earlier.append(self.progress)
        del self.earlier[:-self.MAX_EARLIER]
        self.progress = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProgressReceived)


class SystemReceived(MergingMessage):
    """The newest system sample (coalesced like progress)."""

    def __init__(self, system: dict) -> None:
        super().__init__()
        self.system = system

    def merge(self, frame: dict) -> None:
        self.system = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SystemReceived)


class PreparingReceived(MergingMessage):
    """The newest `preparing` frame: the feature store being prepared (coalesced like progress)."""

    def __init__(self, preparing: dict) -> None:
        super().__init__()
        self.preparing = preparing

    def merge(self, frame: dict) -> None:
        self.preparing = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PreparingReceived)


class EventsReceived(MergingMessage):
    """Event frames in arrival order; never dropped."""

    def __init__(self, event: dict) -> None:
        super().__init__()
        self.events = [event]

    def merge(self, frame: dict) -> None:
        self.events.append(frame)


class LogsReceived(MergingMessage):
    """Lines of the trainer's stdout/stderr in arrival order."""

    def __init__(self, log: dict) -> None:
        super().__init__()
        self.logs = [log]

    def merge(self, frame: dict) -> None:
        self.logs.append(frame)


class AckReceived(LinkMessage):
    """The daemon's immediate answer to one of our requests."""

    def __init__(self, ack: dict) -> None:
        super().__init__()
        self.ack = ack
