"""The worker child: its start, environment and output, the crash/backoff/give-up policy, and
the stop sequence.

    python -m trainer.worker RUN_DIR --control-fd N

The worker runs the engine and sends progress, events, history records and its plan over a
socketpair (same framing as clients); its stdout/stderr become train.log and `log` frames. A
crash is reported and the worker restarted with exponential backoff (it resumes from its last
checkpoint by itself) up to `daemon.max_restarts` consecutive crashes; then the run is `failed`.
A stop (a request, SIGTERM/SIGINT) asks the worker to checkpoint and exit, and terminates it if
it takes too long. A stop whose final checkpoint failed (the trainer answers `request` outcome
"failed" and trains on) puts the run back in the trainer's real state; a later stop tries again.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Optional, Protocol

from trainer import protocol
from trainer.daemon.group import PairChannel, WorkerSocket, group_env, torchrun_argv
from trainer.daemon.journal import MAX_LOG_LINE, clean_line
from trainer.daemon.requests import Pending, Requests
from trainer.daemon.settings import Settings
from trainer.run.errors import USER_ERROR_EXIT
from trainer.run.state import FINAL_STATES

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
STDERR_TAIL = 40


def child_env() -> dict:
    """The environment of a process the daemon side starts (the daemon, its worker): this
    checkout first on PYTHONPATH, so `python -m trainer...` runs this code whatever the cwd."""
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def describe_exit(returncode: int) -> tuple[Optional[int], Optional[str], str]:
    """(signal number, signal name, human sentence) for a worker's return code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"trainer killed by {name}"
        if -returncode == signal.SIGKILL:
            text += " (possibly out of memory: check `dmesg` or `journalctl -k` for the OOM killer)"
        return -returncode, name, text
    return None, None, f"trainer exited with code {returncode}"


class Host(Protocol):
    """What the supervisor tells the daemon it works for."""

    def set_state(self, state: str, message: Optional[str] = None, level: str = "info", **fields) -> None: ...

    def emit(self, kind: str, level: str, message: str, data: dict) -> dict: ...

    def worker_starting(self) -> None: ...

    async def on_worker_frame(self, msg: dict) -> None: ...

    def on_worker_output(self, stream: str, lines: list[str]) -> None: ...

    def worker_exited(self) -> None: ...


