"""Power-cut simulation through the real daemon: SIGKILL the whole process group (daemon and
trainer child) at random instants, see the run reported as interrupted, `longhaul resume` it,
and check it ends bit-identical to an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer.history import read_history

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "powercut", "seed": 11, "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 3, "train_per_class": 48, "val_per_class": 8}},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 16},
    "augment": {"gain_db": 3.0, "mixup": {"alpha": 0.3, "prob": 0.5}},
    "model": {"name": "mfcc_mlp", "drop_rate": 0.3},
    "optim": {"batch_size": 8, "accum_steps": 2},
    "phases": [{"name": "a", "epochs": 6}, {"name": "b", "epochs": 6, "lr_mult": 0.5}],
    "eval": {"ema": {"enabled": True, "decay": 0.9}},
    "checkpoint": {"interval_seconds": 0.2, "keep_last": 2, "min_free_mb": 1},
    "daemon": {"backoff_seconds": 0.2},
}


def cli(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"longhaul {' '.join(args)}: {result.stderr}"
    return result


def status(env, run) -> dict:
    return json.loads(cli(env, "status", run, "--json").stdout)


def logged_steps(run_dir: Path) -> int:
    try:
        return sum(1 for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train")
    except Exception:
        return 0


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
def test_power_cut_through_the_daemon_resumes_bit_identical(tmp_path):
    runtime = Path(tempfile.mkdtemp(prefix="lh", dir="/tmp"))
    runtime.chmod(0o700)
    env = dict(os.environ, LONGHAUL_ROOT=str(tmp_path / "runs"), XDG_RUNTIME_DIR=str(runtime),
               PYTHONPATH=str(ROOT))
    config = tmp_path / "powercut.yaml"
    # ~700 steps: a kill's random delay (up to 0.3 s, ~50 steps on a quiet box) must not reach
    # the end of the run before the third kill
    config.write_text(yaml.safe_dump({**CONFIG, "phases": [{"name": "a", "epochs": 40},
                                                            {"name": "b", "epochs": 40, "lr_mult": 0.5}]}))

    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet")

    out = cli(env, "start", str(config)).stdout
    assert "longhaul attach powercut" in out
    run_dir = tmp_path / "runs" / "powercut"
    rng = random.Random(5)
    for kill in range(3):
        before = logged_steps(run_dir)
        wait_until(lambda: logged_steps(run_dir) >= before + rng.randint(3, 12), 180, "training progress")
        time.sleep(rng.uniform(0.0, 0.3))
        current = status(env, "powercut")
        assert current["state"] == "running", f"kill {kill + 1}: the run is {current['state']}; lengthen it"
        pid = current["pid"]
        os.killpg(pid, signal.SIGKILL)   # daemon and trainer child share the daemon's process group
        wait_until(lambda: status(env, "powercut")["state"] == "interrupted", 30, "state interrupted")
        listed = json.loads(cli(env, "ls", "--json").stdout)
        assert [r["state"] for r in listed if r["dir"] == str(run_dir)] == ["interrupted"]
        assert status(env, "powercut")["socket"] is None
        cli(env, "resume", "powercut")

    wait_until(lambda: status(env, "powercut")["state"] == "finished", 300, "the run to finish")
    ref, got = tmp_path / "reference", run_dir
    losses = lambda d: [(r["step"], r["train_loss"]) for r in read_history(d / "history.msgpack")
                        if r["kind"] == "train"]
    assert losses(got) == losses(ref)
    ref_w = torch.load(ref / "last.pt", weights_only=False)["model"]
    got_w = torch.load(got / "last.pt", weights_only=False)["model"]
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
