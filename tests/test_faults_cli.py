"""Fault injection at the CLI (issue 8, items 3, 4, 5, 7, 9, 10, 11): daemons that die at start,
hostile names and paths, an existing --run-dir, a damaged state.json, permissions, a read-only
runs root, runs outside the root, a stop whose checkpoint failed.

Daemons run tests/fake_worker.py (no torch in the daemon or its worker): `longhaul start` and
`resume` go through the real `cli.main` with `daemon.launch_daemon` pointed at the fake worker.
"""
from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon_helpers import (FAKE_WORKER, FAST_SETTINGS, fake_run_config, make_run, short_runtime_dir, wait_exit,
                            wait_for)
from trainer import cli, daemon, history
from trainer.run import liveness, locate, registry, rundir, sockets, state as run_state, status as run_status

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def env(tmp_path, monkeypatch, runtime_dir, launcher):
    """A runs root, a short private XDG_RUNTIME_DIR, and `longhaul start/resume` on the fake
    worker; every daemon started is killed at the end."""
    root = tmp_path / "runs"
    monkeypatch.setenv("LONGHAUL_ROOT", str(root))
    real_launch = daemon.launch_daemon

    def launch(run_dir, worker_script=FAKE_WORKER, wait=30.0, settings=None):
        launcher.run_dirs.append(Path(run_dir))
        return real_launch(run_dir, worker_script=worker_script, wait=wait,
                           settings={**FAST_SETTINGS, **(settings or {})})

    monkeypatch.setattr(daemon, "launch_daemon", launch)
    return root


def fake_config(tmp_path: Path, name: str = "fake", fake: dict | None = None) -> Path:
    """A config `longhaul start` accepts, and the fake worker's script beside it is copied in
    by `start_fake`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(fake_run_config(name, max_restarts=2))
    return path


def start_fake(args: list[str], fake: dict, capsys) -> tuple[int, str, str]:
    """`longhaul start ARGS` with fake.json put into the run directory before the daemon runs."""
    real_write = cli.write_config

    def write_config(run_dir, cfg):
        real_write(run_dir, cfg)
        (run_dir / "fake.json").write_text(json.dumps(fake))

    cli.write_config = write_config
    try:
        code = cli.main(["start", *args])
    finally:
        cli.write_config = real_write
    out, err = capsys.readouterr()
    return code, out, err


def wait_state(run_dir: Path, *states: str, timeout: float = 20) -> dict:
    return wait_for(lambda: (info := run_status.status(run_dir))["state"] in states and info, timeout,
                    f"{run_dir.name} to be {'/'.join(states)}")


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# ----------------------------------------------------------------------------- item 3
def test_long_xdg_runtime_dir_falls_back_to_tmp(env, tmp_path, monkeypatch, capsys):
    """A 120-character XDG_RUNTIME_DIR: the socket path would not fit in sun_path; the daemon
    used to die at once while `start` said "started". Now the socket goes to /tmp/longhaul-<uid>/."""
    long_dir = Path(short_runtime_dir()) / ("x" * (120 - len(short_runtime_dir()) - 1))
    long_dir.mkdir(mode=0o700)
    assert len(str(long_dir)) == 120
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_dir))
    code, out, err = start_fake([str(fake_config(tmp_path)), "--name", "longxdg"], {"steps": 10**6}, capsys)
    assert code == 0, err
    run_dir = env / "longxdg"
    sock = sockets.socket_path(run_dir)
    assert sock.parent == Path(f"/tmp/longhaul-{os.getuid()}") and len(os.fsencode(sock)) <= 107
    assert run_status.status(run_dir)["socket"] == str(sock)
    assert cli.main(["stop", "longxdg", "--timeout", "20"]) == 0


def test_emoji_run_name_socket_cut_by_bytes(env, tmp_path, capsys):
    """A run directory named with 30 emoji (120 bytes): the socket name is cut by bytes, the run
    starts, and it can be addressed by its (unicode) name; hints are shell-quoted."""
    name = "\N{GRINNING FACE}" * 30
    other = tmp_path / "elsewhere"
    code, out, err = start_fake([str(fake_config(tmp_path)), "--run-dir", str(other / name)], {"steps": 10**6}, capsys)
    assert code == 0, err
    run_dir = other / name
    sock = sockets.socket_path(run_dir)
    assert len(sock.name.encode()) <= 40 + len("-12345678.sock") and sock.exists()
    assert f"longhaul attach '{name}'" in out  # quoted (found by name through the registry)
    assert cli.main(["status", name]) == 0
    assert name in capsys.readouterr().out
    assert cli.main(["stop", name, "--timeout", "20"]) == 0


def test_invalid_config_in_run_dir_fails_resume_with_the_cause(env, capsys):
    run_dir = make_run(env, "badcfg")
    run_state.StateFile(run_dir).update(state="running", pid=999999999)  # interrupted
    (run_dir / "config.yaml").write_text("optim: {lr: -1}\n")
    assert cli.main(["resume", "badcfg"]) == 2
    err = capsys.readouterr().err
    assert "died at start" in err and "optim.lr" in err and str(run_dir / "config.yaml") in err
    no_traceback(err)
    assert run_status.status(run_dir)["state"] == "failed"
    assert cli.main(["resume", "--all"]) == 0  # a failed run is not resumed at boot
    assert "no interrupted runs" in capsys.readouterr().out


def test_resume_all_gives_up_on_a_run_whose_daemon_keeps_dying(env, monkeypatch, capsys):
    """A daemon that dies before it can even write "failed" (here: a bad tunable) leaves the run
    "interrupted"; resume --all counts the failures and skips the run after 3."""
    run_dir = make_run(env, "dies")
    run_state.StateFile(run_dir).update(state="running", pid=999999999)
    launch = daemon.launch_daemon
    monkeypatch.setattr(daemon, "launch_daemon", functools.partial(launch, settings={"no_such_tunable": 1}))
    for attempt in range(1, 4):
        assert cli.main(["resume", "--all"]) == 1
        err = capsys.readouterr().err
        assert "died at start" in err and "no_such_tunable" in err, err
        assert run_status.status(run_dir)["launch_failures"] == attempt
    assert cli.main(["resume", "--all"]) == 0
    captured = capsys.readouterr()
    assert f"skipping {run_dir}" in captured.err and "3 times" in captured.err
    assert cli.main(["status", "dies"]) == 0
    assert "died at start 3 time(s) in a row" in capsys.readouterr().out
    # a resume by hand that works resets the count
    monkeypatch.setattr(daemon, "launch_daemon", launch)
    (run_dir / "fake.json").write_text(json.dumps({"steps": 10**6}))
    assert cli.main(["resume", "dies"]) == 0
    wait_for(lambda: run_state.StateFile(run_dir).read()["launch_failures"] == 0, 20, "the count reset by the live daemon")
    assert cli.main(["stop", "dies", "--timeout", "20"]) == 0


# ----------------------------------------------------------------------------- stop outcome
STOP_FAILS_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from fake_worker import FakeTrainer, worker

    class StopFails(FakeTrainer):
        # the final checkpoint of a stop fails: the engine says so and keeps training
        def handle_controls(self):
            while True:
                try:
                    request_id, action = self.controls.get_nowait()
                except Exception:
                    return
                self.publisher.event("request", "error", f"{{action}} failed: checkpoint failed: no space left",
                                     id=request_id, action=action, outcome="failed")

    sys.exit(worker.main(trainer_factory=StopFails))
""")


