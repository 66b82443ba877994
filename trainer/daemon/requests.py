"""Client requests (pause, resume, checkpoint, stop): request -> ack -> completion.

A request is refused or acked at once; an accepted one goes to the trainer under an id of the
daemon's own (two clients may pick the same id), and the event that completes it
(`protocol.request_id_of`) goes to every client with the id its sender chose.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Callable, Optional

from trainer import protocol
from trainer.daemon.hub import ClientConn

if TYPE_CHECKING:
    from trainer.daemon.supervisor import Supervisor


@dataclasses.dataclass
class Pending:
    """A request forwarded to the worker, waiting for its completion event."""

    conn: Optional[ClientConn]
    client_id: int
    action: str


class Requests:
    """The requests of one daemon. `emit(kind, level, message, data)` records and sends an event."""

    def __init__(self, emit: Callable[[str, str, str, dict], object]):
        self.emit = emit
        self.pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)

    def handle(self, conn: ClientConn, request_id: int, action: str, state: Optional[str],
               trainer: Supervisor) -> None:
        """A client's request: refuse it, or hand it to the trainer and ack it (its completion
        comes later, as an event)."""
        reason = self.refusal(action, state, trainer)
        if reason is not None:
            conn.send(protocol.ack(request_id, False, reason))
            return
        if not trainer.running:  # stop while a restart is pending: cancel it
            trainer.cancel_restart()
            conn.send(protocol.ack(request_id, True, "restart cancelled"))
            self.emit("request", "info", "stop: restart cancelled", {"id": request_id, "action": action, "outcome": "done"})
            return
        pending = Pending(conn, request_id, action)
        if action == "stop":
            trainer.begin_stop(pending, "request")
        else:
            trainer.forward(pending)
        conn.send(protocol.ack(request_id, True, f"{action} sent to the trainer"))

    def refusal(self, action: str, state: Optional[str], trainer: Supervisor) -> Optional[str]:
        """Why `action` cannot be done now (None: it can)."""
        if not trainer.running:
            if action == "stop" and (trainer.restart_pending or trainer.between_generations):
                return None
            return f"no trainer is running (run is {state})"
        if trainer.shutting_down or state == "stopping":
            return "the run is already stopping"
        pending = {p.action for p in self.pending.values()}
        if action == "pause" and (state == "paused" or "pause" in pending):
            return "already paused"
        if action == "resume" and state != "paused" and "pause" not in pending:
            return f"not paused (run is {state})"
        return None

    def register(self, pending: Pending) -> int:
        """The id under which `pending` goes to the worker."""
        worker_id = next(self._ids)
        self.pending[worker_id] = pending
        return worker_id

    def relabel(self, kind: str, data: dict) -> Optional[Pending]:
        """Worker events name requests by the daemon's ids: give each client its own id back
        (in `data`, changed in place). Returns the request this event completes, else None."""
        key = protocol.request_key(kind)
        worker_id = data.get(key)
        if not isinstance(worker_id, int) or worker_id not in self.pending:
            return None
        data[key] = self.pending[worker_id].client_id
        if protocol.request_id_of({"kind": kind, "data": data}) is None:
            return None  # an event the request caused (a checkpoint), not its completion
        return self.pending.pop(worker_id)

    def refused_by_trainer(self, ack: dict) -> None:
        """The trainer's `ack` with ok false: the request is over, say so."""
        data = {"id": ack["id"], "outcome": "refused"}
        pending = self.pending.get(ack["id"])
        if pending is not None:
            data["action"] = pending.action
        self.relabel("request", data)
        self.emit("request", "warning", ack["message"] or "request refused by the trainer", data)

    def finish(self, final_state: str) -> None:
        """Complete requests the worker never answered (it exited first)."""
        for pending in self.pending.values():
            if pending.action == "stop" and final_state in ("stopped", "finished"):
                outcome, text = "done", f"stop: run {final_state}"
            else:
                outcome, text = "failed", f"{pending.action}: trainer exited before doing it"
            self.emit("request", "info" if outcome == "done" else "warning", text,
                      {"id": pending.client_id, "action": pending.action, "outcome": outcome})
        self.pending.clear()
