"""The feature store a run trains from (data.store): prepared on a fresh start, held fixed after.

    bundle = run_data(trainer)     # Trainer.setup: the run's DataBundle, with or without a store

A fresh run (no checkpoint yet) asks `store_status`; a store that is missing or stale is
prepared first, visibly: `publisher.preparing(body)` a few times a second (the console's line,
the daemon's `preparing` frames the TUI shows as a "preparing data" phase) between two
`preparing` events. Then the store's summary, fingerprint included, goes to RUN/data_store.json.

Torch-free at import (the CLI reads ACCEPT_ENV); the data layer is imported when a run sets up.

A resumed run (a checkpoint and data_store.json exist) never prepares, scans or decodes: it
opens the store and compares its fingerprint with the recorded one. A different store changes
what the next batches are, so the run is refused with what changed, unless the user accepts it
(`--accept-data-change`, which reaches a daemon's worker as ACCEPT_ENV): then a warning alert
says that bit-exact resume is lost and data_store.json records the new store.
"""
from __future__ import annotations

import json
import os
import queue
import time
from typing import Any, Optional, Union

from trainer import setup_stages
from trainer.run.rundir import atomic_write_json

ACCEPT_ENV = "LONGHAUL_ACCEPT_DATA_CHANGE"
"""Set by `longhaul start/resume --accept-data-change` for the daemon and its workers: the store's
fingerprint when the CLI could read it (resume RUN), else 1 (any change)."""
PREPARING_INTERVAL = 0.5
"""Seconds between two `preparing` reports (the first and the last are always sent)."""


class PrepareStopped(Exception):
    """A stop was requested while the store was prepared: the run ends `stopped` before training
    (the shards finished so far are kept; the next start goes on from them)."""


def accept_from_env() -> Union[bool, str]:
    """What ACCEPT_ENV accepts: False (unset or 0), True (1: any changed store), or the one store
    fingerprint `longhaul resume RUN --accept-data-change` saw, so that a store changed again
    later in the same daemon's life is refused like any other change."""
    value = os.environ.get(ACCEPT_ENV, "")
    if value in ("", "0"):
        return False
    return True if value == "1" else value


def accepts(accepted: Union[bool, str], fingerprint: str) -> bool:
    return accepted is True or (isinstance(accepted, str) and accepted == fingerprint)


def run_data(trainer):
    """The DataBundle of `trainer`'s run: build_datasets without a store, else from the store."""
    from trainer.data import build_datasets

    cfg, files = trainer.cfg, trainer.files
    if cfg.data.store is None:
        return build_datasets(cfg, frozen=files.data_auto)  # keeps what `auto` became
    from trainer.data import stored

    setup_stages.announce(trainer.event, "store", f"checking the feature store in {cfg.data.store}")
    cfg, auto_values = stored.resolve_auto(cfg, files.data_auto)
    recorded = read_recorded(files.data_store)
    resuming = files.newest_checkpoint() is not None
    if not resuming:
        ensure_prepared(trainer, cfg)
    store = open_for(cfg, recorded if resuming else None)
    if resuming and recorded is not None:
        check_unchanged(trainer, recorded, store)
    elif recorded is None or recorded.get("fingerprint") != store.fingerprint:
        if resuming:  # data_store.json deleted under the run: nothing to compare with
            trainer.event("alert", "warning", f"{files.data_store.name} is missing or damaged, so whether the feature store "
                          "changed since the checkpoints were written is unknown: recording the current one",
                          what="data_unrecorded")
        record(files.data_store, store)
    return stored.build_from_store(cfg, auto_values, store=store)


def open_for(cfg, recorded: Optional[dict]):
    """The store to train from. A resume whose store is the recorded one opens it as it is: the
    config's recipe is not compared again, since it lists the noise folder afresh and a touched
    or restored noise file would refuse the very store the run trained on. Any other store must
    fit the config's recipe (stored.open_store)."""
    from trainer.data import stored
    from trainer.data.store import FeatureStore

    if recorded is not None:
        store = FeatureStore.open(stored.store_dir(cfg))
        if store.fingerprint == recorded["fingerprint"]:
            return store
        store.close()
    return stored.open_store(cfg)


