"""A data-parallel run's workers: torchrun's elastic agent, as the daemon's one child.

    python -m torch.distributed.run --nnodes N --nproc-per-node P --max-restarts R ...
        -m trainer.worker RUN_DIR --control-socket PATH

The agent starts the ranks, meets the other boxes' agents at the c10d rendezvous, and restarts
the whole group when a rank dies or a node is lost (`distributed.max_restarts` times). Rank 0 of
each generation connects to the run's worker socket (`WorkerSocket`) and talks to the daemon as a
single worker does; the other ranks only train. When the agent gives up and exits, the daemon's
own crash policy (`daemon.max_restarts`, with backoff) counts one crash and starts it again: the
agent restarts for membership (fast, no backoff), the daemon for repeated failure.

A single worker keeps its socketpair (`PairChannel`): the agent closes inherited descriptors, so
a group needs the socket path instead.
"""
from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Awaitable, Callable, Optional

from trainer.run.sockets import socket_path


def torchrun_argv(worker_argv: list[str], d, run_id: str) -> list[str]:
    """The agent's command for the worker command `worker_argv` (`python -m trainer.worker` or
    `python script.py`) and the run's `distributed` config section."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(d.procs_per_node),
            "--max-restarts", str(d.max_restarts), "--monitor-interval", "1"]
    if d.nodes == 1 and d.rdzv is None:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        nodes = f"{d.min_nodes}:{d.nodes}" if d.min_nodes is not None else str(d.nodes)
        argv += ["--nnodes", nodes, "--rdzv-backend", "c10d", "--rdzv-endpoint", d.rdzv, "--rdzv-id", run_id]
        if d.local_addr and d.rdzv.rpartition(":")[0].strip("[]") == d.local_addr:
            # the rendezvous is this box's: torchrun recognises its own host name, not every address
            argv += ["--rdzv-conf", "is_host=1"]
    if d.local_addr:
        argv += ["--local-addr", d.local_addr]
    return argv + list(worker_argv[1:])  # the worker's own interpreter is the agent's


def group_env(d) -> dict:
    """What the agent and its ranks get in their environment besides the worker's."""
    env = {"OMP_NUM_THREADS": "1"}  # torchrun's own default, said here so it does not print a warning;
    # the engine sets the run's thread count itself
    if d.interface:
        env["GLOO_SOCKET_IFNAME"] = d.interface
    return env


def worker_socket_path(run_dir: Path) -> Path:
    """Where rank 0 of a group connects: the run's client socket path with another suffix (the
    same length, so it fits wherever that one does)."""
    return socket_path(run_dir).with_suffix(".wrk")


class PairChannel:
    """A single worker's channel: a socketpair whose child end the worker inherits."""

    def __init__(self):
        self.parent, self.child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.worker_args = ["--control-fd", str(self.child.fileno())]
        self.pass_fds = (self.child.fileno(),)

    def spawned(self) -> None:
        self.child.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(sock=self.parent)

    def close(self) -> None:
        self.child.close()
        self.parent.close()


class WorkerSocket:
    """A group's channel: a private Unix socket rank 0 connects to, once per generation of the
    group (each restart by the agent connects anew); `on_rank_zero` serves one connection."""

    def __init__(self, run_dir: Path, on_rank_zero: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                                Awaitable[None]]):
        self.path = worker_socket_path(run_dir)
        self.on_rank_zero = on_rank_zero
        self.server: Optional[asyncio.base_events.Server] = None
        self.worker_args = ["--control-socket", str(self.path)]
        self.pass_fds: tuple = ()

    async def open(self) -> "WorkerSocket":
        self.path.unlink(missing_ok=True)  # a daemon killed before it removed its own
        self.server = await asyncio.start_unix_server(self.on_rank_zero, path=str(self.path))
        return self

    def spawned(self) -> None: ...

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.path.unlink(missing_ok=True)