def test_stop_and_checkpoint_whose_checkpoint_failed_exit_nonzero(env, tmp_path, monkeypatch, capsys):
    script = tmp_path / "stop_fails.py"
    script.write_text(STOP_FAILS_WORKER.format(tests=str(TESTS)))
    launch = daemon.launch_daemon
    monkeypatch.setattr(daemon, "launch_daemon", functools.partial(launch, worker_script=script))
    run_dir = make_run(env, "nostop", fake={"steps": 10**6, "step_time": 0.005})
    assert cli.main(["resume", "nostop"]) == 0
    wait_state(run_dir, "running")
    for action in ("checkpoint", "stop"):  # (after a stop, the daemon refuses other requests)
        capsys.readouterr()
        assert cli.main([action, "nostop", "--timeout", "20"]) == 1
        err = capsys.readouterr().err
        assert f"{action} failed: {action} failed: checkpoint failed" in err
    assert liveness.pid_alive(run_state.StateFile(run_dir).read()["pid"])  # the run is still there


# ----------------------------------------------------------------------------- item 4
def test_start_into_an_existing_run_dir_is_refused(env, tmp_path, capsys):
    run_dir = make_run(env, "done")
    run_state.StateFile(run_dir).update(state="finished")
    before = (run_dir / "config.yaml").read_text()
    assert cli.main(["start", str(fake_config(tmp_path, "new")), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already a run directory (state: finished)" in err and "longhaul resume" in err and "--run-dir" in err
    assert (run_dir / "config.yaml").read_text() == before and run_status.status(run_dir)["state"] == "finished"
    # an empty existing directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = start_fake([str(fake_config(tmp_path, "new")), "--run-dir", str(empty)], {"steps": 5}, capsys)
    assert code == 0, err
    wait_state(empty, "finished")


def test_train_run_dir_with_another_config_is_refused(env, tmp_path, capsys):
    cfg = fake_config(tmp_path, "first")
    run_dir = tmp_path / "fg"
    # what `train` stores, without training: the resolved config
    from trainer.config import load_config
    run_dir.mkdir()
    cli.write_config(run_dir, load_config(cfg))
    other = fake_config(tmp_path, "second")
    assert cli.main(["train", str(other), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and str(other) in err and "--run-dir" in err
    assert cli.main(["train", str(cfg), "--run-dir", str(run_dir), "--set", "seed=7"]) == 2
    assert "with --set" in capsys.readouterr().err
    # an emptied config.yaml (power cut) is refused too, never loaded as all defaults
    (run_dir / "config.yaml").write_text("")
    assert cli.main(["train", str(cfg), "--run-dir", str(run_dir)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert cli.main(["status", str(run_dir)]) == 0  # and nothing else broke


def test_empty_config_file_is_refused_naming_it(tmp_path):
    from trainer.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match=r"(?s)config.yaml.*empty"):
        load_config(path)


# ----------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("damage", ["{not json", "[]", ""])
def test_corrupt_state_json_is_rebuilt_and_resumed(env, capsys, damage):
    run_dir = make_run(env, "hurt", fake={"steps": 10**6})
    with history.HistoryWriter(run_dir / "history.msgpack") as writer:
        for step in range(1, 13):
            writer.append({"kind": "train", "step": step, "epoch": 1, "phase": 0, "time": time.time(),
                           "train_loss": 1.0})
    (run_dir / "ckpt" / "step-0000000010").mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(
        json.dumps({"seq": 1, "time": 1.0, "kind": "state", "level": "info", "message": "daemon started (pid 999999999)",
                    "data": {"state": "starting"}}) + "\n"
        + json.dumps({"seq": 2, "time": 2.0, "kind": "state", "level": "info", "message": "running",
                      "data": {"state": "running"}}) + "\n")
    (run_dir / "state.json").write_text(damage)
    assert cli.main(["status", "hurt"]) == 0
    captured = capsys.readouterr()
    assert "hurt: interrupted  step 12" in captured.out and "state rebuilt" in captured.out
    assert "unknown" not in captured.out and "rebuilt" in captured.err
    assert [p.read_text() for p in run_dir.glob("state.json.corrupt-*")] == [damage]
    assert run_state.StateFile(run_dir).read()["last_checkpoint"]["step"] == 10
    assert cli.main(["ls"]) == 0
    assert "state rebuilt" in capsys.readouterr().out
    assert cli.main(["resume", "--all"]) == 0
    assert "resumed hurt" in capsys.readouterr().out
    wait_state(run_dir, "running")
    assert cli.main(["stop", "hurt", "--timeout", "20"]) == 0


# ----------------------------------------------------------------------------- item 7
def modes(run_dir: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(os.stat(run_dir).st_mode)}
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(run_dir))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def test_run_data_is_private(env, tmp_path, capsys):
    os.umask(0o022)  # a usual login umask: longhaul must not rely on it
    code, out, err = start_fake([str(fake_config(tmp_path)), "--name", "priv"],
                                {"steps": 20, "checkpoint_every": 5}, capsys)
    assert code == 0, err
    run_dir = env / "priv"
    wait_state(run_dir, "finished")
    wait_for(lambda: not liveness.pid_alive(run_state.StateFile(run_dir).read().get("pid")), 10, "daemon exit")
    found = modes(run_dir)
    assert {"config.yaml", "state.json", "events.jsonl", "daemon.log", "history.msgpack"} <= set(found)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (run_dir / name).is_dir() else 0o600)}
    assert not wrong, wrong
    assert stat.S_IMODE(os.stat(registry.entries_dir()).st_mode) == 0o700


def test_checkpoints_are_private(tmp_path):
    pytest.importorskip("torch")
    import torch

    from trainer.checkpoint import CheckpointStore

    os.umask(0o022)
    rundir.apply_umask()
    run_dir = tmp_path / "ck"
    rundir.make_run_dir(run_dir)
    store = CheckpointStore(run_dir / "ckpt", min_free_mb=0)
    store.save({"model": {"w": torch.zeros(3)}}, {"step": 5})
    found = modes(run_dir)
    assert any(name.startswith("ckpt/step-") for name in found), found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (run_dir / name).is_dir() else 0o600)}
    assert not wrong, wrong


