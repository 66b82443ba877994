"""Data-parallel training: one rank of a torch.distributed (gloo) group that torchrun started.

A single process is a `World` of size 1 whose every method is free and does nothing, so the
engine has one code path. In a group (world size > 1, torchrun's RANK/WORLD_SIZE set):

- **Who decides.** Rank 0 owns the run: it alone talks to the daemon, takes requests, watches the
  disk and writes history, events and checkpoints. At every step boundary it tells the others
  whether to go on or stop (`agree_stop`); while it waits (paused, a full disk) it says so every
  few seconds (`keep_waiting`), so a pause of hours never reaches the collective timeout.
- **The same state everywhere.** The model, optimizer and EMA start equal (DDP broadcasts rank
  0's at construction) and stay equal (the gradients are averaged). Counters, early stopping and
  plateau follow from evaluations every rank computes from the same gathered predictions. The
  loss every rank logs and checks for NaN is the group's mean (`mean`), so all skip the same step.
- **Randomness without state.** Dropout and drop-path draw from torch's global RNG, which is
  reseeded at each step from (seed, rank, step) (`seed_step`): a resumed rank draws what it
  would have drawn, with no per-rank RNG state in the checkpoint.
- **Checkpoints.** Rank 0 writes them into its run directory and, at a (re)start, loads the newest
  and sends its state to the others (`from_main`): the other boxes need no shared file system
  and never read a checkpoint. The cost is one transfer of the state at start, small beside a
  restart.
- **Overlap.** DDP's buckets start their allreduce while backward is still running. A comm hook
  times each bucket (`AllreduceClock`): what the step waited after the last bucket was launched
  is the *exposed* allreduce time, the part of communication that costs step time.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from trainer.data import seeds

GO, STOP, WAITING = 0, 1, 2
"""What rank 0 says at a step boundary (`agree_stop`) and while it waits (`keep_waiting`)."""



def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class AllreduceClock:
    """Times DDP's bucket allreduces of one step (the comm hook below): bytes sent, busy seconds
    (launch to completion, summed), and the launch of the last bucket, after which backward has
    nothing left to compute: the time from there to backward's return is the exposed part."""

    launches: list = field(default_factory=list)
    busy: float = 0.0
    bytes: int = 0

    def reset(self) -> None:
        self.launches, self.busy, self.bytes = [], 0.0, 0

    def exposed(self, backward_end: float) -> Optional[float]:
        return max(0.0, backward_end - self.launches[-1]) if self.launches else None


def timed_allreduce(clock: AllreduceClock, bucket):  # no annotations: DDP checks them against its classes
    """DDP comm hook (`bucket`: a dist.GradBucket): the default mean allreduce of one bucket, timed."""
    started = time.perf_counter()
    clock.launches.append(started)
    buffer = bucket.buffer()
    clock.bytes += buffer.numel() * buffer.element_size()
    buffer.div_(dist.get_world_size())
    work = dist.all_reduce(buffer, async_op=True)

    def done(fut: torch.futures.Future) -> torch.Tensor:
        clock.busy += time.perf_counter() - started
        return fut.value()[0]

    return work.get_future().then(done)


