"""Which alerts are active, in what order, and for how long: the alert bar's rules without Textual.

An alert is a warning or error event that reports a condition, keyed by what condition it reports
(`alert_key`): `data.alert` when the emitter names it, else a rule per kind of today's events. A
later event ends it (`resolved_keys`): `data.resolves`, a calm (info) event of the same key, or a
per-kind rule (a `restart` ends when the trainer runs again, a failed checkpoint when one is
written). A newer alert of the same key replaces the older one. What is left is ordered by
severity, then age: after a kill -9 the crash (error) stays in front of the restart (warning).

`a` acknowledges the alert in front: it steps aside (the next one shows) but stays counted until
it is resolved. Acknowledgements survive a reconnect (the snapshot repeats the same events).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

SEVERITY = {"warning": 1, "error": 2}
WRITE_TROUBLE = ("disk_full", "write_failed", "write_resumed")
"""`data.what` of the daemon journal's alerts about one file of the run directory (events.jsonl,
train.log, state.json): keyed by the file, so "written again" ends "cannot write" of that file."""
RUNNING_AGAIN = ("running", "paused", "stopping", "stopped", "finished", "failed")
"""States after which a pending restart is over (the next `starting` is part of the restart)."""

ALERT_LABELS = {"node_lost": "node lost"}
"""What the bar calls an `alert` event of these `data.what`s instead of `alert` (`Alert.label`):
a lost rank of a data-parallel run says so before its message (`node lost: rank 1 (boxb) ...`)."""

ENDED_BY_PROGRESS = ("restart",)
"""Alerts over once the trainer reports progress made after them (the snapshot's progress of a
run waiting to restart is older than the restart)."""


@dataclass
class Alert:
    """One active condition, as the bar shows it."""

    key: str
    level: str
    kind: str
    message: str
    time: Optional[float]
    order: int
    acknowledged: bool = False
    derived: bool = False
    """Set from other data (`AlertBook.set_condition`), not from an event."""
    label: str = ""
    """What the bar calls it (`ALERT_LABELS`); the kind when empty."""

    @property
    def severity(self) -> int:
        return SEVERITY.get(self.level, 0)


def alert_key(event: dict) -> str:
    """What condition `event` reports: `data.alert`, else per kind (`alert` events by `data.what`)."""
    data = event.get("data") or {}
    if data.get("alert"):
        return str(data["alert"])
    kind = str(event.get("kind") or "?")
    if kind != "alert":
        return kind
    what = data.get("what")
    if what in WRITE_TROUBLE and data.get("file"):
        return f"write:{data['file']}"
    # an alert that names no condition is a one-off: each message stands for itself
    return f"alert:{what}" if what else f"alert:{event.get('message', '')}"


def resolved_keys(event: dict) -> list[str]:
    """The keys of the alerts `event` ends."""
    data = event.get("data") or {}
    kind = event.get("kind")
    keys = [str(data["resolves"])] if data.get("resolves") else []
    if event.get("level", "info") == "info":
        keys.append(alert_key(event))
    if kind == "state" and data.get("state") in RUNNING_AGAIN:
        keys.append("restart")
    elif kind == "checkpoint":
        keys.append("checkpoint_failed")
    elif kind == "alert" and data.get("what") == "disk_space_back":
        keys.append("alert:disk_full")
    elif kind == "finished":  # the run came through: what it recovered from is history (view 3)
        keys += ["restart", "crash", "alert:disk_full", "checkpoint_failed", "alert:node_lost"]
    return keys


class AlertBook:
    """The active alerts of one run, fed event by event (and with derived conditions)."""

    def __init__(self) -> None:
        self.active: dict[str, Alert] = {}
        self._order = 0
        self._acked: set[tuple[str, Optional[float], str]] = set()
        self._source: tuple = ()
        self._seen = 0

    # ------------------------------------------------------------------ input
    def add_event(self, event: dict) -> None:
        """Fold one event in: end what it resolves, then keep it if it is a warning or error."""
        for key in resolved_keys(event):
            self.active.pop(key, None)
        level = event.get("level", "info")
        if level not in SEVERITY:
            return
        key = alert_key(event)
        self._order += 1
        kind = str(event.get("kind") or "?")
        label = ALERT_LABELS.get(str((event.get("data") or {}).get("what")), "") if kind == "alert" else ""
        alert = Alert(key=key, level=level, kind=kind, message=str(event.get("message", "")),
                      time=event.get("time"), order=self._order, label=label)
        alert.acknowledged = self._identity(alert) in self._acked
        self.active[key] = alert

    def note_progress(self, at: Optional[float]) -> None:
        """The trainer reported progress at `at`: a restart announced before that is over."""
        for key in ENDED_BY_PROGRESS:
            alert = self.active.get(key)
            if alert is not None and at is not None and alert.time is not None and at > alert.time:
                del self.active[key]

    def set_condition(self, key: str, level: str, message: Optional[str]) -> None:
        """A condition derived from other data (low disk from the system frame): `message` None
        ends it; otherwise it is active with that text (an acknowledgement holds while it lasts)."""
        if message is None:
            self.active.pop(key, None)
            return
        alert = self.active.get(key)
        if alert is None or alert.level != level:
            self._order += 1
            self.active[key] = Alert(key=key, level=level, kind=key, message=message, time=None,
                                     order=self._order, derived=True)
        else:
            alert.message = message

    def sync(self, source: object, generation: int, events: Iterable[dict], total: int) -> bool:
        """Follow a bounded event list that only grows (`total` appended so far) until it is
        replaced (`source`, `generation` change): only new events are read. True if anything was read."""
        if (id(source), generation) != self._source:
            self._source = (id(source), generation)
            self.active = {key: a for key, a in self.active.items() if a.derived}  # a reload resends the events, not these
            self._seen = 0
            new = list(events)
        else:
            count = total - self._seen
            if count <= 0:
                return False
            events = list(events)
            new = events[len(events) - min(len(events), count):]
        for event in new:
            self.add_event(event)
        self._seen = total
        return True

    # ------------------------------------------------------------------ output
    def pending(self) -> list[Alert]:
        """Unacknowledged alerts, the one to show first: errors before warnings, then newest first."""
        return sorted((a for a in self.active.values() if not a.acknowledged),
                      key=lambda a: (a.severity, a.order), reverse=True)

    def top(self) -> Optional[Alert]:
        pending = self.pending()
        return pending[0] if pending else None

    @property
    def acknowledged(self) -> int:
        """Active alerts the user has acknowledged (still counted until they are resolved)."""
        return sum(1 for a in self.active.values() if a.acknowledged)

    def acknowledge(self) -> Optional[Alert]:
        """Acknowledge the alert in front (the next one shows); None when there is none."""
        alert = self.top()
        if alert is not None:
            alert.acknowledged = True
            self._acked.add(self._identity(alert))
        return alert

    @staticmethod
    def _identity(alert: Alert) -> tuple[str, Optional[float], str]:
        return alert.key, alert.time, alert.message


ACTION_LIFETIME = {"info": 8.0, "warning": 15.0, "error": 30.0}
"""Seconds the feedback of an action stays in the bar, by level (errors longer: they need reading)."""


class ActionFeedback:
    """The last action's feedback: shown until it expires or the next action replaces it."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.text, self.level, self._since = "", "info", 0.0

    def set(self, text: str, level: str) -> None:
        if (text, level) != (self.text, self.level):
            self.text, self.level, self._since = text, level, self.now()

    def remaining(self) -> float:
        """Seconds until the feedback expires (0 when there is none or it has expired)."""
        if not self.text:
            return 0.0
        return max(0.0, self._since + ACTION_LIFETIME.get(self.level, ACTION_LIFETIME["info"]) - self.now())

    def current(self) -> tuple[str, str]:
        """(text, level) while it lasts, else ("", "info")."""
        return (self.text, self.level) if self.remaining() > 0 else ("", "info")
