"""Shared helpers of the daemon tests and bench/daemon_clients.py: run directories for the fake
worker, a daemon launcher that cleans up after itself, and a raw protocol client.

`RawClient` is deliberately written from the protocol description (4-byte big-endian length +
one msgpack map with a "type" key) with socket + msgpack only, not with trainer.protocol, so the
tests check the documented wire format rather than the module against itself.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import msgpack

from trainer import daemon
from trainer.protocol import PROTOCOL_VERSION
from trainer.run.errors import RunError
from trainer.run.liveness import is_longhaul_process, pid_alive, process_cmdline
from trainer.run.locate import create_run_dir
from trainer.run.sockets import socket_path
from trainer.run.state import FINAL_STATES, StateFile

FAKE_WORKER = Path(__file__).resolve().parent / "fake_worker.py"

# Tests wait on real processes; keep daemon tunables small so failures show quickly.
FAST_SETTINGS = {"linger": 0.5, "stop_timeout": 20.0, "kill_timeout": 5.0}


def short_runtime_dir() -> str:
    """A private directory with a short path (sun_path holds 108 bytes; pytest's tmp_path is long)."""
    return tempfile.mkdtemp(prefix="lh-", dir="/tmp")


def fake_run_config(name: str, sections: Optional[dict] = None, **daemon_cfg) -> str:
    """A run config the daemon accepts, for tests/fake_worker.py (which reads only its `daemon`
    section), in JSON (which is YAML): restarts after 0.1 s and a system sample every 0.5 s
    unless `daemon_cfg` says otherwise; `sections`: more of the config the daemon reads
    (`watchdog`, `alerts`, `notify`)."""
    daemon_section = {"backoff_seconds": 0.1, "system_interval": 0.5, **daemon_cfg}
    return json.dumps({"name": name, "daemon": daemon_section, **(sections or {})})


def make_run(root: Path, name: str = "run", fake: Optional[dict] = None, daemon_cfg: Optional[dict] = None,
             sections: Optional[dict] = None) -> Path:
    """A run directory whose config the daemon accepts, scripted for tests/fake_worker.py."""
    run_dir = create_run_dir(root, name)
    daemon_cfg = {"backoff_max_seconds": 1.0, "max_restarts": 3, **(daemon_cfg or {})}
    (run_dir / "config.yaml").write_text(fake_run_config(name, sections, **daemon_cfg))
    (run_dir / "fake.json").write_text(json.dumps(fake or {}))
    return run_dir


class Launcher:
    """Starts daemons on the fake worker and kills whatever is left at the end of a test."""

    def __init__(self) -> None:
        self.run_dirs: list[Path] = []

    def start(self, run_dir: Path, settings: Optional[dict] = None, wait_socket: bool = True) -> int:
        pid = daemon.launch_daemon(run_dir, worker_script=FAKE_WORKER, settings={**FAST_SETTINGS, **(settings or {})})
        self.run_dirs.append(run_dir)
        if wait_socket:
            wait_for(lambda: socket_path(run_dir).exists(), 10, f"socket of {run_dir.name}")
        return pid

    def cleanup(self) -> None:
        for run_dir in self.run_dirs:
            pids = []
            try:
                pid = StateFile(run_dir).read().get("pid")
            except (OSError, RunError):  # a test may have damaged it on purpose
                pid = None
            if pid:
                pids.append(pid)
            runs_file = run_dir / "fake_runs"
            if runs_file.exists():
                pids += [int(p) for p in runs_file.read_text().split()]
            for pid in pids:
                if is_longhaul_process(pid) or _is_fake_worker(pid):
                    _kill_with_its_group(pid)


def _kill_with_its_group(pid: int) -> None:
    """SIGKILL a daemon together with its process group (it leads one: start_new_session), so a
    worker that would outlive its daemon (one paused on a full disk, one whose stop keeps
    failing) cannot leak into the next tests and eat the CPU."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_fake_worker(pid: int) -> bool:
    return pid_alive(pid) and any("fake_worker" in a for a in process_cmdline(pid))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it is truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_exit(pid: int, timeout: float) -> None:
    wait_for(lambda: not pid_alive(pid), timeout, f"process {pid} to exit")


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class RawClient:
    """A protocol client made of a socket and msgpack."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, msg: dict) -> None:
        payload = msgpack.packb(msg, use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:  # closed by the daemon with our bytes unread
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv(self) -> Optional[dict]:
        """Next message, or None at end of stream."""
        if not self._fill(4):
            return None
        (length,) = struct.unpack(">I", self.buf[:4])
        if not self._fill(4 + length):
            return None
        payload, self.buf = self.buf[4:4 + length], self.buf[4 + length:]
        msg = msgpack.unpackb(payload, raw=False)
        assert isinstance(msg, dict) and isinstance(msg.get("type"), str), msg
        return msg

    def hello(self, version: int = PROTOCOL_VERSION, client: str = "raw-test", **extra) -> dict:
        self.send({"type": "hello", "version": version, "client": client, **extra})
        return self.recv()

    def recv_until(self, predicate: Callable[[dict], bool], timeout: float = 20.0) -> list[dict]:
        """Messages up to and including the first that matches; fails at EOF or timeout."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            msg = self.recv()
            assert msg is not None, f"connection closed; last messages: {[m.get('type') for m in seen[-5:]]}"
            seen.append(msg)
            if predicate(msg):
                return seen
        raise AssertionError("timed out waiting for a matching message")

    def read_to_end(self) -> list[dict]:
        out = []
        while (msg := self.recv()) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


def is_final_state(msg: dict) -> bool:
    return msg.get("type") == "event" and msg["kind"] == "state" and msg["data"]["state"] in FINAL_STATES