class World:
    """This process's place in the group (rank, world size, host) and the few collectives the
    engine needs. Size 1: every method is a no-op."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, timeout_seconds: float = 600.0,
                 bucket_cap_mb: float = 25.0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.timeout_seconds, self.bucket_cap_mb = timeout_seconds, bucket_cap_mb
        self.host = socket.gethostname()
        self.hosts = [self.host]
        self.clock = AllreduceClock()
        self._flag = torch.zeros(1, dtype=torch.int64)

    @classmethod
    def from_env(cls, timeout_seconds: float = 600.0, bucket_cap_mb: float = 25.0) -> "World":
        rank, size, local_rank = env_world()
        return cls(rank, size, local_rank, timeout_seconds, bucket_cap_mb)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ the group
    def start(self) -> None:
        """Join the gloo group (torchrun's rendezvous put MASTER_ADDR/PORT in the environment)."""
        if not self.enabled or dist.is_initialized():
            return
        timeout = datetime.timedelta(seconds=self.timeout_seconds)
        dist.init_process_group("gloo", store=self._store(timeout), rank=self.rank, world_size=self.size,
                                timeout=timeout)
        hosts: list = [None] * self.size
        dist.all_gather_object(hosts, self.host)
        self.hosts = [str(h) for h in hosts]

    def _store(self, timeout: datetime.timedelta) -> "dist.Store":
        """The store the ranks meet in, its keys prefixed with the agent's restart count: the
        agent keeps one store for all the generations it starts, and gloo's keys of a dead
        generation (its ranks' addresses) would otherwise be read by the next one, which then
        connects to ports nobody listens on ("connectFullMesh failed ... Connection refused")."""
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.size,
                              is_master=not agent_store and self.main, timeout=timeout)
        return dist.PrefixStore(f"longhaul/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # ------------------------------------------------------------------ rank 0 decides
    def agree_stop(self, stop: bool) -> bool:
        """At a step boundary: rank 0's `stop` for every rank (the others pass anything)."""
        if not self.enabled:
            return stop
        if self.main:
            self._flag[0] = STOP if stop else GO
            dist.broadcast(self._flag, 0)
            return stop
        while True:
            dist.broadcast(self._flag, 0)
            if int(self._flag[0]) != WAITING:
                return int(self._flag[0]) == STOP

    def keep_waiting(self) -> None:
        """Rank 0, while it waits at a step boundary: the others wait on (see agree_stop)."""
        if self.enabled and self.main:
            self._flag[0] = WAITING
            dist.broadcast(self._flag, 0)

    # ------------------------------------------------------------------ the same numbers everywhere
    def seed_step(self, seed: int, step: int) -> None:
        """Reseed torch's global RNG (dropout, drop-path) from (seed, rank, step)."""
        if self.enabled:
            state = seeds.seed_sequence(seeds.STEP_RNG, seed, self.rank, step).generate_state(1, np.uint64)
            torch.manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (the others pass None)."""
        if not self.enabled:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def step(self, loss: float, seconds: float, data_time: float,
             exposed: Optional[float]) -> tuple[float, Optional[dict]]:
        """(the group's mean loss of this step, the progress body's `world` on rank 0): every
        rank skips a NaN step together, and rank 0 shows each rank's step time and shares."""
        if not self.enabled:
            return loss, None
        share = -1.0 if exposed is None else exposed / max(seconds, 1e-9)
        stats = self.step_stats([loss, seconds, data_time / max(seconds, 1e-9), share])
        return float(stats[:, 0].mean()), self.body(stats) if self.main else None

    def step_stats(self, row: list[float]) -> torch.Tensor:
        """Every rank's `row` (loss, step seconds, data share, exposed allreduce share or -1),
        one row per rank: one small collective per step."""
        mine = torch.tensor(row, dtype=torch.float64)
        if not self.enabled:
            return mine.unsqueeze(0)
        rows = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(rows, mine)
        return torch.stack(rows)

    def accumulating(self, module: torch.nn.Module, last: bool):
        """Micro-batches before the last of a step keep their gradients local (no allreduce)."""
        if self.enabled and not last:
            return module.no_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ the model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module training steps run: DDP over `model` (re-made when a phase changes which
        parameters train: DDP only reduces those that trained when it was made)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, broadcast_buffers=True, gradient_as_bucket_view=True,
                                      bucket_cap_mb=self.bucket_cap_mb)
        ddp.register_comm_hook(self.clock, timed_allreduce)
        return ddp

    def share_of(self, n: int) -> range:
        """This rank's examples of an evaluation of `n` (every size-th from its rank)."""
        return range(self.rank, n, self.size)

    def body(self, stats: torch.Tensor) -> dict:
        """The progress body's `world` from `step_stats` rows (protocol BODIES "world")."""
        ranks = [{"rank": r, "host": self.hosts[r], "step_seconds": row[1], "data_share": row[2],
                  "allreduce_share": None if row[3] < 0 else row[3]} for r, row in enumerate(stats.tolist())]
        return {"world_size": self.size, "ranks": ranks}


class FollowerCheckpoints:
    """The checkpoint policy of a rank other than 0: rank 0 writes every checkpoint, best.pt and
    last.pt; this one writes nothing and has never anything left to write."""

    best_unsaved = False
    last_failure = None
    saved_at = saved_path = None
    estimate = 0

    def __init__(self):
        self.last_time = time.monotonic()
        self.store = self  # finish() closes the store

    def open_store(self) -> None: ...
    def maybe_checkpoint(self) -> None: ...
    def checkpoint(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        return True

    def write(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        return True

    def wait(self) -> bool:
        return True

    def is_written(self) -> bool:
        return True

    def fence(self) -> None: ...
    def save_best(self) -> None: ...
    def answer_request(self, request_id: int) -> None: ...
    def close(self) -> None: ...


class FollowerHistory:
    """The history of a rank other than 0: rank 0 writes history.msgpack."""

    def append(self, record: dict) -> None: ...
    def tell(self) -> int:
        return 0

    def reopen(self) -> None: ...
    def close(self) -> None: ...
