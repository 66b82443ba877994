"""`longhaul` as a user runs it, for the end-to-end tests that start, kill and resume real
daemons: the CLI in a subprocess with its own environment (runs root, runtime directory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(runs_root: Path, runtime_dir: Path, **extra: str) -> dict:
    """The environment of a `longhaul` subprocess: this checkout's code, `runs_root` as
    LONGHAUL_ROOT and `runtime_dir` as XDG_RUNTIME_DIR, plus `extra`."""
    return dict(os.environ, LONGHAUL_ROOT=str(runs_root), XDG_RUNTIME_DIR=str(runtime_dir), PYTHONPATH=str(ROOT),
                **extra)


def cli(env, *args, check=True) -> subprocess.CompletedProcess:
    """`longhaul ARGS`; with `check`, a non-zero exit fails the test with its stderr."""
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"longhaul {' '.join(args)}: {result.stderr}"
    return result


def status(env, run) -> dict:
    return json.loads(cli(env, "status", run, "--json").stdout)


def logged_steps(run_dir: Path) -> int:
    """Train records in the run's history so far (0 while there is none to read)."""
    from trainer.history import read_history

    try:
        return sum(1 for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train")
    except Exception:
        return 0


def cut_power_and_resume(env, run: str, kill: int = 0) -> None:
    """SIGKILL the running `run`'s daemon and trainer (they share the daemon's process group), as
    a power cut does, see it reported interrupted, and `longhaul resume` it. `kill` numbers the cut
    in the failure message."""
    import signal

    from tests.daemon_helpers import wait_for

    current = status(env, run)
    assert current["state"] == "running", f"kill {kill + 1}: the run is {current['state']}; lengthen it"
    os.killpg(current["pid"], signal.SIGKILL)
    wait_for(lambda: status(env, run)["state"] == "interrupted", 30, "state interrupted")
    cli(env, "resume", run)


def assert_bit_identical(run_dir: Path, reference_dir: Path) -> None:
    """The same train losses at the same steps and the same final weights (last.pt) as the reference."""
    import torch

    from trainer.history import read_history

    losses = lambda d: [(r["step"], r["train_loss"]) for r in read_history(d / "history.msgpack")
                        if r["kind"] == "train"]
    assert losses(run_dir) == losses(reference_dir)
    ref_w = torch.load(reference_dir / "last.pt", weights_only=False)["model"]
    got_w = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
