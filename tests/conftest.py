"""Every test runs against its own empty run registry (trainer.run.registry), never the real one in
the user's home: LONGHAUL_STATE_DIR is an environment variable, so daemons, workers and CLI
subprocesses the test starts use the same one. `longhaul` entry points set the process umask
(private run data); it is restored after each test so tests do not leak it into each other.

The shared fixtures:
  tmpfs          a disk that really fills up (tests/tmpfs.py)
  two_hosts      two hosts in network namespaces joined by a veth pair (tests/netns.py)
  speech_tools   espeak-ng and sox, for the tests that speak their own words (bench/speech_data.py)
  runtime_dir    a short private XDG_RUNTIME_DIR, where daemons put their sockets
  live_process   the pid of a live process that looks like longhaul (what a running run's
                 state.json points at)
  launcher       starts daemons on the fake worker (tests/daemon_helpers.py), kills them after
  live_run       a running run directory with a fake daemon on its socket (tests/tui_fakes.py)

Helpers that are not fixtures live in modules named for what they help with:
  run_configs.py     the tiny real runs (RunConfig dicts) and changed() to vary them
  daemon_helpers.py  daemons on the fake worker (fake_worker.py), a raw protocol client, wait_for
  longhaul_cli.py    `longhaul` in a subprocess, for end-to-end runs
  tui_fakes.py       a recorded daemon stream, a fake daemon replaying it, run directories
  pilot.py           the TUI app under Pilot on a frozen clock, async tests
  audio_folders.py   audio class folders on disk
  tmpfs.py, powercut.py  disks that fill up, and that lose what was not fsynced at a power cut"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import two_hosts  # noqa: F401  (fixture for every test module)
from tests.tmpfs import tmpfs  # noqa: F401  (fixture for every test module)


@pytest.fixture(autouse=True)
def private_run_registry(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LONGHAUL_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    # never the user's own notify rules (~/.config/longhaul/notify.yaml): a test would send them messages
    monkeypatch.setenv("LONGHAUL_NOTIFY_FILE", str(tmp_path_factory.mktemp("config") / "notify.yaml"))
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture
def speech_tools():
    """espeak-ng and sox, or a skip (a failure in CI, where .ci/run installs them)."""
    sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # last: bench/tui.py must not shadow the tui package
    import speech_data

    missing = speech_data.tools_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing} not installed in CI (.ci/run installs espeak-ng and sox)")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install espeak-ng sox)")


@pytest.fixture
def runtime_dir(monkeypatch) -> Path:
    """XDG_RUNTIME_DIR set to a new private directory with a short path (a socket path must fit
    in sun_path's 108 bytes; pytest's tmp_path is longer), removed after the test."""
    from daemon_helpers import short_runtime_dir

    path = Path(short_runtime_dir())
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def live_process() -> int:
    """The pid of a live process whose command line says longhaul (like a daemon or `longhaul
    train`): a run whose state.json names it counts as alive."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "longhaul-test"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def launcher():
    """A daemon launcher on the fake worker; whatever it started is killed after the test."""
    from daemon_helpers import Launcher

    launcher = Launcher()
    yield launcher
    launcher.cleanup()


@pytest.fixture
def live_run(tmp_path, runtime_dir, live_process):
    """(run_dir, daemon): a running run directory as the trainer leaves it, whose state.json
    names a live process, and a fake daemon (a `tui_fakes.DaemonThread`) serving the recorded
    stream on its socket."""
    import tui_fakes
    from trainer.run.sockets import socket_path

    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="running", pid=live_process)
    daemon = tui_fakes.DaemonThread(socket_path(run_dir), run_dir).start()
    yield run_dir, daemon
    daemon.close()
