"""The run queue: order, slots, dependencies (held, never started blindly), move/remove/pause,
a damaged or missing queue file rebuilt from the run directories (order, pauses and slots kept,
the rebuild said), two `start --queue` at the same instant, `longhaul queue` and the CLI's
errors, real runs going through the queue across a 'reboot' (every process killed, `resume
--all`), the ETAs, and a run's end moving the queue on (a daemon that raises, a foreground train)."""
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import yaml

from tests.daemon_helpers import read_events, wait_for
from tests.longhaul_cli import cli, cli_env, status
from tests.run_configs import DAEMON_TINY
from trainer.run import queue, registry
from trainer.run.locate import create_run_dir
from trainer.run.queue import QueueError, dispatch, enqueue, judge, read_queue
from trainer.run.state import StateFile
from trainer.run.status import state_label, status as run_status


def new_run(root: Path, name: str) -> Path:
    run_dir = create_run_dir(root, name)
    (run_dir / "config.yaml").write_text("name: " + name + "\n")
    return run_dir


def names(root: Path) -> list[str]:
    return [Path(e.run).name for e in read_queue(root).entries]


class Box:
    """dispatch() with a fake launch: the runs it 'starts' become live until `end` is called."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.live, self.started = root, set(), []
        monkeypatch.setattr(queue, "busy_slots", lambda runs: len(self.live))
        # this test process plays the daemon of every run it 'starts'
        monkeypatch.setattr("trainer.run.state.is_longhaul_process", lambda pid: pid == os.getpid())

    def launch(self, run_dir: Path) -> int:
        StateFile(run_dir).update(state="starting", pid=os.getpid())
        self.live.add(run_dir.name)
        self.started.append(run_dir.name)
        return 1

    def dispatch(self) -> list:
        return dispatch(self.root, lambda: [], self.launch)

    def end(self, name: str, state: str = "finished") -> None:
        self.live.discard(name)
        StateFile(self.root / name).update(state=state)


# ---------------------------------------------------------------------- order and slots
def test_runs_start_in_order_one_slot_at_a_time(tmp_path, monkeypatch):
    box = Box(tmp_path, monkeypatch)
    for name in ("a", "b", "c"):
        assert enqueue(tmp_path, new_run(tmp_path, name)) == len(box.started) + len(names(tmp_path))
    assert run_status(tmp_path / "b")["state"] == "queued" and state_label(run_status(tmp_path / "b")) == "queued #2"
    box.dispatch()
    assert box.started == ["a"] and names(tmp_path) == ["b", "c"]
    box.dispatch()
    assert box.started == ["a"]  # the slot is taken
    box.end("a")
    box.dispatch()
    assert box.started == ["a", "b"]
    queue.set_slots(tmp_path, 2)
    box.dispatch()
    assert box.started == ["a", "b", "c"] and names(tmp_path) == []
    with pytest.raises(QueueError, match="at least 1"):
        queue.set_slots(tmp_path, 0)


def test_a_run_waits_for_its_dependency_and_is_held_when_it_failed(tmp_path, monkeypatch):
    box = Box(tmp_path, monkeypatch)
    first, second = new_run(tmp_path, "first"), new_run(tmp_path, "second")
    enqueue(tmp_path, first)
    enqueue(tmp_path, second, after=[str(first)])
    enqueue(tmp_path, new_run(tmp_path, "free"))
    queue.set_slots(tmp_path, 3)
    box.dispatch()
    assert box.started == ["first", "free"]  # second waits; free does not wait behind it
    assert run_status(second)["queue"]["waiting"] == "waits for first (starting)"
    box.end("first", "failed")
    box.dispatch()
    assert box.started == ["first", "free"]
    info = run_status(second)
    assert state_label(info) == "held" and "first, which is failed" in info["queue"]["held"]
    box.end("first", "finished")  # resumed by hand to its end: released
    box.dispatch()
    assert box.started[-1] == "second"


def test_move_pause_and_remove(tmp_path, monkeypatch):
    box = Box(tmp_path, monkeypatch)
    for name in ("a", "b", "c"):
        enqueue(tmp_path, new_run(tmp_path, name))
    assert queue.move(tmp_path, tmp_path / "c", 1) == 1 and names(tmp_path) == ["c", "a", "b"]
    assert queue.move(tmp_path, tmp_path / "c", 99) == 3 and names(tmp_path) == ["a", "b", "c"]
    queue.set_paused(tmp_path, True, tmp_path / "a")
    assert judge(read_queue(tmp_path).entries[0]).waiting == "paused"
    box.dispatch()
    assert box.started == ["b"]  # a paused entry is passed over
    queue.remove(tmp_path, tmp_path / "c")
    assert not (tmp_path / "c").exists() and names(tmp_path) == ["a"]  # never trained: nothing left
    with pytest.raises(QueueError, match="b is starting, not in the queue: stop it first"):
        queue.remove(tmp_path, tmp_path / "b")
    box.end("b")
    queue.set_paused(tmp_path, True)  # the whole queue
    queue.set_paused(tmp_path, False, tmp_path / "a")
    box.dispatch()
    assert box.started == ["b"]
    queue.set_paused(tmp_path, False)
    box.dispatch()
    assert box.started == ["b", "a"]


# ---------------------------------------------------------------------- the file
def test_a_damaged_queue_file_is_rebuilt_with_its_order_pauses_and_slots(tmp_path):
    dirs = [new_run(tmp_path, name) for name in ("a", "b", "c")]
    for run_dir in dirs:
        enqueue(tmp_path, run_dir, after=[str(dirs[0])] if run_dir.name == "c" else [])
    queue.move(tmp_path, dirs[2], 1)
    queue.set_paused(tmp_path, True, dirs[1])
    queue.set_slots(tmp_path, 2)
    queue.set_paused(tmp_path, True)
    (tmp_path / "queue.json").write_text('{"entries": [{"run": ')  # torn
    rebuilt = read_queue(tmp_path)
    assert "damaged" in rebuilt.rebuilt["problem"] and rebuilt.rebuilt["damaged_copy"] is None
    assert [(Path(e.run).name, e.paused) for e in rebuilt.entries] == [("c", False), ("a", False), ("b", True)]
    assert rebuilt.entries[0].after == [str(dirs[0])] and (rebuilt.slots, rebuilt.paused) == (2, True)
    enqueue(tmp_path, new_run(tmp_path, "d"))  # the first change writes the rebuilt queue, keeps the damaged file
    kept = [str(p) for p in tmp_path.glob("queue.json.damaged-*")]
    assert len(kept) == 1 and read_queue(tmp_path).rebuilt["damaged_copy"] == kept[0]
    assert names(tmp_path) == ["c", "a", "b", "d"]
    (tmp_path / "queue.json").unlink()  # deleted: queued runs still say where they belong
    again = read_queue(tmp_path)
    assert [Path(e.run).name for e in again.entries] == ["c", "a", "b", "d"] and "missing" in again.rebuilt["problem"]
    assert (again.slots, again.paused) == (2, True)


def test_longhaul_queue_says_it_was_rebuilt_until_the_next_queue_command(tmp_path, capsys):
    from trainer.cli import main

    def longhaul_queue(*args) -> str:
        capsys.readouterr()
        assert main(["--root", str(tmp_path), "queue", *args]) == 0
        return capsys.readouterr().out

    for name in ("a", "b"):
        enqueue(tmp_path, new_run(tmp_path, name))
    queue.set_paused(tmp_path, True)  # nothing starts in this test
    (tmp_path / "queue.json").write_text("[")
    shown = longhaul_queue()
    kept = [str(p) for p in tmp_path.glob("queue.json.damaged-*")]
    assert len(kept) == 1 and f"the damaged file is kept as {kept[0]}" in shown  # set aside by the first look
    assert "queue.json was damaged" in shown and "rebuilt at 20" in shown and "paused" in shown.splitlines()[0]
    again = json.loads(longhaul_queue("--json"))
    assert again["rebuilt"]["damaged_copy"] == kept[0] and [r["name"] for r in again["runs"]] == ["a", "b"]
    assert "note:" in longhaul_queue("move", "b", "1")  # said once more, then it has been seen
    assert "note:" not in longhaul_queue() and json.loads(longhaul_queue("--json"))["rebuilt"] is None


def _enqueue_many(root: str, prefix: str, count: int) -> None:
    for i in range(count):
        run_dir = create_run_dir(Path(root), f"{prefix}{i}")
        (run_dir / "config.yaml").write_text("name: x\n")
        enqueue(Path(root), run_dir)


def test_two_processes_queueing_at_the_same_instant_keep_every_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_enqueue_many, args=(str(tmp_path), prefix, 15)) for prefix in ("x", "y")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(names(tmp_path)) == sorted(f"{p}{i}" for p in "xy" for i in range(15))


# ---------------------------------------------------------------------- the CLI
@pytest.fixture
def tiny(tmp_path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**DAEMON_TINY, "phases": [{"name": "train", "epochs": 6}]}))
    return config


def test_after_an_unknown_run_is_an_error_and_leaves_nothing(tmp_path, runtime_dir, tiny):
    env = cli_env(tmp_path / "runs", runtime_dir)
    result = cli(env, "start", str(tiny), "--name", "x", "--after", "nosuchrun", check=False)
    assert result.returncode != 0 and "nosuchrun" in result.stderr
    assert not (tmp_path / "runs" / "x").exists()
    resumed = cli(env, "queue", "remove", "nosuchrun", check=False)
    assert resumed.returncode != 0 and "nosuchrun" in resumed.stderr


def busy_run(root: Path, pid: int, eta: float) -> Path:
    """A run training now (its state names a live longhaul-looking process): it takes the slot."""
    run_dir = new_run(root, "busy")
    StateFile(run_dir).update(state="running", pid=pid, eta=eta)
    return run_dir


def queue_table(env) -> dict:
    """`longhaul queue`'s rows by run name: [position, status, STARTS, TAKES, WHY]."""
    lines = cli(env, "queue").stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "RUN"])
    assert lines[header].split() == ["#", "RUN", "STATE", "STARTS", "TAKES", "WHY"]
    rows = {}
    for line in lines[header + 1:]:
        position, name, state, starts, takes, *why = line.split()
        rows[name] = [int(position), state, starts, takes, " ".join(why)]
    return rows


