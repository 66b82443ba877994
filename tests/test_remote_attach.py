"""`longhaul ls HOST:`, `status HOST:RUN` and `attach HOST:RUN` through a real sshd on localhost
(tests/sshd.py: its own host key, key auth only, nothing under ~/.ssh touched).

The "host" is this machine: the far side's longhaul is this checkout run by sshd with the test's
runs root, run registry and socket directory on its command line (sshd cleans the environment).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

import sshd
from daemon_helpers import make_run, wait_for
from trainer import cli, ssh
from trainer.run.liveness import pid_alive
from trainer.run.state import FINAL_STATES, read_state
from trainer.run.status import list_runs, status as run_status

#: Loose enough for a loaded 2-core box; an error that waits for a network timeout takes longer.
QUICK = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if sshd.sshd_program() is None:
        reason = "sshd (or ssh, ssh-keygen) is not installed: apt-get install openssh-server"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs it)")
        pytest.skip(reason)
    with sshd.LocalSshd(tmp_path_factory.mktemp("sshd")) as running:
        yield running


@pytest.fixture
def far(server, tmp_path, runtime_dir, monkeypatch):
    """(runs root, server): `longhaul-test` reaches this machine's longhaul through ssh."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("LONGHAUL_ROOT", str(root))
    monkeypatch.setenv(ssh.SSH_OPTIONS_ENV, server.ssh_options)
    monkeypatch.setenv(ssh.REMOTE_COMMAND_ENV, sshd.far_side_command({
        "LONGHAUL_ROOT": root, "LONGHAUL_STATE_DIR": os.environ["LONGHAUL_STATE_DIR"], "XDG_RUNTIME_DIR": runtime_dir}))
    return root, server


