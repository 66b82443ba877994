"""The dashboard of a run on another host: `longhaul attach HOST:RUN`.

The TUI runs here and reads the run's daemon through the socket `trainer.ssh.Tunnel` forwards,
so the training box only relays frames (its sshd's share is what bench/remote_attach.py
measures). The run directory is over there: the state after a lost connection is asked of the
host's longhaul (`status --json` over ssh), `r` resumes the run there, and there is no local run
list to go back to (Esc is not offered; `longhaul ls HOST:` lists the host's runs).
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from trainer import ssh
from trainer.run.errors import RunError
from tui.app import LonghaulApp
from tui.link import DashboardLink
from tui.model import ACTIVE_STATES
from tui.screens.run import RunScreen


class RemoteRunScreen(RunScreen):
    """`RunScreen` over a forwarded socket; the run's state comes from the host."""

    def __init__(self, target: ssh.Target, info: dict, tunnel: ssh.Tunnel, *, remote_command: Optional[str] = None,
                 **options) -> None:
        self.target = target
        self.remote_command = remote_command
        run_dir = Path(info.get("dir") or target.run)
        resume_line = f"{ssh.remote_command(remote_command)} resume {shlex.quote(str(run_dir))}"
        super().__init__(run_dir, resume_argv=[*ssh.ssh_argv(target.host), resume_line], **options)
        self.link = DashboardLink(run_dir, self.post_message, retry_max=options.get("link_retry_max", 5.0),
                                  hold=self.refresh_interval, socket_path=tunnel.local)
        self.tunnel = tunnel
        self._state_hint: Optional[str] = info.get("state")

    def run_state(self) -> str:
        """The state `status` gave at attach (no round trip while the screen mounts), then the
        host's answer: asked only after the daemon connection is lost, from a worker thread."""
        if self._state_hint is not None:
            state, self._state_hint = self._state_hint, None
            return state
        try:
            state = str(ssh.remote_status(self.target, self.remote_command)["state"])
        except RunError:
            return "unknown"  # the host is out of reach now: say so, the link keeps retrying
        if state in ACTIVE_STATES and not self.tunnel.alive():
            self.tunnel.reopen()  # ssh itself died (network change): the link finds the new forward
        return state

    def load_offline(self) -> None:
        """Nothing to read here: the run directory is on the host. The last snapshot stays."""

    def check_evaluation(self) -> None:
        """evaluation.json is on the host: a local file at the same path would be another run's."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":
            return False  # the run list is the host's: `longhaul ls HOST:`
        return super().check_action(action, parameters)


class RemoteApp(LonghaulApp):
    """The app on one run of another host, its daemon reached through `tunnel`."""

    def __init__(self, target: ssh.Target, info: dict, tunnel: ssh.Tunnel, remote_command: Optional[str] = None,
                 **options) -> None:
        super().__init__(Path(info.get("dir") or target.run), **options)
        self.target = target
        self.info = info
        self.tunnel = tunnel
        self.remote_command = remote_command

    def _run_screen(self, run_dir: Path) -> RunScreen:
        return RemoteRunScreen(self.target, self.info, self.tunnel, remote_command=self.remote_command,
                               clock=self.clock, refresh_interval=self.refresh_interval,
                               link_retry_max=self.link_retry_max)


def run_remote_attach(target: ssh.Target, remote_command: Optional[str] = None) -> int:
    """`longhaul attach HOST:RUN`: the host's status of the run, the forward of its socket, the
    TUI on it; the forward ends with the TUI. Returns the exit code (RemoteError: why not)."""
    info = ssh.remote_status(target, remote_command)
    if not info.get("socket"):
        raise ssh.RemoteError(ssh.offline_hint(target, info, remote_command))
    try:
        with ssh.Tunnel(target.host, info["socket"]) as tunnel:
            result = RemoteApp(target, info, tunnel, remote_command).run()
    except KeyboardInterrupt:  # Ctrl-C while the forward opens: the tunnel is closed already
        return 130
    return int(result or 0)
