"""End to end through a real terminal: `longhaul start`, then `longhaul attach` inside tmux.

A tiny real run (synthetic data, MFCC MLP) trains under its daemon. tmux runs `longhaul attach`;
the captured screen must show the step counter advancing. `d` detaches: the terminal is left
clean (main screen, cursor shown, mouse reporting off) and the daemon keeps training. Attaching
again shows the run's history from before the first attach (the detail view's step range).

Needs tmux (skipped without it; CI installs it). Takes about half a minute.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon_helpers import wait_for
from tests.longhaul_cli import cli_env
from tests.run_configs import DAEMON_TINY, changed
from trainer.run.state import FINAL_STATES
from trainer.run.status import status


pytestmark = [pytest.mark.slow,
              # CI installs tmux (.ci/run), so there a missing tmux fails the test instead of hiding it
              pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("CI"),
                                 reason="tmux is not installed")]

# DAEMON_TINY trained for days: the run is still going whenever the test looks.
CONFIG = changed(DAEMON_TINY, name="e2e", phases=[{"name": "warmup", "epochs": 1}, {"name": "main", "epochs": 100000}],
                 eval={"every_epochs": 5}, daemon={"system_interval": 1.0},
                 **{"data.synthetic.train_per_class": 200, "data.synthetic.val_per_class": 8})
STEP = re.compile(r"step ([\d,]+)/([\d,]+)")
RANGE = re.compile(r"steps ([\d,]+)–([\d,]+) in (\d+) points")
POLL = 0.25  # seconds between looks at the screen or state.json


def number(text: str) -> int:
    return int(text.replace(",", ""))


class Tmux:
    """One private tmux server (its own socket name) with one 120x40 pane running bash."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"lh-test-{os.getpid()}"
        self.env = env
        self.run("new-session", "-d", "-s", "main", "-x", "120", "-y", "40", "bash --norc --noprofile")

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args], capture_output=True,
                             text=True, env=self.env, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "main", "-l", text)
        self.run("send-keys", "-t", "main", "Enter")

    def key(self, key: str) -> None:
        self.run("send-keys", "-t", "main", key)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def flag(self, name: str) -> str:
        return self.run("display-message", "-p", "-t", "main", f"#{{{name}}}").strip()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, env=self.env)


def state(run_dir: Path) -> dict:
    return status(run_dir)


def test_attach_detach_reattach_in_a_real_terminal(tmp_path, runtime_dir):
    # runtime_dir is also this process's XDG_RUNTIME_DIR: status here looks for the same socket
    env = cli_env(tmp_path / "runs", runtime_dir, TERM="xterm-256color")
    config = tmp_path / "e2e.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    longhaul = [sys.executable, "-m", "trainer.cli"]
    out = subprocess.run([*longhaul, "start", str(config)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "runs" / "e2e"
    attach = " ".join(shlex.quote(p) for p in [*longhaul, "attach", "e2e"])
    tmux = Tmux(env)
    try:
        wait_for(lambda: (state(run_dir).get("step") or 0) > 0, 120, "the run to train", POLL)
        tmux.type(attach)

        def step_on_screen() -> int:
            match = STEP.search(tmux.screen())
            return number(match.group(1)) if match and "live" in tmux.screen() else 0

        first = wait_for(step_on_screen, 90, "the dashboard", POLL)
        later = wait_for(lambda: step_on_screen() > first and step_on_screen(), 90, "the step counter to advance", POLL)
        assert later > first

        tmux.key("d")
        wait_for(lambda: tmux.flag("pane_current_command") == "bash", 90, "the TUI to exit", POLL)
        assert tmux.flag("alternate_on") == "0"      # back on the main screen
        assert tmux.flag("cursor_flag") == "1"       # cursor visible again
        assert tmux.flag("mouse_any_flag") == "0"    # mouse reporting off
        assert "Dashboard" not in tmux.screen()

        assert state(run_dir)["state"] == "running"  # detaching did not stop anything
        before = state(run_dir)["step"]
        wait_for(lambda: state(run_dir)["step"] > before, 60, "the daemon to keep training", POLL)

        tmux.type(attach)
        again = wait_for(step_on_screen, 90, "the dashboard again", POLL)
        assert again >= later
        tmux.key("2")  # detail view of the first metric: the step range of its history
        match = wait_for(lambda: RANGE.search(tmux.screen()), 90, "the detail view", POLL)
        assert number(match.group(1)) <= first < number(match.group(2))  # history from before the first attach
        tmux.key("d")
        wait_for(lambda: tmux.flag("pane_current_command") == "bash", 90, "the TUI to exit", POLL)
    finally:
        tmux.close()
        subprocess.run([*longhaul, "stop", "e2e", "--timeout", "60"], capture_output=True, env=env, timeout=90)
    final = wait_for(lambda: state(run_dir)["state"] in FINAL_STATES and state(run_dir), 60,
                     "the run to stop", POLL)
    assert final["state"] == "stopped"
