"""Runs on another machine, reached through the user's own `ssh`: `HOST:RUN` and `HOST:`.

`longhaul ls HOST:`, `status HOST:RUN` and `attach HOST:RUN` run the host's own longhaul over
ssh (`ls --json`, `status --json`) and, to attach, forward the run's Unix socket to a private
local socket with OpenSSH's stream-local forwarding (`ssh -N -L LOCAL:REMOTE HOST`): no new port,
no new authentication, and the TUI renders on this machine, not on the training box.

How an argument is told apart from a local run (scp's rule): it is remote when it has a colon
before any slash. So `run`, `./runs/a:b`, `/abs/a:b` and `runs/a:b` are local; `box:run`,
`me@box:run`, `alias:/data/runs/x` and `[::1]:run` are remote. A local run directory whose name
has a colon is reached by writing it as a path (`./a:b`). Ports, users and keys come from ssh's
own configuration (`~/.ssh/config`), never from the argument: `host:port` is not ssh syntax.

Environment:
  LONGHAUL_REMOTE_COMMAND  how to run longhaul on the host (default `longhaul`), shell text,
                           e.g. `~/venv/bin/longhaul` or `longhaul --root /data/runs`
  LONGHAUL_SSH_OPTIONS     extra ssh arguments, shell-split (e.g. `-F ~/.ssh/other_config`);
                           they come first, so they win over longhaul's defaults

No torch, no textual.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from trainer import protocol
from trainer.run.errors import RunError
from trainer.run.state import LIVE_STATES

REMOTE_COMMAND_ENV = "LONGHAUL_REMOTE_COMMAND"
SSH_OPTIONS_ENV = "LONGHAUL_SSH_OPTIONS"
#: Seconds ssh may take to connect (TCP and the SSH banner): errors come within seconds.
CONNECT_TIMEOUT = 5
#: Seconds a remote `status`/`ls` may take in all, once connected.
COMMAND_TIMEOUT = 30.0
#: Seconds the forwarded socket has to start accepting and the daemon to answer through it.
TUNNEL_TIMEOUT = 15.0
#: OpenSSH's exit status for its own errors (connection, authentication, forwarding).
SSH_FAILED = 255
#: A POSIX shell's exit status for a command it did not find.
COMMAND_NOT_FOUND = 127


class RemoteError(RunError):
    """Something on the way to a run on another host failed; the message names the host and
    what to try (shown to the user without a traceback, exit 2)."""


@dataclass(frozen=True)
class Target:
    """A run (or, with an empty `run`, the run list) on `host`: an ssh destination as ssh takes
    it (`box`, `me@box`, a config alias)."""

    host: str
    run: str

    def __str__(self) -> str:
        return f"{self.host}:{self.run}"


def parse_target(text: Optional[str]) -> Optional[Target]:
    """`HOST:RUN` or `HOST:` -> Target; None for a local run name or path (see the module
    docstring for the rule). RemoteError for a remote form that cannot be right."""
    if not text or text.startswith(("/", "./", "../", "~")):
        return None
    if text.startswith("["):  # [v6 address]:run, as scp writes it; ssh takes the address bare
        end = text.find("]:")
        if end < 0:
            return None
        host, run = text[1:end], text[end + 2:]
    else:
        colon, slash = text.find(":"), text.find("/")
        if colon < 0 or (0 <= slash < colon):
            return None
        host, run = text[:colon], text[colon + 1:]
    if not host:
        raise RemoteError(f"{text!r}: no host before the colon (a local run whose name has a colon: write ./{text})")
    if host.startswith("-") or any(c.isspace() for c in host):
        raise RemoteError(f"{text!r}: {host!r} is not an ssh destination (expected HOST or USER@HOST)")
    return Target(host, run)


def remote_command(option: Optional[str] = None) -> str:
    """Shell text that runs longhaul on the host: --remote-command, else $LONGHAUL_REMOTE_COMMAND,
    else `longhaul`."""
    return (option or os.environ.get(REMOTE_COMMAND_ENV) or "longhaul").strip()


def ssh_argv(host: str, *extra: str) -> list[str]:
    """`ssh` with the user's extra options, then longhaul's defaults (ssh keeps the first value
    of an option, so the user's win), `extra`, and the host. BatchMode: never prompt (a prompt
    would hang a TUI or a script; keys or an agent are the way); ConnectTimeout: an unreachable
    host fails within seconds."""
    program = shutil.which("ssh")
    if program is None:
        raise RemoteError("the `ssh` command is not installed here (OpenSSH's client is needed to reach another host)")
    try:
        user = shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
    except ValueError as exc:
        raise RemoteError(f"${SSH_OPTIONS_ENV} cannot be split like a shell line: {exc}") from None
    return [program, *user, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", *extra, host]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def ssh_failure(host: str, stderr: str) -> str:
    """What ssh's own error (exit 255) means for the user, with what to try."""
    said = _last_line(stderr)
    if "Permission denied" in said or "Too many authentication failures" in said:
        hint = ("ssh could not log in without a prompt: longhaul runs ssh with BatchMode=yes, so use a key "
                "(in ssh-agent when it has a passphrase); check with `ssh " + host + " true`")
    elif "Could not resolve hostname" in said:
        hint = f"no such host name: check the spelling, or add a `Host {host}` entry to ~/.ssh/config"
    elif "Host key verification failed" in said:
        hint = f"the host key is unknown or changed: run `ssh {host}` once by hand to check and accept it"
    else:
        hint = f"the host is unreachable or refused the connection: check it with `ssh {host} true`"
    return f"cannot reach {host} through ssh ({said}); {hint}"


