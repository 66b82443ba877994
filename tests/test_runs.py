"""Run registry: names, state files, liveness, status/list and the private runtime directory."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from trainer.run import errors, liveness, locate, rundir, sockets, state as run_state, status as run_status


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    return tmp_path / "runs"


@pytest.fixture
def foreign_process():
    """A live process that is not longhaul (a recycled pid)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def new_run(root: Path, name: str, **state) -> Path:
    run_dir = locate.create_run_dir(root, name)
    (run_dir / "config.yaml").write_text("name: %s\n" % name)
    if state:
        run_state.StateFile(run_dir).update(name=name, **state)
    return run_dir


# ----------------------------------------------------------------------------- directories
def test_create_and_resolve_runs(root):
    path = locate.create_run_dir(root, "exp-1.a_b")
    (path / "config.yaml").write_text("{}")
    assert path == (root / "exp-1.a_b").absolute() and path.is_dir()
    assert locate.resolve_run("exp-1.a_b", root) == path
    assert locate.resolve_run(str(path), root=root / "elsewhere") == path
    with pytest.raises(errors.RunExists, match="already exists"):
        locate.create_run_dir(root, "exp-1.a_b")
    for bad in ("a/b", "", "..", "sp ace", "é"):
        with pytest.raises(ValueError, match="invalid run name"):
            locate.create_run_dir(root, bad)
    with pytest.raises(errors.RunNotFound, match=r"no run named or at 'nope'.*exp-1\.a_b"):
        locate.resolve_run("nope", root)
    with pytest.raises(errors.RunNotFound, match="no runs under"):
        locate.resolve_run("nope", root / "empty")


def test_runs_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGHAUL_ROOT", str(tmp_path / "r"))
    assert locate.runs_root() == tmp_path / "r"
    monkeypatch.delenv("LONGHAUL_ROOT")
    monkeypatch.chdir(tmp_path)
    assert locate.runs_root() == tmp_path / "checkpoints"


# ----------------------------------------------------------------------------- state file
def test_state_file_merges_atomically(root):
    run_dir = locate.create_run_dir(root, "s")
    sf = run_state.StateFile(run_dir)
    assert sf.read() == {}
    sf.update(state="running", step=3)
    before = time.time()
    data = sf.update(step=4, eta=10.5)
    assert data["state"] == "running" and data["step"] == 4 and data["eta"] == 10.5
    assert data["updated"] >= before
    assert json.loads((run_dir / "state.json").read_text()) == data
    assert [p.name for p in run_dir.iterdir()] == ["state.json"]  # no temp file left behind