def test_longhaul_umask_relaxes_privacy(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LONGHAUL_UMASK", "022")
    run_dir = locate.create_run_dir(env, "open")
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755
    monkeypatch.setenv("LONGHAUL_UMASK", "nine")
    assert cli.main(["ls"]) == 2
    assert "LONGHAUL_UMASK='nine'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("name", ["../x", "a b", "\N{LATIN SMALL LETTER E WITH ACUTE}t\N{LATIN SMALL LETTER E WITH ACUTE}",
                                  "n" * 300])
def test_bad_names_are_messages_not_tracebacks(env, tmp_path, capsys, name):
    assert cli.main(["start", str(fake_config(tmp_path)), "--name", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longhaul start: invalid run name"), err
    no_traceback(err)
    assert not env.exists() or not any(env.iterdir())


def test_too_long_paths_are_messages(env, tmp_path, capsys):
    too_long = tmp_path / ("d" * 300) / "run"
    assert cli.main(["start", str(fake_config(tmp_path)), "--run-dir", str(too_long)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longhaul start: cannot create the run directory") and "too long" in err
    assert cli.main(["status", "x" * 300]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longhaul status: no run named") and "Traceback" not in err


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def test_read_only_runs_root(env, tmp_path, tmpfs, capsys):  # noqa: F811 (fixture)
    fs = tmpfs(2)
    remount_ro(fs.path)
    assert cli.main(["--root", str(fs.path / "runs"), "start", str(fake_config(tmp_path)), "--name", "ro"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longhaul start: cannot create the run directory") and "Read-only file system" in err
    no_traceback(err)


def test_unsafe_socket_dir_leaves_no_run_dir(env, tmp_path, capsys):
    sock_dir = Path(os.environ["XDG_RUNTIME_DIR"]) / "longhaul"
    sock_dir.mkdir(mode=0o700)
    os.chmod(sock_dir, 0o755)
    config = fake_config(tmp_path)
    assert cli.main(["start", str(config), "--name", "unsafe"]) == 2
    assert "chmod 700" in capsys.readouterr().err
    assert not (env / "unsafe").exists() and registry.registered() == []
    os.chmod(sock_dir, 0o700)
    code, out, err = start_fake([str(config), "--name", "unsafe"], {"steps": 5}, capsys)
    assert code == 0, err  # the name was left free
    wait_state(env / "unsafe", "finished")


def test_names_with_spaces_are_addressable(env, tmp_path, capsys):
    code, out, err = start_fake([str(fake_config(tmp_path)), "--run-dir", str(env / "my run")],
                                {"steps": 10**6}, capsys)
    assert code == 0, err
    assert "longhaul attach 'my run'" in out and "longhaul status 'my run'" in out
    assert cli.main(["status", "my run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] in ("starting", "running")
    assert cli.main(["stop", "my run", "--timeout", "20"]) == 0


# ----------------------------------------------------------------------------- item 10
def test_registry_sees_runs_outside_the_root_and_deleted_ones(env, tmp_path, capsys):
    outside = tmp_path / "far" / "away"
    code, out, err = start_fake([str(fake_config(tmp_path)), "--run-dir", str(outside)], {"steps": 10**6}, capsys)
    assert code == 0, err
    assert registry.registered() == [outside]
    assert cli.main(["ls", "--json"]) == 0
    assert [i["dir"] for i in json.loads(capsys.readouterr().out)] == [str(outside)]
    assert cli.main(["status", "away"]) == 0
    # the daemon dies with the machine: the boot job resumes the run outside the root
    wait_state(outside, "running")
    pid = run_state.StateFile(outside).read()["pid"]
    os.kill(pid, 9)
    wait_exit(pid, 10)
    for worker in (outside / "fake_runs").read_text().split():
        try:
            os.kill(int(worker), 9)
        except ProcessLookupError:
            pass
    assert run_status.status(outside)["state"] == "interrupted"
    capsys.readouterr()
    assert cli.main(["resume", "--all"]) == 0
    assert "resumed away" in capsys.readouterr().out
    assert cli.main(["stop", "away", "--timeout", "20"]) == 0
    wait_for(lambda: not liveness.pid_alive(run_state.StateFile(outside).read().get("pid")), 10, "daemon exit")
    # deleted: listed as missing, never a crash
    import shutil
    shutil.rmtree(outside)
    capsys.readouterr()
    assert cli.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "is gone" in out and str(outside) in out
    assert cli.main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "missing"
    assert cli.main(["resume", "--all"]) == 0
    assert cli.main(["status", "away"]) == 2
    assert "no run named" in capsys.readouterr().err


def test_registry_tolerates_concurrent_writers(tmp_path):
    code = ("import sys; from trainer.run import registry\n"
            "for i in range(40): registry.register(sys.argv[1] + '/run%d' % i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"w{n}")], cwd=TESTS.parent)
             for n in range(4)]
    assert [p.wait(60) for p in procs] == [0] * 4
    assert len(registry.registered()) == 160
    assert str(registry.state_dir()).startswith(os.environ["LONGHAUL_STATE_DIR"])
