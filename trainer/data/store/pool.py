"""The worker processes of `longhaul prepare`: spawned, one shard per task, a death named by its shard.

Workers are started with the "spawn" method: the main process has imported torch, and a forked
copy of a process that ran torch's thread pools can hang. Each worker takes one shard at a time
over its own pipe, so when one dies (SIGKILL, the OOM killer) the main process knows exactly
which shard it was computing and says so; multiprocessing.Pool would wait for that task forever.

Worker -> main messages: ("items", n) now and then (progress: n more items done), ("done", key, outcomes) when
the shard is on disk, ("failed", key, message, kind) when it could not be written: kind "store" (a
StoreError), "disk_full" (StoreDiskFull) or "bug" (message: the traceback).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Callable, Optional

from .layout import StoreDiskFull, StoreError

# How long a closing worker may take to exit before it is killed (it has nothing left to write).
EXIT_GRACE_S = 5.0
# A worker tells its progress at most this often (a message per item would wake the main process
# thousands of times a second on the cores the workers need).
PROGRESS_EVERY_S = 0.2
# Workers whose main process is gone (killed with SIGKILL) stop within this many seconds instead
# of finishing their shard without the prepare lock.
ORPHAN_CHECK_S = 1.0


@dataclass
class ShardTask:
    """One shard to compute: which, and its items with their on-disk identity."""

    split: str
    key: str
    variants: int
    items: list = field(default_factory=list)
    """trainer.data.decode.Item of each item, in shard order."""
    keys: list = field(default_factory=list)
    """layout.ItemKey of each item, in the same order."""

    def describe(self) -> str:
        first = self.keys[0].path if self.keys else "?"
        return f"shard {self.key} of the {self.split} split ({len(self.items)} items from {first})"


class WorkerDied(StoreError):
    """A prepare worker died (SIGKILL, the OOM killer): the finished shards are kept, and a prepare
    run again, or a daemon's restart of the run, goes on from them."""

    retry_may_help = True


class WorkerFailed(Exception):
    """A worker reported an error that is not the store's (a bug): the message holds its traceback."""


class ShardPool:
    """`workers` spawned processes computing shards of one store; use as a context manager."""

    def __init__(self, cfg, store_dir: str, workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.procs: list = []
        self.conns: list[Connection] = []
        for _ in range(workers):
            ours, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=serve, args=(theirs, cfg, store_dir, os.getpid()), daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)

    def __enter__(self) -> "ShardPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None)

    def run(self, tasks: list[ShardTask], on_items: Callable[[int], None],
            on_done: Callable[[ShardTask, list], None]) -> None:
        """Compute every task; on_items(n) as items get done, on_done(task, outcomes) after each shard.

        Raises StoreError naming the shard when a worker dies or cannot write it."""
        waiting = list(reversed(tasks))
        busy: dict[int, ShardTask] = {}
        for slot in range(len(self.procs)):
            self._give(slot, waiting, busy)
        while busy:
            sentinels = {self.procs[slot].sentinel: slot for slot in busy}
            ready = wait([self.conns[slot] for slot in busy] + list(sentinels))
            # Messages first: a worker that finished its shard and then died still delivered it.
            for slot in [self.conns.index(r) for r in ready if r not in sentinels]:
                if slot in busy and self._receive(slot, busy, on_items, on_done):
                    self._give(slot, waiting, busy)
            for slot in [sentinels[r] for r in ready if r in sentinels]:
                task = busy.get(slot)
                if self._drain(slot, busy, on_items, on_done):
                    task = None
                self._died(slot, task)

    def _give(self, slot: int, waiting: list[ShardTask], busy: dict[int, ShardTask]) -> None:
        busy.pop(slot, None)
        if waiting:
            busy[slot] = waiting.pop()
            try:
                self.conns[slot].send(busy[slot])
            except OSError:  # it died since its last message
                self._died(slot, busy[slot])

    def _receive(self, slot: int, busy: dict[int, ShardTask], on_items, on_done) -> bool:
        """Handle one message of `slot`; True when its shard is finished."""
        try:
            message = self.conns[slot].recv()
        except (EOFError, OSError):
            self._died(slot, busy[slot])
        if message[0] == "items":
            on_items(message[1])
            return False
        task = busy[slot]
        if message[0] == "done":
            on_done(task, message[2])
            return True
        _, _, text, kind = message
        if kind == "disk_full":
            raise StoreDiskFull(text)
        if kind == "store":
            raise StoreError(text)
        raise WorkerFailed(f"a prepare worker failed on {task.describe()}:\n{text}")

    def _drain(self, slot: int, busy, on_items, on_done) -> bool:
        """Messages a worker sent before it exited; True when its shard was finished after all."""
        conn = self.conns[slot]
        while slot in busy and conn.poll(0):
            try:
                if self._receive(slot, busy, on_items, on_done):
                    return True
            except (EOFError, OSError):
                break
        return False

    def _died(self, slot: int, task: Optional[ShardTask]):
        proc = self.procs[slot]
        proc.join(1.0)
        code = proc.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with status {code}")
        doing = f"while computing {task.describe()}" if task else "between two shards"
        raise WorkerDied(f"a prepare worker (pid {proc.pid}) {how} {doing}; "
                         "the finished shards are kept: run `longhaul prepare` again to go on")

    def close(self, kill: bool = False) -> None:
        """Stop the workers: politely when all went well, at once after an error."""
        for proc, conn in zip(self.procs, self.conns):
            try:
                if not kill and proc.is_alive():
                    conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + (0 if kill else EXIT_GRACE_S)
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


# ----------------------------------------------------------------------------- worker side
def serve(conn: Connection, cfg, store_dir: str, parent: int) -> None:
    """A worker's life: build the shard maker once, then compute shards until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    import torch

    torch.set_num_threads(1)  # one process per core: threads inside each would only compete
    from .compute import ShardMaker

    maker = ShardMaker(cfg, store_dir)
    while True:
        try:
            task: Optional[ShardTask] = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_compute(maker, task, conn))


def _compute(maker, task: ShardTask, conn: Connection) -> tuple:
    pending, last = 0, time.monotonic()

    def step() -> None:
        nonlocal pending, last
        pending += 1
        if pending == len(task.items) or time.monotonic() - last >= PROGRESS_EVERY_S:
            conn.send(("items", pending))
            pending, last = 0, time.monotonic()

    try:
        outcomes = maker.make(task, step)
    except StoreError as exc:
        return ("failed", task.key, str(exc), "disk_full" if isinstance(exc, StoreDiskFull) else "store")
    except Exception:  # a bug: the main process shows it with the shard it happened on
        return ("failed", task.key, traceback.format_exc(), "bug")
    return ("done", task.key, outcomes)


def _exit_with_parent(parent: int) -> None:
    """A worker whose prepare was killed stops: it must not write the store without the lock."""
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)
