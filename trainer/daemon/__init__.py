"""The per-run daemon: socket server for clients, supervisor of the trainer child process.

    longhaul start/resume -> launch_daemon(run_dir) -> python -m trainer.daemon RUN_DIR

One asyncio loop does everything; each concern is one module:

- `hub`: clients on the run's Unix socket (`trainer.run.sockets.socket_path`): peer check, handshake, welcome
  snapshot, per-client queues (progress/system coalesced, events and logs in order), broadcast,
  the progress rate limit; a client that falls behind is dropped, never waited for.
- `supervisor`: the worker child (`python -m trainer.worker RUN_DIR --control-fd N`): its start,
  environment and output, the crash/backoff/give-up policy and the stop sequence.
- `requests`: request -> ack -> completion event, with each client's own request id.
- `journal`: what the daemon writes and reads of the run directory (events.jsonl, train.log,
  state.json, the recent events/logs, plan and history series for snapshots); a full disk never
  stops the daemon.
- `core`: the `Daemon` that wires them and decides what the worker's frames mean for the run.
- `ownership`: one daemon per run (the run's lock file and socket); `settings`: the tunables;
  `launch`: `launch_daemon` and the process's `main`.

SIGTERM/SIGINT: stop the worker (it checkpoints and exits 0), state `stopped`, remove the socket.
"""
from trainer.daemon.core import Daemon
from trainer.daemon.launch import launch_daemon, main, start_queued
from trainer.daemon.ownership import DaemonError
from trainer.daemon.settings import Settings

__all__ = ["Daemon", "DaemonError", "Settings", "launch_daemon", "main", "start_queued"]