def longhaul(capsys, *argv: str) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of `longhaul ARGV` in this process."""
    capsys.readouterr()
    started = time.monotonic()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err, time.monotonic() - started


def finished_run(root: Path, launcher) -> Path:
    """A fake run that ran to its end under a real daemon (state, history, events on disk)."""
    run_dir = make_run(root, "done", fake={"steps": 20, "steps_per_epoch": 10, "step_time": 0.005})
    launcher.start(run_dir)
    wait_for(lambda: read_state(run_dir).get("state") in FINAL_STATES, 30, "the fake run to finish")
    return run_dir


# ----------------------------------------------------------------------------- HOST:RUN
@pytest.mark.parametrize("text, expected", [
    ("run", None), ("./runs/a:b", None), ("/abs/a:b", None), ("runs/a:b", None), ("~/a:b", None), (None, None),
    ("box:run", ("box", "run")), ("me@box:run", ("me@box", "run")), ("box:", ("box", "")),
    ("alias:/data/runs/x", ("alias", "/data/runs/x")), ("[::1]:run", ("::1", "run")),
])
def test_target_is_remote_only_with_a_colon_before_any_slash(text, expected):
    target = ssh.parse_target(text)
    assert (target and (target.host, target.run)) == expected or (target is None and expected is None)


@pytest.mark.parametrize("text", [":run", "-oProxyCommand=x:run", "a b:run"])
def test_a_remote_form_that_cannot_be_a_host_is_refused(text):
    with pytest.raises(ssh.RemoteError, match="ssh destination|no host"):
        ssh.parse_target(text)


# ----------------------------------------------------------------------------- ls and status
def test_ls_and_status_of_the_host_equal_the_local_ones(far, launcher, capsys):
    root, _ = far
    run_dir = finished_run(root, launcher)
    code, out, err, _ = longhaul(capsys, "status", f"{sshd.HOST}:done", "--json")
    assert code == 0, err
    remote, local = json.loads(out), run_status(run_dir)
    assert remote.pop("last_checkpoint_age") == pytest.approx(local.pop("last_checkpoint_age"), abs=30)
    assert remote == local and remote["state"] == "finished"
    code, out, err, _ = longhaul(capsys, "ls", f"{sshd.HOST}:", "--json")
    assert code == 0, err
    assert [i["dir"] for i in json.loads(out)] == [i["dir"] for i in list_runs(root)] == [str(run_dir)]
    code, out, err, _ = longhaul(capsys, "ls", f"{sshd.HOST}:")
    assert code == 0 and out.splitlines()[0].startswith("NAME") and out.splitlines()[1].split()[:2] == ["done", "finished"]
    code, out, err, _ = longhaul(capsys, "status", f"{sshd.HOST}:done")
    assert code == 0 and out.startswith("done: finished  step 20/20"), out + err


def test_a_live_run_s_status_names_its_socket(far, launcher, capsys):
    root, _ = far
    run_dir = make_run(root, "live", fake={"steps": 100000, "step_time": 0.02})
    launcher.start(run_dir)
    code, out, err, _ = longhaul(capsys, "status", f"{sshd.HOST}:live", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["state"] in ("starting", "running") and info["socket"] == run_status(run_dir)["socket"]
    assert Path(info["socket"]).exists()


# ----------------------------------------------------------------------------- attach
def test_attach_shows_the_live_run_through_the_forward_and_cleans_up(far, launcher, capsys, monkeypatch):
    from textual.app import App

    from tui.remote import RemoteApp, RemoteRunScreen

    root, _ = far
    launcher.start(make_run(root, "live", fake={"steps": 100000, "step_time": 0.02, "log_every": 0}))
    seen: dict = {}

    async def watch(pilot) -> None:
        app = pilot.app
        deadline = time.monotonic() + 30
        while not (isinstance(app.screen, RemoteRunScreen) and app.screen.link_state == "live"):
            assert time.monotonic() < deadline, "never live through the forward"
            await pilot.pause(0.05)
        first = app.screen.model.step
        seen.update(name=app.screen.model.name, first=first, socket=app.tunnel.local, ssh=app.tunnel.proc.pid,
                    socket_link=str(app.screen.link.socket_path()), back=app.screen.check_action("back", ()),
                    resume=app.screen.resume_argv)
        while app.screen.model.step <= first:
            assert time.monotonic() < deadline, "no live progress through the forward"
            await pilot.pause(0.05)
        seen["later"] = app.screen.model.step
        await pilot.press("d")

    def headless(self, **_options):
        return App.run(self, headless=True, size=(160, 48), auto_pilot=watch)

    monkeypatch.setattr(RemoteApp, "run", headless)
    code, out, err, _ = longhaul(capsys, "attach", f"{sshd.HOST}:live")
    assert code == 0, err
    assert seen["name"] == "live" and seen["later"] > seen["first"]
    assert seen["socket_link"] == str(seen["socket"]) and seen["back"] is False  # no local run list to go back to
    assert seen["resume"][-2] == sshd.HOST and seen["resume"][-1].endswith(f"resume {root / 'live'}")  # `r`: there
    assert not seen["socket"].exists() and not seen["socket"].parent.exists()  # the private directory is gone
    wait_for(lambda: not pid_alive(seen["ssh"]), 5, "the forwarding ssh to exit")


def test_tunnel_directory_is_private_and_ends_with_its_ssh(far, launcher):
    root, server = far
    run_dir = make_run(root, "live", fake={"steps": 100000, "step_time": 0.02, "log_every": 0})
    launcher.start(run_dir)
    tunnel = ssh.Tunnel(sshd.HOST, run_status(run_dir)["socket"]).open()
    try:
        assert tunnel.folder.stat().st_mode & 0o777 == 0o700 and tunnel.alive()
        assert len(server.session_pids()) >= 1  # the sshd session serving the forward
    finally:
        tunnel.close()
    assert not tunnel.alive() and not tunnel.folder.exists()


def test_a_tunnel_through_a_control_master_still_lives_and_ends_with_the_attach(far, launcher):
    """A ControlMaster in ~/.ssh/config would take the forward over (and keep it after the
    attach): the forward has a connection of its own."""
    root, server = far
    run_dir = make_run(root, "live", fake={"steps": 100000, "step_time": 0.02, "log_every": 0})
    launcher.start(run_dir)
    ssh.remote_status(ssh.Target(sshd.MUX, "live"))  # starts the master, as any earlier ssh would
    tunnel = ssh.Tunnel(sshd.MUX, run_status(run_dir)["socket"]).open()
    try:
        time.sleep(1.0)
        assert tunnel.alive(), tunnel.log.read_text()
    finally:
        tunnel.close()
        subprocess.run(ssh.ssh_argv(sshd.MUX, "-O", "exit"), capture_output=True, timeout=QUICK)
    assert not tunnel.folder.exists()


def test_a_tunnel_whose_ssh_died_is_opened_again(far, launcher):
    """The screen asks the host for the run's state after a lost connection and, while it runs,
    starts ssh again (a laptop that slept, a network that changed)."""
    from trainer import protocol

    root, _ = far
    run_dir = make_run(root, "live", fake={"steps": 100000, "step_time": 0.02, "log_every": 0})
    launcher.start(run_dir)
    tunnel = ssh.Tunnel(sshd.HOST, run_status(run_dir)["socket"]).open()
    try:
        tunnel.proc.kill()
        tunnel.proc.wait()
        assert not tunnel.alive() and tunnel.reopen() is None and tunnel.alive()
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(QUICK)
            conn.connect(str(tunnel.local))
            protocol.send_frame(conn, protocol.hello("test"), protocol.MAX_CLIENT_FRAME)
            assert protocol.recv_frame(conn, protocol.MAX_SERVER_FRAME, timeout=QUICK)["type"] == "welcome"
    finally:
        tunnel.close()


def test_attach_to_a_run_without_a_daemon_says_its_state_and_how_to_see_it(far, launcher, capsys):
    root, _ = far
    finished_run(root, launcher)
    code, out, err, took = longhaul(capsys, "attach", f"{sshd.HOST}:done")
    assert code == 2 and took < QUICK
    assert "done on longhaul-test is finished" in err and f"ssh -t {sshd.HOST}" in err and "attach" in err


# ----------------------------------------------------------------------------- errors, within seconds
def test_unreachable_host_fails_fast_naming_it(far, capsys, monkeypatch):
    monkeypatch.setenv(ssh.SSH_OPTIONS_ENV, "-o Port=1")  # nobody listens there
    code, out, err, took = longhaul(capsys, "status", "127.0.0.1:run", "--json")
    assert code == 2 and took < QUICK and out == ""
    assert "cannot reach 127.0.0.1 through ssh" in err and "Connection refused" in err and "ssh 127.0.0.1 true" in err


def test_unknown_host_name_fails_fast_naming_it(far, capsys):
    code, out, err, took = longhaul(capsys, "attach", "no-such-host.invalid:run")
    assert code == 2 and took < QUICK
    assert "cannot reach no-such-host.invalid" in err and "~/.ssh/config" in err


def test_authentication_failure_says_batch_mode_needs_a_key(far, capsys):
    code, out, err, took = longhaul(capsys, "ls", f"{sshd.BAD_KEY}:")
    assert code == 2 and took < QUICK
    assert f"cannot reach {sshd.BAD_KEY}" in err and "Permission denied" in err and "BatchMode" in err


def test_longhaul_missing_on_the_host_names_the_setting(far, capsys, monkeypatch):
    monkeypatch.setenv(ssh.REMOTE_COMMAND_ENV, "longhaul-not-installed-here")
    code, out, err, took = longhaul(capsys, "attach", f"{sshd.HOST}:run")
    assert code == 2 and took < QUICK
    assert f"longhaul is not installed on {sshd.HOST}" in err and ssh.REMOTE_COMMAND_ENV in err
    assert "--remote-command" in err
    code, out, err, took = longhaul(capsys, "ls", f"{sshd.HOST}:", "--remote-command", "/nowhere/longhaul")
    assert code == 2 and "longhaul is not installed" in err


def test_unknown_run_on_the_host_says_which_runs_exist(far, capsys):
    root, _ = far
    make_run(root, "other")
    code, out, err, took = longhaul(capsys, "status", f"{sshd.HOST}:nope")
    assert code == 2 and took < QUICK
    assert f"on {sshd.HOST}: no run named or at 'nope'" in err and "other" in err


def test_ls_needs_a_host_and_a_colon(far, capsys):
    code, out, err, _ = longhaul(capsys, "ls", sshd.HOST)
    assert code == 2 and "HOST:" in err