def read_recorded(path) -> Optional[dict]:
    """data_store.json, or None when absent or damaged (then the run records its store anew)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("fingerprint"), str) else None


def record(path, store) -> None:
    from trainer.data.store import summary

    atomic_write_json(path, summary(store.manifest))


def check_unchanged(trainer, recorded: dict, store) -> None:
    """Refuse (DataError) a store other than the one the run's checkpoints were trained on,
    unless trainer.accept_data_change: then warn and record the new store."""
    if recorded["fingerprint"] == store.fingerprint:
        return
    from trainer.data.report import DataError
    from trainer.data.store import describe_change, summary

    from trainer.data.store.plan import store_dir

    lines = describe_change(recorded, summary(store.manifest)) or [
        f"fingerprint {recorded['fingerprint'][:16]} -> {store.fingerprint[:16]}"]
    if not accepts(trainer.accept_data_change, store.fingerprint):
        run = trainer.run_dir
        raise DataError(
            f"{store_dir(trainer.cfg)}: the feature store changed since "
            f"this run's checkpoints were written ({trainer.files.data_store.name}), so a resume would not be "
            "bit-exact:\n" + "\n".join(f"  - {line}" for line in lines)
            + f"\nRestore the store, or accept the change: longhaul resume {run} --accept-data-change "
            "(longhaul train ... --accept-data-change in the foreground)")
    trainer.event("alert", "warning", "data store changed: bit-exact resume is lost: " + "; ".join(lines),
                  what="data_changed", changes=lines)
    record(trainer.files.data_store, store)


# ----------------------------------------------------------------------------- preparing
def ensure_prepared(trainer, cfg) -> None:
    """Prepare the store of `cfg` (concrete `auto` values) unless it is current, visibly."""
    from trainer.data.store import prepare, store_status
    from trainer.data.store.plan import store_dir

    status, reason = store_status(cfg)
    if status == "current":
        return
    where = store_dir(cfg)
    trainer.event("preparing", "info", f"preparing data: feature store {where} is {status} ({reason})",
                  status=status, reason=reason, store=str(where))
    report = PreparingReport(getattr(trainer.publisher, "preparing", None), str(where),
                             stop=lambda: stop_pending(trainer.controls))
    result = prepare(cfg, progress=report)  # PrepareStopped from `report` ends it: workers killed, lock released
    report.done(result.items)
    trainer.event("preparing", "info",
                  f"data prepared: {result.items} items, {result.computed_shards} shards computed, "
                  f"{result.reused_shards} reused, {len(result.bad)} bad, {result.bytes / 2**20:.1f} MiB "
                  f"in {result.seconds:.1f} s", status="done", items=result.items,
                  computed_shards=result.computed_shards, reused_shards=result.reused_shards,
                  bad=len(result.bad), bytes=result.bytes, seconds=result.seconds, store=str(where))


def stop_pending(controls) -> bool:
    """Whether a stop is among the requests (Controls) that came while the store was prepared
    (training applies them only at step boundaries); the others stay queued, in order."""
    pending = []
    while True:
        try:
            pending.append(controls.requests.get_nowait())
        except queue.Empty:
            break
    for request_id, action in pending:
        if action == "stop" and controls.stop_requested is None:
            controls.stop_requested = request_id
        else:
            controls.requests.put((request_id, action))
    return controls.stop_requested is not None


def stopped_while_preparing(trainer) -> str:
    """End a run stopped before training: the stop request answered, state `stopped`."""
    stop_id = trainer.controls.stop_requested
    trainer.event("request", "info", "stopped while preparing data (the finished shards are kept)", id=stop_id,
                  action="stop", outcome="done")
    trainer.event("state", "info", "stopped", state="stopped")
    return "stopped"


class PreparingReport:
    """prepare()'s progress(done, total) -> `send(body)` at most every PREPARING_INTERVAL:
    {done, total, rate (items/s), eta (s), elapsed, time, store, finished}. Raises
    PrepareStopped when `stop()` says a stop was requested. `done` starts at the items of the
    shards a prepare reuses; the rate counts the computed ones only, from the first computed (as
    PrepareProgressLine: the workers' start-up would make the first ETAs far too long)."""

    def __init__(self, send, store: str, clock=time.monotonic, stop=lambda: False):
        self.send, self.store, self.clock, self.stop = send, store, clock, stop
        self.started = clock()
        self.last: Optional[float] = None
        self.total = 0
        self.start = 0  # items done when `total` was announced (the reused ones)
        self.first: Optional[tuple[float, int]] = None  # (time, done) of the first computed items

    def __call__(self, done: int, total: int) -> None:
        if self.stop():
            raise PrepareStopped(f"stop requested at {done}/{total} items")
        now = self.clock()
        if total != self.total:
            self.total, self.start, self.first = total, done, None
        elif self.first is None and done > self.start:
            self.first = (now, done)
        if self.last is not None and now - self.last < PREPARING_INTERVAL and done < total:
            return
        self.last = now
        self._send(done, total, finished=False)

    def done(self, items: int) -> None:
        self._send(max(items, self.total), max(items, self.total), finished=True)

    def rate(self, done: int, now: float) -> Optional[float]:
        since, before = self.first or (now, done)
        return (done - before) / (now - since) if now > since and done > before else None

    def body(self, done: int, total: int, finished: bool) -> dict[str, Any]:
        now = self.clock()
        rate = self.rate(done, now)
        eta = (total - done) / rate if rate else None
        return {"done": done, "total": total, "rate": rate, "eta": 0.0 if finished else eta,
                "elapsed": now - self.started, "time": time.time(), "store": self.store, "finished": finished}

    def _send(self, done: int, total: int, finished: bool) -> None:
        if self.send is not None:
            self.send(self.body(done, total, finished))