def test_corrupt_state_file_is_rebuilt_not_unknown(root, capsys):
    run_dir = new_run(root, "bad")
    (run_dir / "state.json").write_text("{not json")
    with pytest.raises(errors.StateFileError, match="state.json: not valid JSON"):
        run_state.StateFile(run_dir).read()
    info = run_status.status(run_dir)
    assert info["state"] == "stopped" and "not valid JSON" in info["rebuilt"]["problem"]
    assert "rebuilt" in capsys.readouterr().err
    kept = list(run_dir.glob("state.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"
    assert run_state.StateFile(run_dir).read()["rebuilt"] == info["rebuilt"]  # saved: rebuilt once


# ----------------------------------------------------------------------------- liveness
def test_effective_state(root, live_process, foreign_process):
    assert run_state.effective_state(new_run(root, "live", state="running", pid=live_process)) == "running"
    assert run_state.effective_state(new_run(root, "paused", state="paused", pid=live_process)) == "paused"
    assert run_state.effective_state(new_run(root, "dead", state="running", pid=dead_pid())) == "interrupted"
    assert run_state.effective_state(new_run(root, "recycled", state="stopping", pid=foreign_process)) == "interrupted"
    assert run_state.effective_state(new_run(root, "nopid", state="starting")) == "interrupted"
    assert run_state.effective_state(new_run(root, "done", state="finished", pid=dead_pid())) == "finished"
    assert run_state.effective_state(new_run(root, "never")) == "stopped"


def test_zombie_is_not_alive():
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not liveness.pid_alive(proc.pid)  # exited but not reaped yet
    proc.wait()
    assert not liveness.pid_alive(proc.pid)
    assert liveness.pid_alive(os.getpid())
    assert not liveness.pid_alive(None) and not liveness.pid_alive(0)


# ----------------------------------------------------------------------------- status / list
def test_list_runs_reports_every_kind_of_run(root, live_process):
    now = time.time()
    new_run(root, "a-live", state="running", pid=live_process, step=120, total_steps=1000, epoch=2, phase=0,
            phase_name="head", eta=3600.0, last_checkpoint={"time": now - 90, "step": 100, "path": "ckpt/step-00000100"})
    new_run(root, "b-finished", state="finished", pid=dead_pid(), step=1000, total_steps=1000,
            best_eval={"val_f1_macro": 0.9})
    new_run(root, "c-stopped", state="stopped", pid=dead_pid(), step=500, total_steps=1000)
    new_run(root, "d-interrupted", state="running", pid=dead_pid(), step=700, total_steps=1000, eta=100.0)
    (root / "not-a-run").mkdir()
    infos = run_status.list_runs(root)
    assert [i["name"] for i in infos] == ["a-live", "b-finished", "c-stopped", "d-interrupted"]
    by_name = {i["name"]: i for i in infos}
    assert {n: i["state"] for n, i in by_name.items()} == {
        "a-live": "running", "b-finished": "finished", "c-stopped": "stopped", "d-interrupted": "interrupted"}
    live = by_name["a-live"]
    assert live["pid"] == live_process and live["step"] == 120 and live["eta"] == 3600.0
    assert 89 <= live["last_checkpoint_age"] < 100
    assert live["socket"] is None  # no daemon socket exists for this fake
    assert live["dir"] == str(root / "a-live")
    assert by_name["b-finished"]["best_eval"] == {"val_f1_macro": 0.9, "f1_macro": 0.9, "accuracy": None, "loss": None}
    interrupted = by_name["d-interrupted"]
    assert interrupted["pid"] is None and interrupted["eta"] is None and interrupted["step"] == 700
    assert set(live) >= {"name", "state", "step", "total_steps", "epoch", "phase", "last_eval", "best_eval",
                         "pid", "socket", "eta", "last_checkpoint_age", "dir"}
    assert run_status.list_runs(root / "missing") == []


# ----------------------------------------------------------------------------- runtime dir
def test_runtime_dir_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = sockets.runtime_dir()
    assert path == tmp_path / "longhaul"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert sockets.runtime_dir() == path  # idempotent


def test_runtime_dir_falls_back_to_tmp(monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = sockets.runtime_dir()
    assert path == Path(f"/tmp/longhaul-{os.getuid()}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_runtime_dir_refuses_open_permissions(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "longhaul").mkdir(mode=0o700)
    os.chmod(tmp_path / "longhaul", 0o750)
    with pytest.raises(errors.RuntimeDirError, match=r"permissions 0750 let other users in; run `chmod 700"):
        sockets.runtime_dir()
    with pytest.raises(errors.RuntimeDirError):
        sockets.socket_path(tmp_path / "somerun")


def test_runtime_dir_refuses_foreign_owner_and_symlinks(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert sockets.check_private_dir(private) == private
    with pytest.raises(errors.RuntimeDirError, match=f"owned by uid {os.getuid()}, not by you \\(uid 4242\\)"):
        sockets.check_private_dir(private, uid=4242)
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(errors.RuntimeDirError, match="not a directory"):
        sockets.check_private_dir(link)
    with pytest.raises(errors.RuntimeDirError, match="does not exist"):
        sockets.check_private_dir(tmp_path / "missing")


def test_socket_path_is_unique_and_short(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    a = sockets.socket_path(tmp_path / "root1" / "exp")
    b = sockets.socket_path(tmp_path / "root2" / "exp")
    assert a.parent == b.parent == tmp_path / "longhaul"
    assert a != b and a.name.startswith("exp-") and a.name.endswith(".sock")
    assert a == sockets.socket_path(tmp_path / "root1" / "exp")
    long_name = sockets.socket_path(tmp_path / ("n" * 200))
    assert len(long_name.name) <= 40 + len("-12345678.sock")


def test_find_socket_falls_back_to_the_recorded_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "login"))
    (tmp_path / "login").mkdir(mode=0o700)
    run_dir = new_run(tmp_path / "runs", "r", state="running", pid=os.getpid())
    assert sockets.find_socket(run_dir) is None
    # a daemon started at boot by cron (no XDG_RUNTIME_DIR) listens in another private folder
    boot = tmp_path / "boot"
    boot.mkdir(mode=0o700)
    (boot / "r.sock").write_text("")
    run_state.StateFile(run_dir).update(socket=str(boot / "r.sock"))
    assert sockets.find_socket(run_dir) == boot / "r.sock"
    os.chmod(boot, 0o755)  # not private: not trusted
    assert sockets.find_socket(run_dir) is None
    usual = sockets.socket_path(run_dir)
    usual.write_text("")
    assert sockets.find_socket(run_dir) == usual


def test_socket_name_is_cut_by_bytes_and_long_runtime_dirs_fall_back(tmp_path, monkeypatch, runtime_dir):
    short = runtime_dir  # pytest's tmp_path is long
    emoji = sockets.socket_path(tmp_path / ("\N{GRINNING FACE}" * 30))
    assert emoji.parent == short / "longhaul" and len(emoji.name.encode()) == 40 + len("-12345678.sock")
    assert emoji.name.startswith("\N{GRINNING FACE}" * 10 + "-")  # whole characters only
    long_xdg = tmp_path / ("x" * (120 - len(str(tmp_path)) - 1))
    long_xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_xdg))
    path = sockets.socket_path(tmp_path / "run")
    assert path.parent == Path(f"/tmp/longhaul-{os.getuid()}") and len(os.fsencode(path)) <= sockets.SUN_PATH_MAX
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmpfs):
    fs = tmpfs(1)
    target = fs.path / "state.json"
    rundir.atomic_write_bytes(target, b'{"state": "running"}\n')
    fs.fill()
    with pytest.raises(OSError):
        rundir.atomic_write_bytes(target, b"x" * 200_000)
    assert target.read_bytes() == b'{"state": "running"}\n'
    assert sorted(p.name for p in fs.path.iterdir()) == [".filler", "state.json"]


def test_a_rebuilt_state_takes_the_daemon_pid_from_the_event_data_or_its_message(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    events = [{"seq": 1, "time": 1.0, "kind": "state", "level": "info", "message": "daemon started (pid 11)",
               "data": {"state": "starting"}},
              {"seq": 2, "time": 2.0, "kind": "state", "level": "info", "message": "daemon started",
               "data": {"state": "starting", "pid": 22}},
              {"seq": 3, "time": 3.0, "kind": "state", "level": "info", "message": "running",
               "data": {"state": "running"}}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert run_state.events_summary(run_dir) == {"state": "running", "pid": 22}
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:1] + events[2:]))
    assert run_state.events_summary(run_dir)["pid"] == 11  # events written before the data carried it


def test_a_missing_run_has_every_key_a_status_has(root):
    """ls --json rows keep one shape: missing_status lists status()'s keys by hand."""
    present = run_status.status(new_run(root, "here"))
    missing = run_status.missing_status(root / "gone")
    assert set(missing) - {"error"} == set(present) - {"error"}