def run_remote(target: Target, args: list[str], option: Optional[str] = None) -> str:
    """Run `longhaul ARGS` on the host and return its stdout; RemoteError saying why it failed
    (ssh's own failure, longhaul missing there, or the host's longhaul refusing)."""
    command = remote_command(option)
    line = f"{command} {' '.join(shlex.quote(a) for a in args)}"
    argv = [*ssh_argv(target.host), line]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{target.host} did not answer `{line}` within {COMMAND_TIMEOUT:.0f} s; "
                          f"check it with `ssh {target.host} {shlex.quote(line)}`") from None
    if done.returncode == SSH_FAILED:
        raise RemoteError(ssh_failure(target.host, done.stderr))
    if done.returncode == COMMAND_NOT_FOUND or (done.returncode != 0 and "No module named" in done.stderr):
        raise RemoteError(
            f"longhaul is not installed on {target.host}, or not on the PATH of its non-interactive shell "
            f"(`{command}` said: {_last_line(done.stderr)}); set ${REMOTE_COMMAND_ENV} or --remote-command to "
            f"its full path there, e.g. ~/venv/bin/longhaul")
    if done.returncode != 0:
        said = _last_line(done.stderr or done.stdout)
        if said.startswith("longhaul "):  # `longhaul status: no run named ...`: the command is ours already
            said = said.split(": ", 1)[-1]
        raise RemoteError(f"on {target.host}: {said}")
    return done.stdout


def remote_json(target: Target, args: list[str], option: Optional[str] = None):
    """The JSON the host's longhaul printed for `args` (its last line)."""
    out = run_remote(target, args, option)
    try:
        return json.loads(_last_line(out))
    except ValueError:
        raise RemoteError(f"the longhaul on {target.host} did not answer `{' '.join(args)}` with JSON "
                          f"(it said {_last_line(out)[:200]!r}); is it longhaul, and a recent one?") from None


def remote_status(target: Target, option: Optional[str] = None) -> dict:
    """`longhaul status RUN --json` of the host."""
    if not target.run:
        raise RemoteError(f"{target}: name a run after the colon (HOST:RUN); `longhaul ls {target.host}:` lists them")
    info = remote_json(target, ["status", target.run, "--json"], option)
    if not isinstance(info, dict) or "state" not in info:
        raise RemoteError(f"the longhaul on {target.host} answered status with {str(info)[:200]!r}")
    return info


def remote_runs(target: Target, sort: str, filter_text: str, option: Optional[str] = None) -> list[dict]:
    """`longhaul ls --json` of the host, in the order and filter asked for."""
    args = ["ls", "--json", "--sort", sort] + (["--filter", filter_text] if filter_text else [])
    infos = remote_json(target, args, option)
    if not isinstance(infos, list):
        raise RemoteError(f"the longhaul on {target.host} answered ls with {str(infos)[:200]!r}")
    return infos


def offline_hint(target: Target, info: dict, option: Optional[str] = None) -> str:
    """Why attaching needs a live daemon, and how to see the run anyway."""
    command = remote_command(option)
    run = shlex.quote(info.get("dir") or target.run)
    if info["state"] in LIVE_STATES:  # its daemon is still opening its socket
        return f"{target.run} on {target.host} is {info['state']} but its daemon does not listen yet; try again in a moment"
    return (f"{target.run} on {target.host} is {info['state']}: no daemon serves it, so there is nothing to forward. "
            f"Its stored dashboard, drawn on {target.host}: `ssh -t {target.host} {shlex.quote(f'{command} attach {run}')}`; "
            f"to resume it: `ssh {target.host} {shlex.quote(f'{command} resume {run}')}`, then attach again")


