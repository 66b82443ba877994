"""Power-cut simulation through the real daemon: SIGKILL the whole process group (daemon and
trainer child) at random instants, see the run reported as interrupted, `longhaul resume` it,
and check it ends bit-identical to an uninterrupted run."""
import json
import os
import random
import signal
import time

import pytest
import yaml

from tests.daemon_helpers import wait_for
from tests.longhaul_cli import assert_bit_identical, cli, cli_env, logged_steps, status
from tests.run_configs import POWERCUT



@pytest.mark.slow
def test_power_cut_through_the_daemon_resumes_bit_identical(tmp_path, runtime_dir):
    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "powercut.yaml"
    # ~700 steps: a kill's random delay (up to 0.3 s, ~50 steps on a quiet box) must not reach
    # the end of the run before the third kill
    config.write_text(yaml.safe_dump({**POWERCUT, "phases": [{"name": "a", "epochs": 40},
                                                              {"name": "b", "epochs": 40, "lr_mult": 0.5}]}))

    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet")

    out = cli(env, "start", str(config)).stdout
    assert "longhaul attach powercut" in out
    run_dir = tmp_path / "runs" / "powercut"
    rng = random.Random(5)
    for kill in range(3):
        before = logged_steps(run_dir)
        wait_for(lambda: logged_steps(run_dir) >= before + rng.randint(3, 12), 180, "training progress")
        time.sleep(rng.uniform(0.0, 0.3))
        current = status(env, "powercut")
        assert current["state"] == "running", f"kill {kill + 1}: the run is {current['state']}; lengthen it"
        pid = current["pid"]
        os.killpg(pid, signal.SIGKILL)   # daemon and trainer child share the daemon's process group
        wait_for(lambda: status(env, "powercut")["state"] == "interrupted", 30, "state interrupted")
        listed = json.loads(cli(env, "ls", "--json").stdout)
        assert [r["state"] for r in listed if r["dir"] == str(run_dir)] == ["interrupted"]
        assert status(env, "powercut")["socket"] is None
        cli(env, "resume", "powercut")

    wait_for(lambda: status(env, "powercut")["state"] == "finished", 300, "the run to finish")
    assert_bit_identical(run_dir, tmp_path / "reference")