def test_the_queue_command_shows_moves_pauses_sets_slots_and_removes(tmp_path, runtime_dir, tiny, live_process):
    root = tmp_path / "runs"
    env = cli_env(root, runtime_dir)
    busy_run(root, live_process, eta=600.0)  # the one slot is busy for 10 minutes: nothing starts
    assert "position 1: waits for a free slot" in cli(env, "start", str(tiny), "--name", "a", "--queue").stdout
    cli(env, "start", str(tiny), "--name", "b", "--queue")
    assert "position 3: waits for a (queued)" in cli(env, "start", str(tiny), "--name", "c", "--after", "a").stdout
    trained_run(root, "done", yaml.safe_load((root / "a" / "config.yaml").read_text()), n_train=32, wall=1200.0)
    assert f"queue of {root}: 1 slot(s)" in cli(env, "queue").stdout
    assert queue_table(env) == {"a": [1, "queued", "10m00s", "20m00s", ""], "b": [2, "queued", "30m00s", "20m00s", ""],
                                "c": [3, "queued", "50m00s", "20m00s", "waits for a (queued)"]}
    assert "c is now at position 1" in cli(env, "queue", "move", "c", "1").stdout
    # first in line, c still waits for a: it is timed after a, and b after c
    assert queue_table(env) == {"c": [1, "queued", "30m00s", "20m00s", "waits for a (queued)"],
                                "a": [2, "queued", "10m00s", "20m00s", ""], "b": [3, "queued", "50m00s", "20m00s", ""]}
    assert "paused b" in cli(env, "queue", "pause", "b").stdout
    assert queue_table(env)["b"] == [3, "paused", "-", "20m00s", "paused"]
    assert "paused the queue" in cli(env, "queue", "pause").stdout
    cli(env, "queue", "slots", "3")  # a paused queue starts nothing, whatever its slots
    assert "3 slot(s), paused" in cli(env, "queue").stdout
    assert {name: row[2] for name, row in queue_table(env).items()} == {"c": "-", "a": "-", "b": "-"}
    shown = json.loads(cli(env, "queue", "--json").stdout)
    assert (shown["slots"], shown["paused"], [r["name"] for r in shown["runs"]]) == (3, True, ["c", "a", "b"])
    cli(env, "queue", "slots", "1")
    assert "resumed b" in cli(env, "queue", "resume", "b").stdout
    assert "resumed the queue" in cli(env, "queue", "resume").stdout
    assert "removed b from the queue" in cli(env, "queue", "remove", "b").stdout
    assert not (root / "b").exists()
    assert queue_table(env) == {"c": [1, "queued", "30m00s", "20m00s", "waits for a (queued)"],
                                "a": [2, "queued", "10m00s", "20m00s", ""]}
    assert [status(env, name)["state"] for name in ("a", "c")] == ["queued", "queued"]  # nothing started


