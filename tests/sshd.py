"""A real OpenSSH server on localhost for the remote-attach tests and bench/remote_attach.py.

`LocalSshd(folder).start()` writes its own host key, a client key, `sshd_config` (key auth only,
`StrictModes no`, `UsePAM no`: fine for root in CI) and a client config whose `Host` aliases
reach it, then runs `sshd -D` on a free port of 127.0.0.1. Nothing under ~/.ssh is read or
written: the client side is `LONGHAUL_SSH_OPTIONS="-F <folder>/ssh_config"`.

  HOST       `longhaul-test`: logs in with the authorised key
  BAD_KEY    `longhaul-test-badkey`: the same server, a key it does not know (auth fails)
  MUX        `longhaul-test-mux`: like HOST, through a ControlMaster (ControlPersist 60 s), as
             many users' ~/.ssh/config has it

`far_side_command(env)` is how this checkout's longhaul runs on the "host": sshd gives the
command a clean environment, so what the far side needs (PYTHONPATH, the runs root, the
runtime directory of sockets, the run registry) is put on its command line.
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
HOST = "longhaul-test"
BAD_KEY = "longhaul-test-badkey"
MUX = "longhaul-test-mux"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_program() -> Optional[str]:
    found = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)
    return found if found and shutil.which("ssh") and shutil.which("ssh-keygen") else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def far_side_command(env: dict) -> str:
    """Shell text running this checkout's longhaul on the far side of ssh, with `env` (and
    PYTHONPATH = this checkout) set on its command line."""
    settings = {"PYTHONPATH": str(ROOT), **env}
    pairs = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in settings.items())
    return f"env {pairs} {shlex.quote(sys.executable)} -m trainer.cli"


class LocalSshd:
    """sshd on 127.0.0.1, configured entirely inside `folder` (a context manager)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.client_config = self.folder / "ssh_config"
        self.log = self.folder / "sshd.log"
        self.proc: Optional[subprocess.Popen] = None
        # the ControlMaster's socket: ssh adds 17 characters to `mux-%C` (40), and a Unix socket
        # path must fit in 108 bytes, which a test folder under a long TMPDIR (CI's) does not
        self.mux_dir = Path(tempfile.mkdtemp(prefix="lhmux-", dir="/tmp"))

    @property
    def ssh_options(self) -> str:
        """The value of LONGHAUL_SSH_OPTIONS that reaches this server."""
        return f"-F {shlex.quote(str(self.client_config))}"

    def _keys(self) -> None:
        for name in ("host_key", "client_key", "stranger_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.folder / name)], check=True)
        shutil.copyfile(self.folder / "client_key.pub", self.folder / "authorized_keys")

    def _configs(self) -> Path:
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.folder / 'host_key'}",
            f"PidFile {self.folder / 'sshd.pid'}", f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
            "AllowStreamLocalForwarding yes", "LogLevel VERBOSE", ""]))
        hosts = [f"Host {MUX}", "  ControlMaster auto", "  ControlPersist 60", f"  ControlPath {self.mux_dir / 'mux-%C'}"]
        for alias, key in ((f"{HOST} {MUX}", "client_key"), (BAD_KEY, "stranger_key")):
            hosts += [f"Host {alias}", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {getpass.getuser()}",
                      f"  IdentityFile {self.folder / key}", "  IdentitiesOnly yes", "  StrictHostKeyChecking no",
                      "  UserKnownHostsFile /dev/null", "  LogLevel ERROR"]
        self.client_config.write_text("\n".join(hosts) + "\n")
        return config

    def start(self) -> "LocalSshd":
        program = sshd_program()
        if program is None:
            raise RuntimeError("sshd, ssh or ssh-keygen is not installed (apt-get install openssh-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._keys()
        config = self._configs()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", 0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([program, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections now (children of the listener, and theirs)."""
        import psutil

        if self.proc is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LocalSshd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.mux_dir, ignore_errors=True)
