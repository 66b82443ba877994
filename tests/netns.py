"""Two "hosts" on one machine for the multi-box tests: network namespaces joined by a veth pair
(`ip netns`, root only). Each host runs `longhaul` with its own runs root, runtime and state
directories, so the two boxes share nothing but the wire. Where namespaces cannot be made (not
root, no iproute2) the fixture skips; in CI (`CI` set, root) that is a failure instead."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.longhaul_cli import ROOT


@dataclass
class Host:
    ns: str
    addr: str
    iface: str
    home: Path

    @property
    def env(self) -> dict:
        return dict(os.environ, LONGHAUL_ROOT=str(self.home / "runs"), XDG_RUNTIME_DIR=str(self.home / "run"),
                    LONGHAUL_STATE_DIR=str(self.home / "state"), PYTHONPATH=str(ROOT))

    def cli(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        """`longhaul ARGS` on this host (inside its namespace)."""
        result = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "trainer.cli", *args],
                                env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"{self.ns}: longhaul {' '.join(args)}: {result.stderr}"
        return result

    def run_dir(self, name: str) -> Path:
        return self.home / "runs" / name

    def link(self, up: bool) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.iface, "up" if up else "down")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def make_hosts(tmp_path: Path) -> list[Host]:
    tag = f"{os.getpid() % 10000}"
    hosts = [Host(f"lh{tag}a", "10.231.7.1", f"lh{tag}a0", tmp_path / "boxa"),
             Host(f"lh{tag}b", "10.231.7.2", f"lh{tag}b0", tmp_path / "boxb")]
    try:
        _ip("link", "add", hosts[0].iface, "type", "veth", "peer", "name", hosts[1].iface)
        for host in hosts:
            _ip("netns", "add", host.ns)
            _ip("link", "set", host.iface, "netns", host.ns)
            _ip("netns", "exec", host.ns, "ip", "addr", "add", f"{host.addr}/24", "dev", host.iface)
            _ip("netns", "exec", host.ns, "ip", "link", "set", host.iface, "up")
            _ip("netns", "exec", host.ns, "ip", "link", "set", "lo", "up")
            for sub in ("run", "state", "runs"):
                (host.home / sub).mkdir(parents=True, mode=0o700)
    except OSError:
        remove_hosts(hosts)
        raise
    return hosts


def remove_hosts(hosts: list[Host]) -> None:
    """Kill what still runs in the namespaces, then delete them (their veth ends go with them)."""
    for host in hosts:
        pids = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "netns", "delete", host.ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", host.iface], capture_output=True)  # if never moved


@pytest.fixture
def two_hosts(tmp_path):
    """Two hosts, a and b (10.231.7.1 and .2), deleted after the test."""
    problem = None
    if os.geteuid() != 0:
        problem = "network namespaces need root"
    elif shutil.which("ip") is None:
        problem = "no ip command (apt-get install iproute2)"
    hosts: list[Host] = []
    if problem is None:
        try:
            hosts = make_hosts(tmp_path)
        except OSError as exc:
            problem = str(exc)
    if problem is not None:
        remove_hosts(hosts)
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"cannot make two hosts in network namespaces: {problem}")
        pytest.skip(f"cannot make two hosts in network namespaces: {problem}")
    yield hosts
    remove_hosts(hosts)
