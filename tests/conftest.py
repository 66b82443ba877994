"""Every test runs against its own empty run registry (trainer.registry), never the real one in
the user's home: LONGHAUL_STATE_DIR is an environment variable, so daemons, workers and CLI
subprocesses the test starts use the same one. `longhaul` entry points set the process umask
(private run data); it is restored after each test so tests do not leak it into each other.

`tmpfs` (tests/tmpfs.py) is every test's fixture for a disk that really fills up; `speech_tools`
that of the tests that speak their own words (bench/speech_data.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.tmpfs import tmpfs  # noqa: F401  (fixture for every test module)


@pytest.fixture(autouse=True)
def private_run_registry(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LONGHAUL_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture
def speech_tools():
    """espeak-ng and sox, or a skip (a failure in CI, where .ci/run installs them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import speech_data

    missing = speech_data.tools_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"{missing} not installed in CI (.ci/run installs espeak-ng and sox)")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install espeak-ng sox)")
