"""The tunables of one daemon. `launch_daemon(settings=...)` overrides them; tests shrink them."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Settings:
    """Tunables of one daemon; tests shrink them."""

    handshake_timeout: float = 10.0
    """Seconds a new connection has to complete its hello."""
    frame_timeout: float = 10.0
    """Seconds a client has to finish a frame it has started sending."""
    max_backlog: int = 4 * 1024 * 1024
    """Bytes of queued events/logs plus transport buffer after which a client is dropped."""
    stall_timeout: float = 120.0
    """Seconds a client may leave the socket unread before it is dropped even without backlog."""
    max_clients: int = 64
    state_write_interval: float = 2.0
    """Minimum seconds between state.json rewrites caused by progress alone."""
    progress_interval: float = 0.2
    """Minimum seconds between progress frames to clients: a small model steps far faster than
    anyone can read, and every frame costs the daemon and each client CPU."""
    stop_timeout: float = 900.0
    """Seconds the worker gets to checkpoint and exit after a stop before it is terminated."""
    kill_timeout: float = 30.0
    """Seconds between SIGTERM and SIGKILL of a worker that ignored the stop."""
    linger: float = 2.0
    """Seconds the daemon keeps flushing to clients after the run ended."""
    write_retry_interval: float = 2.0
    """Seconds between retries of the run files that could not be written (a full disk):
    events held in memory and the pending state.json fields."""