def kill_everything(env, name: str) -> None:
    """A power cut for one run: its daemon and trainer (one process group) SIGKILLed."""
    pid = status(env, name)["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: status(env, name)["state"] == "interrupted", 30, f"{name} interrupted")


def first_event_time(run_dir: Path) -> float:
    return read_events(run_dir)[0]["time"]


def final_event_time(run_dir: Path) -> float:
    return [e for e in read_events(run_dir) if e["kind"] == "state"][-1]["time"]


def test_queued_real_runs_go_on_in_order_after_a_reboot(tmp_path, runtime_dir, tiny):
    env = cli_env(tmp_path / "runs", runtime_dir)
    root = tmp_path / "runs"
    assert "a slot was free, it started" in cli(env, "start", str(tiny), "--name", "a", "--queue").stdout
    assert "position 1" in cli(env, "start", str(tiny), "--name", "b", "--queue").stdout
    cli(env, "start", str(tiny), "--name", "c", "--after", "b", "--set", "seed=1")
    # first in line but waiting for b: only its dependency keeps it from starting before b
    assert "c is now at position 1" in cli(env, "queue", "move", "c", "1").stdout
    listed = {r["name"]: r for r in json.loads(cli(env, "ls", "--json").stdout)}
    assert listed["c"]["state"] == "queued" and listed["c"]["queue"]["position"] == 1
    assert "queued #2" in cli(env, "ls").stdout
    shown = json.loads(cli(env, "queue", "--json").stdout)
    assert [r["name"] for r in shown["runs"]] == ["c", "b"] and shown["runs"][0]["after"] == ["b"]
    wait_for(lambda: status(env, "a")["state"] == "running", 120, "a running")
    kill_everything(env, "a")  # the box loses power with a training and b, c queued
    assert status(env, "b")["state"] == "queued"
    out = cli(env, "resume", "--all").stdout
    assert "resumed a" in out
    for name in ("a", "b", "c"):
        wait_for(lambda: status(env, name)["state"] == "finished", 240, f"{name} to finish")
    # one slot: b started after a ended, c after b (its dependency survived the reboot); nothing
    # ran beside another
    assert final_event_time(root / "a") <= first_event_time(root / "b")
    assert final_event_time(root / "b") <= first_event_time(root / "c")
    assert json.loads(cli(env, "queue", "--json").stdout)["runs"] == []


def test_resume_all_moves_on_a_queue_of_another_runs_root(tmp_path, runtime_dir, tiny, live_process):
    """A run queued with --root X is in the user's registry; at boot it must not wait for a
    command in X."""
    root, other = tmp_path / "runs", tmp_path / "other"
    env = cli_env(root, runtime_dir)
    busy = busy_run(root, live_process, eta=600.0)  # the box's one slot is busy: x waits
    registry.register(busy)  # as `start` does: a run of the box, whichever root it is under
    assert "waits for a free slot" in cli(env, "--root", str(other), "start", str(tiny), "--name", "x",
                                          "--queue").stdout
    StateFile(busy).update(state="finished")  # the slot is free, and nothing moved the queue of X
    out = cli(env, "resume", "--all").stdout
    assert "started queued run x" in out
    wait_for(lambda: status(env, str(other / "x"))["state"] == "finished", 120, "x to finish")


# ---------------------------------------------------------------------- how long, from when
def trained_run(root: Path, name: str, config: dict, n_train: int, wall: float, state: str = "finished",
                eta=None, waited: float = 0.0) -> Path:
    """A run directory that trained: config, plan.json with its training examples, its wall time;
    `waited`: seconds it was queued before it started (0: a run made before started_at, without one)."""
    run_dir = create_run_dir(root, name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "plan.json").write_text(json.dumps({"plan": {}, "config": {"n_train": n_train}}))
    started = (run_dir / "config.yaml").stat().st_mtime + waited
    StateFile(run_dir).update(state=state, eta=eta, **({"started_at": started} if waited else {}))
    data = json.loads((run_dir / "state.json").read_text())
    data["updated"] = started + wall  # update() stamps the time of the write
    (run_dir / "state.json").write_text(json.dumps(data))
    return run_dir


def test_queue_eta_scales_a_similar_finished_run_and_adds_up_the_queue(tmp_path, monkeypatch):
    from trainer.run.queue_eta import queue_etas

    base = {"data": {"source": "synthetic"}, "model": {"name": "m"}, "features": {"kind": "mel"},
            "optim": {"batch_size": 8}, "phases": [{"name": "p", "epochs": 10}]}
    trained_run(tmp_path, "done", base, n_train=100, wall=1000.0)  # 1000 samples in 1000 s
    monkeypatch.setattr("trainer.run.state.is_longhaul_process", lambda pid: True)
    trained_run(tmp_path, "live", {**base, "model": {"name": "other"}}, n_train=100, wall=5.0, state="running",
                eta=300.0)
    twice = new_run(tmp_path, "twice")
    (twice / "config.yaml").write_text(yaml.safe_dump({**base, "phases": [{"name": "p", "epochs": 20}]}))
    unknown = new_run(tmp_path, "unknown")
    (unknown / "config.yaml").write_text(yaml.safe_dump({**base, "model": {"name": "never-trained"}}))
    after = new_run(tmp_path, "after")
    (after / "config.yaml").write_text(yaml.safe_dump(base))
    for run_dir in (twice, unknown, after):
        enqueue(tmp_path, run_dir)
    etas = queue_etas(read_queue(tmp_path))
    assert etas[str(twice)] == {"takes": pytest.approx(2000.0), "starts_in": pytest.approx(300.0)}
    assert etas[str(unknown)] == {"takes": None, "starts_in": pytest.approx(2300.0)}
    assert etas[str(after)] == {"takes": pytest.approx(1000.0), "starts_in": None}  # behind an unknown length


def test_a_fold_of_a_cross_validation_gets_its_eta_from_another_fold(tmp_path):
    from trainer.run.queue_eta import queue_etas

    base = {"data": {"source": "synthetic"}, "model": {"name": "m"}, "features": {"kind": "mel"},
            "optim": {"batch_size": 8}, "phases": [{"name": "p", "epochs": 10}]}
    fold = lambda index, k=3: {**base, "data": {"source": "synthetic", "folds": {"k": k, "index": index}}}
    trained_run(tmp_path, "cv-fold1", fold(0), n_train=200, wall=600.0)
    second = new_run(tmp_path, "cv-fold2")
    (second / "config.yaml").write_text(yaml.safe_dump(fold(1)))
    # another cross-validation of the same data: its folds train on 4/5 of the pool, these on 2/3
    other = new_run(tmp_path, "cv5-fold1")
    (other / "config.yaml").write_text(yaml.safe_dump(fold(0, k=5)))
    for run_dir in (second, other):
        enqueue(tmp_path, run_dir)
    etas = queue_etas(read_queue(tmp_path))
    assert etas[str(second)]["takes"] == pytest.approx(600.0)
    assert etas[str(other)]["takes"] == pytest.approx(600.0 * (4 / 5) / (2 / 3))


BASE = {"data": {"source": "synthetic"}, "model": {"name": "m"}, "features": {"kind": "mel"},
        "optim": {"batch_size": 8}, "phases": [{"name": "p", "epochs": 10}]}


def test_a_run_that_waited_in_the_queue_counts_its_run_time_not_its_wait(tmp_path):
    from trainer.run.queue_eta import queue_etas

    done = trained_run(tmp_path, "fold3", BASE, n_train=100, wall=1000.0, waited=2000.0)
    queued_at = (done / "config.yaml").stat().st_mtime
    assert run_status(done)["started"] == pytest.approx(queued_at + 2000.0)  # ls and status too
    later = new_run(tmp_path, "later")
    (later / "config.yaml").write_text(yaml.safe_dump(BASE))
    enqueue(tmp_path, later)
    assert queue_etas(read_queue(tmp_path))[str(later)]["takes"] == pytest.approx(1000.0)


def test_a_foreground_run_records_when_it_first_started_and_keeps_it(tmp_path):
    from trainer.console import ConsolePublisher

    run_dir = new_run(tmp_path, "fg")
    ConsolePublisher(run_dir, "fg", quiet=True).started()
    first = json.loads((run_dir / "state.json").read_text())["started_at"]
    (run_dir / "history.msgpack").write_bytes(b"")  # it trained
    ConsolePublisher(run_dir, "fg", quiet=True).started()  # `train --run-dir` again: a resume
    assert json.loads((run_dir / "state.json").read_text())["started_at"] == first
    old = new_run(tmp_path, "old")  # trained before the field: config.yaml's time stands
    (old / "history.msgpack").write_bytes(b"")
    ConsolePublisher(old, "old", quiet=True).started()
    assert "started_at" not in json.loads((old / "state.json").read_text())


# ---------------------------------------------------------------------- a run's end moves the queue
def test_a_daemon_that_raises_still_starts_the_next_queued_run(tmp_path, monkeypatch):
    from trainer.daemon import launch

    run_dir = new_run(tmp_path, "crashes")
    StateFile(run_dir).update(state="running", pid=os.getpid())  # what a daemon that raised leaves
    enqueue(tmp_path, new_run(tmp_path, "next"))
    monkeypatch.setattr("trainer.run.state.is_longhaul_process", lambda pid: pid == os.getpid())

    class Raising:
        def __init__(self, *args):
            pass

        async def run(self, install_signals=False):
            raise RuntimeError("a bug in the daemon")

    launched = []
    monkeypatch.setattr(launch, "Daemon", Raising)
    monkeypatch.setattr(launch, "launch_daemon", lambda run, *a, **k: launched.append(run.name) or 1)
    monkeypatch.setattr("signal.signal", lambda *args: None)
    with pytest.raises(RuntimeError, match="a bug"):
        launch.main([str(run_dir)])
    assert launched == ["next"]  # its own slot counted free: its process is on its way out


def test_a_queued_run_starts_when_a_foreground_train_ends(tmp_path, monkeypatch):
    import sys
    import types

    from tests.run_configs import MFCC_TINY
    from trainer.cli import main
    from trainer.daemon import launch

    root = tmp_path / "runs"
    enqueue(root, new_run(root, "waiting"))
    launched = []
    monkeypatch.setattr(launch, "launch_daemon", lambda run, *a, **k: launched.append(run.name) or 1)
    monkeypatch.setattr("trainer.run.state.is_longhaul_process", lambda pid: pid == os.getpid())

    class Trainer:  # the engine, as far as the queue sees it: a live run, then a finished one
        def __init__(self, cfg, run_dir, *args, **kwargs):
            self.run_dir = run_dir

        def run(self):
            launch.start_queued(root)
            assert launched == [], "a foreground train takes a slot"
            StateFile(self.run_dir).update(state="finished")
            return "finished"

    monkeypatch.setitem(sys.modules, "trainer.engine", types.SimpleNamespace(Trainer=Trainer))
    monkeypatch.setattr("signal.signal", lambda *args: None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(MFCC_TINY))
    assert main(["--root", str(root), "train", str(config), "--name", "fg", "--quiet"]) == 0
    assert launched == ["waiting"]


def test_a_run_that_waited_records_when_it_started_and_its_end_starts_the_next(tmp_path, runtime_dir):
    from tests.daemon_helpers import FAKE_WORKER, FAST_SETTINGS, make_run
    from trainer.daemon.launch import start_queued

    first, second = (make_run(tmp_path, name, fake={"steps": 20}) for name in ("first", "second"))
    for run_dir in (first, second):
        enqueue(tmp_path, run_dir)
    assert [run for run, error in start_queued(tmp_path, FAKE_WORKER, FAST_SETTINGS) if not error] == [first]
    for run_dir in (first, second):  # second is started by first's daemon as it ends
        wait_for(lambda: run_status(run_dir)["state"] == "finished", 60, f"{run_dir.name} finished")
    waited = json.loads((second / "state.json").read_text())
    assert waited["started_at"] >= final_event_time(first) > waited["queued_at"]
    assert run_status(second)["started"] == waited["started_at"]