class Tunnel:
    """`ssh -N -L LOCAL:REMOTE HOST`: the host's `remote_socket` reachable at `local`, a socket
    in a new private directory (0700) here. A context manager: leaving it (also on an error,
    Ctrl-C or SIGTERM) ends ssh and removes the directory."""

    def __init__(self, host: str, remote_socket: str) -> None:
        self.host = host
        self.remote_socket = remote_socket
        self.folder = Path(tempfile.mkdtemp(prefix="longhaul-ssh-"))  # mkdtemp makes it 0700
        self.local = self.folder / "run.sock"
        self.log = self.folder / "ssh.log"
        self.proc: Optional[subprocess.Popen] = None
        self._old_sigterm = None

    def open(self, timeout: float = TUNNEL_TIMEOUT) -> "Tunnel":
        """Start ssh and wait until the forward accepts and the daemon says welcome through it."""
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._start()
            self._wait_ready(time.monotonic() + timeout, check_daemon=True)
        except BaseException:
            self.close()
            raise
        return self

    def reopen(self, timeout: float = TUNNEL_TIMEOUT) -> Optional[str]:
        """Start ssh again after it died (the network dropped, the laptop slept): None once the
        forward accepts, else why not. The daemon may be restarting: its link retries."""
        self._stop_ssh()
        try:
            self._start()
            self._wait_ready(time.monotonic() + timeout, check_daemon=False)
        except RemoteError as exc:
            self._stop_ssh()
            return str(exc)
        return None

    def _start(self) -> None:
        # ControlPath=none: a forward handed to a ControlMaster would outlive this ssh (it exits at
        # once) and the attach; its own connection lives and ends exactly with the dashboard.
        argv = ssh_argv(self.host, "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                        "-o", "StreamLocalBindMask=0177", "-o", "ControlPath=none",
                        "-L", f"{self.local}:{self.remote_socket}")
        with open(self.log, "wb") as log:
            # stderr to a file, never the terminal the TUI draws on; same process group, so a
            # terminal that closes (SIGHUP) takes ssh with it.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    def _wait_ready(self, deadline: float, check_daemon: bool) -> None:
        while not self._accepts():
            if self.proc.poll() is not None:
                said = self.log.read_text(errors="replace")
                if self.proc.returncode == SSH_FAILED and "forward" not in said:
                    raise RemoteError(ssh_failure(self.host, said))
                raise RemoteError(f"ssh could not forward the run's socket from {self.host} "
                                  f"({_last_line(said)}); ssh exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RemoteError(f"the forward of {self.host}:{self.remote_socket} was not ready within "
                                  f"{TUNNEL_TIMEOUT:.0f} s ({_last_line(self.log.read_text(errors='replace'))})")
            time.sleep(0.05)
        if check_daemon:
            self._check_daemon(deadline)

    def _accepts(self) -> bool:
        if not self.local.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.local))
            except OSError:
                return False
        return True

    def _check_daemon(self, deadline: float) -> None:
        """ssh accepts locally before it knows the far socket exists: a hello through the
        forward says whether a daemon answers there (its welcome, or why not)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                conn.connect(str(self.local))
                protocol.send_frame(conn, protocol.hello("longhaul-ssh-check"), protocol.MAX_CLIENT_FRAME)
                first = protocol.recv_frame(conn, protocol.MAX_SERVER_FRAME, timeout=conn.gettimeout())
            except (OSError, EOFError, protocol.ProtocolError) as exc:
                said = _last_line(self.log.read_text(errors="replace"))
                raise RemoteError(f"no daemon answered at {self.host}:{self.remote_socket} through ssh "
                                  f"({said if said != 'no message' else exc}); the run may have stopped just now "
                                  f"(`longhaul status {self.host}:RUN` says)") from None
        if first.get("type") != "welcome":
            raise RemoteError(f"the daemon on {self.host} refused the connection: {first.get('message', first)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop_ssh(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """End ssh (TERM, then KILL) and remove the private directory with the local socket."""
        self._stop_ssh()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Tunnel":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _exit_on_sigterm(signum, _frame) -> None:
    """A SIGTERM to longhaul ends it through its `finally` blocks, so the tunnel's ssh and socket go too."""
    sys.exit(128 + signum)