class Supervisor:
    """Runs the worker until the run ends. `spawn(coro)` starts a task the daemon cancels at exit."""

    def __init__(self, run_dir: Path, argv: list[str], settings: Settings, requests: Requests, host: Host,
                 spawn: Callable[..., asyncio.Task]):
        self.run_dir = run_dir
        self.argv = argv
        self.settings = settings
        self.requests = requests
        self.host = host
        self.spawn = spawn
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        # what the current worker said about itself (the daemon notes its state and checkpoints)
        self.last_state: Optional[str] = None
        self.checkpointed = False
        self.traceback: Optional[str] = None
        self.killed_why: Optional[str] = None  # the daemon killed the current worker (the watchdog)
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL)
        self.restart_pending = False
        self.shutting_down = False
        self.stop_reason: Optional[str] = None
        self.stop_event = asyncio.Event()
        self._stop_timer: Optional[asyncio.Task] = None
        self.distributed = None  # the run's `distributed` section; world size > 1: a torchrun group
        self.generations = 0  # rank-0 connections of the current agent (group.py)
        self.user_error = False  # the worker's crash said a restart cannot help

    @property
    def running(self) -> bool:
        """A worker is up and its channel open: requests can go to it."""
        return self.proc is not None and self.writer is not None

    @property
    def group(self) -> bool:
        """The worker is torchrun's agent of a data-parallel group (its children are the ranks)."""
        return self.distributed is not None and self.distributed.enabled

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------ stopping
    def shutdown(self, reason: str) -> None:
        """Stop the run (SIGTERM/SIGINT, or the daemon's owner)."""
        if self.shutting_down:
            log.warning("%s: already stopping", reason)
            return
        log.info("%s: stopping the run", reason)
        self.shutting_down = True
        self.stop_reason = reason
        if self.running:
            self.begin_stop(Pending(None, 0, "stop"), reason)
        else:
            self._end_group_agent()
        self.stop_event.set()

    @property
    def between_generations(self) -> bool:
        """torchrun's agent runs but no rank 0 is connected: the group is (re)starting."""
        return self.proc is not None and self.writer is None

    def cancel_restart(self) -> None:
        """A stop request while a restart is pending (the daemon's, or the agent's): no restart."""
        self.stop_reason = "request"
        self._end_group_agent()
        self.stop_event.set()

    def _end_group_agent(self) -> None:
        """An agent waiting at the rendezvous has no rank to ask: it is terminated (it ends its
        ranks); nothing trains, so nothing is lost."""
        if self.between_generations and self._stop_timer is None:
            self._stop_timer = self.spawn(self._terminate(self.proc))

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, then SIGKILL after kill_timeout (an agent blocked connecting to a rendezvous
        host it cannot reach does not get to its signal handler)."""
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.kill_timeout)
        except TimeoutError:
            _signal(proc, signal.SIGKILL)

    def begin_stop(self, pending: Pending, reason: str) -> None:
        """The stop sequence: ask the worker to checkpoint and stop; terminate it if it takes too long."""
        self.stop_reason = reason
        self.forward(pending)
        text = "stop requested" if reason == "request" else reason
        self.host.set_state("stopping", f"{text}: checkpointing and stopping", stop_reason=reason)
        self._cancel_stop_timer()
        self._stop_timer = self.spawn(self._enforce_stop_timeout(self.proc))

    def forward(self, pending: Pending) -> None:
        """Send a request to the worker under the daemon's id for it."""
        worker_id = self.requests.register(pending)
        try:
            self.writer.write(protocol.encode(protocol.control(worker_id, pending.action), protocol.MAX_CLIENT_FRAME))
        except (ConnectionError, OSError) as exc:  # the exit handler reports the worker's end
            log.warning("cannot forward %s to the worker: %s", pending.action, exc)

    def stop_failed(self, text: str) -> None:
        """The trainer could not write its final checkpoint and kept training instead of
        stopping: show the state it is really in, and let a later stop try again. A daemon that
        is shutting down must still end: it terminates the worker, whose own stop ends the run
        with or without a checkpoint (the final state then says the checkpoint failed)."""
        self._cancel_stop_timer()
        if self.shutting_down:
            log.warning("the trainer refused to stop (%s): terminating it", text)
            if self.proc is not None:
                _signal(self.proc, signal.SIGTERM)
                self._stop_timer = self.spawn(self._enforce_stop_timeout(self.proc))
            return
        self.stop_reason = None
        state = self.last_state if self.last_state in ("running", "paused") else "running"
        self.host.set_state(state, f"stop failed, training goes on: {text}", level="warning", stop_reason=None)

    def kill_stalled(self, why: str) -> None:
        """SIGKILL a stalled worker; its exit is a crash (`why` its message) under the restart policy."""
        if self.proc is not None:
            log.error("%s", why)
            self.killed_why = why
            _signal(self.proc, signal.SIGKILL)

    def _cancel_stop_timer(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None

    async def _enforce_stop_timeout(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), self.settings.stop_timeout)
        except TimeoutError:
            log.error("worker did not stop within %.0f s: terminating it", self.settings.stop_timeout)
            _signal(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.settings.kill_timeout)
            except TimeoutError:
                _signal(proc, signal.SIGKILL)

    # ------------------------------------------------------------------ the policy
    async def supervise(self, daemon_cfg) -> str:
        """Run the worker until the run ends; returns the final state (`daemon_cfg`: the run's
        `daemon` config section: restarts and backoff)."""
        crashes = 0
        while True:
            if self.stop_event.is_set():  # stopped before the first worker started
                self.host.set_state("stopped", f"{self.stop_reason}: stopped before training started",
                                    stop_reason=self.stop_reason)
                return "stopped"
            returncode = await self._run_worker()
            # "failed" from a clean exit: the trainer decided (e.g. no best checkpoint); no restart
            if returncode == 0 and self.last_state in FINAL_STATES:
                final = self.last_state
                self.requests.finish(final)
                self.host.set_state(final, stop_reason=self.stop_reason if final == "stopped" else None)
                return final
            self._report_crash(returncode)
            if self.shutting_down or self.stop_reason == "request":
                self.requests.finish("stopped")
                self.host.set_state("stopped", "stopped (the trainer did not exit cleanly)", level="warning",
                                    stop_reason=self.stop_reason)
                return "stopped"
            self.requests.finish("failed")
            if returncode == USER_ERROR_EXIT or self.user_error:  # a group's agent exits 1 for it
                self.host.set_state("failed", "the trainer stopped on an error in the config or the data; a restart "
                                    "cannot fix it (see the crash event or train.log)", level="error")
                return "failed"
            # A crash after the worker made durable progress starts a new count: a rare crash
            # in a weeks-long run should not use up the budget of a crash loop.
            crashes = 1 if self.checkpointed else crashes + 1
            if crashes > daemon_cfg.max_restarts:
                self.host.set_state("failed", f"giving up after {crashes - 1} restart(s): the trainer keeps "
                                    "crashing (see train.log)", level="error")
                return "failed"
            if await self._wait_to_restart(crashes, daemon_cfg):
                self.host.set_state("stopped", "stopped while waiting to restart", stop_reason=self.stop_reason)
                return "stopped"

    async def _wait_to_restart(self, crashes: int, daemon_cfg) -> bool:
        """The backoff before restart number `crashes`; True if a stop came meanwhile."""
        delay = min(daemon_cfg.backoff_seconds * 2 ** (crashes - 1), daemon_cfg.backoff_max_seconds)
        self.host.emit("restart", "warning", f"restarting the trainer in {delay:.0f} s (attempt {crashes} of "
                       f"{daemon_cfg.max_restarts})", {"attempt": crashes, "delay": delay,
                                                       "max_restarts": daemon_cfg.max_restarts})
        self.host.set_state("starting", f"restarting after a crash in {delay:.0f} s")
        self.restart_pending = True
        try:
            await asyncio.wait_for(self.stop_event.wait(), delay)
        except TimeoutError:
            pass
        self.restart_pending = False
        return self.stop_event.is_set()

    def _report_crash(self, returncode: Optional[int]) -> None:
        signum = signame = None
        if returncode is None:
            text = "trainer could not be started"
        elif returncode == 0:
            text = "trainer exited with code 0 without reporting finished or stopped"
        else:
            signum, signame, text = describe_exit(returncode)
        if self.killed_why and signum == signal.SIGKILL:
            text = self.killed_why
        trace = self.traceback or "\n".join(self.stderr_tail)
        if self.traceback:
            last = self.traceback.strip().splitlines()[-1:]
            text += f": {last[0]}" if last else ""
        user_error = returncode == USER_ERROR_EXIT or self.user_error
        if user_error:
            text = "cannot train" + text[text.index(":"):] if ":" in text else "cannot train: error in the config or data"
        self.host.emit("crash", "error", text, {"returncode": returncode, "signal": signum, "signal_name": signame,
                                                "traceback": trace, "user_error": user_error})

    # ------------------------------------------------------------------ one worker
    async def _run_worker(self) -> Optional[int]:
        """Start the worker (a data-parallel run: torchrun's agent and its group, trainer/daemon/
        group.py), relay it until it exits, return its exit code (None: no start)."""
        group = self.group
        channel = await WorkerSocket(self.run_dir, self._serve_rank_zero).open() if group else PairChannel()
        command = torchrun_argv(self.argv, self.distributed, self.run_dir.name) if group else self.argv
        argv = [*command, str(self.run_dir), *channel.worker_args]
        self.last_state = self.traceback = self.killed_why = None
        self.checkpointed = self.user_error = False
        self.generations = 0
        self.host.worker_starting()
        self.stderr_tail.clear()
        env = {**child_env(), "PYTHONUNBUFFERED": "1", **(group_env(self.distributed) if group else {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=channel.pass_fds, env=env, cwd=str(self.run_dir))
        except OSError as exc:
            channel.close()
            self.stderr_tail.append(f"cannot start {argv[0]}: {exc}")
            return None
        finally:
            channel.spawned()
        log.info("worker started (pid %d)", proc.pid)
        self.proc = proc
        relays = [asyncio.create_task(self._pump_output(proc.stdout, "stdout")),
                  asyncio.create_task(self._pump_output(proc.stderr, "stderr"))]
        if not group:
            reader, self.writer = await channel.connect()
            if self.shutting_down:  # the signal came while the worker was being started
                self.begin_stop(Pending(None, 0, "stop"), self.stop_reason)
            relays.append(asyncio.create_task(self._read_worker(reader, proc)))
        returncode = await proc.wait()
        log.info("worker %d exited with %d", proc.pid, returncode)
        writer, self.proc, self.writer = self.writer, None, None  # requests from now on are refused
        # Drain what the worker sent before exiting; children it left behind may hold the
        # pipes open, hence the timeout.
        _done, late = await asyncio.wait(relays, timeout=5.0)
        for task in late:
            task.cancel()
        if writer is not None:
            writer.close()
        channel.close()
        self.host.worker_exited()
        return returncode

    async def _serve_rank_zero(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Rank 0 of a group connected: the daemon's worker until it goes. A second connection
        from the same agent is a group the agent restarted (a rank died or a node was lost)."""
        self.generations += 1
        if self.generations > 1:
            self.host.emit("restart", "warning", f"torchrun's agent restarted the worker group (restart "
                           f"{self.generations - 1} of {self.distributed.max_restarts}): a rank exited or a node "
                           "was lost; it resumes from the last checkpoint",
                           {"attempt": self.generations - 1, "max_restarts": self.distributed.max_restarts,
                            "agent": True, "delay": 0.0})
            self.host.worker_starting()
        self.writer = writer
        if self.shutting_down:
            self.begin_stop(Pending(None, 0, "stop"), self.stop_reason)
        try:
            await self._read_worker(reader, self.proc)
        finally:
            if self.writer is writer:
                self.writer = None
            writer.close()
        if self.proc is not None and self.proc.returncode is None and self.last_state not in FINAL_STATES:
            self.host.set_state("starting", "the worker group is restarting (torchrun's agent)")

    async def _read_worker(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        while True:
            try:
                msg = await protocol.read_frame(reader, protocol.MAX_SERVER_FRAME, protocol.WORKER_TO_DAEMON)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except protocol.ProtocolError as exc:
                self.host.emit("alert", "error", f"the trainer sent a bad frame ({exc}); restarting it",
                               {"what": "worker_protocol"})
                _signal(proc, signal.SIGTERM)
                return
            if msg["type"] == "event" and msg["kind"] == "crash":
                # reported once, with the exit code, when the worker has exited
                self.traceback = msg["data"].get("traceback") or msg["message"]
                self.user_error = bool(msg["data"].get("user_error"))
                continue
            try:
                await self.host.on_worker_frame(msg)
            except Exception:
                log.exception("failed to handle a %s frame from the worker", msg.get("type"))

    async def _pump_output(self, stream: asyncio.StreamReader, name: str) -> None:
        """Worker stdout/stderr -> log lines, line by line."""
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                if pending:
                    self._relay_output(name, [pending])
                return
            pending += chunk
            *raws, pending = pending.split(b"\n")
            if len(pending) > MAX_LOG_LINE:
                raws.append(pending)
                pending = b""
            self._relay_output(name, raws)

    def _relay_output(self, name: str, raws: list[bytes]) -> None:
        lines = [clean_line(raw) for raw in raws]
        if name == "stderr":
            self.stderr_tail.extend(lines)
        self.host.on_worker_output(name, lines)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
