"""Data-parallel training (trainer/distributed.py, trainer/daemon/group.py): 2 ranks x 1 thread
on this box over loopback, through the real CLI, daemon and torchrun's agent.

- the same global batch gives the same per-step losses as one process (a network without batch
  norm, dropout or mixup, whose result does not depend on how a batch is split: tolerance 1e-5);
- SIGKILL of the whole group (daemon, agent, ranks) at random instants, then `longhaul resume`:
  bit-identical to an uninterrupted 2-rank run (dropout, mixup and EMA on);
- SIGKILL of one rank: torchrun's agent restarts the group from the last checkpoint and the run
  finishes;
- the rank split of the sampler, the config's checks, the status and export contract."""
from __future__ import annotations

import json
import os
import random
import time

import pytest
import yaml

from tests.daemon_helpers import wait_for
from tests.longhaul_cli import assert_bit_identical, cli, cli_env, cut_power_and_resume, logged_steps, status
from tests.run_configs import POWERCUT, changed

# no batch norm (it normalises each rank's share), no dropout or mixup (drawn per rank): a run
# whose every step is the same function of the global batch however it is split
SPLIT_FREE = changed(POWERCUT, **{"name": "dp", "model": {"name": "mfcc_mlp", "drop_rate": 0.0,
                                                        "options": {"norm": False}},
                                  "augment": {"gain_db": 3.0}, "eval.ema.enabled": False})


def losses(run_dir) -> list[tuple[int, float]]:
    from trainer.history import read_history

    return [(r["step"], r["train_loss"]) for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"]


def finished(env, name: str, timeout: float = 240) -> dict:
    wait_for(lambda: status(env, name)["state"] in ("finished", "failed"), timeout, f"{name} to end")
    info = status(env, name)
    assert info["state"] == "finished", info
    return info


# ----------------------------------------------------------------------------- units
def test_each_rank_takes_its_equal_part_of_every_global_batch():
    from trainer.data.sampler import EpochSampler

    whole = [i for _, i in EpochSampler(40, seed=3, epoch=2, start=8, length=40)]
    parts = [[i for _, i in EpochSampler(40, seed=3, epoch=2, start=8, length=40, share=(r, 2, 8))] for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 16
    for batch in range(4):  # global micro-batch b is rank 0's 4 items, then rank 1's
        assert whole[batch * 8:(batch + 1) * 8] == parts[0][batch * 4:(batch + 1) * 4] + parts[1][batch * 4:(batch + 1) * 4]
    with pytest.raises(ValueError, match="equal part"):
        EpochSampler(40, seed=3, epoch=2, share=(0, 3, 8))


def test_a_batch_that_does_not_split_over_the_world_is_a_config_error():
    from trainer.config import ConfigError, build_config

    raw = changed(SPLIT_FREE, **{"distributed.procs_per_node": 3})
    with pytest.raises(ConfigError) as err:
        build_config(raw, "dp.yaml", __import__("pathlib").Path("."), check_paths=False, check_model=False)
    assert "optim.batch_size" in str(err.value) and "world size 3" in str(err.value)
    with pytest.raises(ConfigError, match="distributed.rdzv"):
        build_config(changed(SPLIT_FREE, **{"distributed.nodes": 2}), "dp.yaml", __import__("pathlib").Path("."),
                     check_paths=False, check_model=False)


def test_every_world_size_an_elastic_group_may_shrink_to_must_split_the_batch():
    from pathlib import Path

    from trainer.config import ConfigError, build_config

    # batch 8: 3 boxes x 2 = 6 does not divide it, 2 x 2 = 4 and 1 x 2 = 2 do
    raw = changed(SPLIT_FREE, **{"distributed": {"nodes": 3, "min_nodes": 1, "procs_per_node": 2, "rdzv": "a:1"}})
    with pytest.raises(ConfigError) as err:
        build_config(raw, "dp.yaml", Path("."), check_paths=False, check_model=False)
    assert "world size 6" in str(err.value) and "multiple of 12" in str(err.value)
    raw = changed(raw, **{"distributed.nodes": 2})
    assert build_config(raw, "dp.yaml", Path("."), check_paths=False, check_model=False).distributed.world_size == 4


def test_a_box_that_becomes_rank_0_without_the_runs_checkpoints_refuses_to_start_over(tmp_path):
    """Rank 0's box was lost; the box that is rank 0 now never held the checkpoints or the history,
    but its daemon saw the run reach step 40: starting over would silently lose the run."""
    from types import SimpleNamespace

    from trainer.checkpoint.errors import CheckpointError
    from trainer.resume import _check_box_held_the_run
    from trainer.run.rundir import RunDir
    from trainer.run.state import StateFile

    StateFile(tmp_path).write(step=40, state="running")
    trainer = SimpleNamespace(run_dir=tmp_path, files=RunDir(tmp_path), world=SimpleNamespace(hosts=["boxb"]))
    with pytest.raises(CheckpointError, match="step 40 with rank 0 on another box"):
        _check_box_held_the_run(trainer)
    RunDir(tmp_path).history.write_bytes(b"")  # this box was rank 0: its history is here
    _check_box_held_the_run(trainer)
    _check_box_held_the_run(SimpleNamespace(run_dir=tmp_path / "new", files=RunDir(tmp_path / "new"),
                                            world=trainer.world))  # a new run: nothing to lose


def test_torchrun_command_for_one_box_and_for_several():
    from trainer.config import DistributedConfig
    from trainer.daemon.group import torchrun_argv

    one = torchrun_argv(["python", "-m", "trainer.worker"], DistributedConfig(procs_per_node=2), "r")
    assert "--standalone" in one and one[-2:] == ["-m", "trainer.worker"]
    assert one[one.index("--nproc-per-node") + 1] == "2"
    many = torchrun_argv(["python", "-m", "trainer.worker"],
                         DistributedConfig(nodes=3, min_nodes=2, rdzv="10.0.0.1:29400", max_restarts=5), "run-a")
    assert many[many.index("--nnodes") + 1] == "2:3" and many[many.index("--rdzv-endpoint") + 1] == "10.0.0.1:29400"
    assert many[many.index("--rdzv-id") + 1] == "run-a" and many[many.index("--max-restarts") + 1] == "5"
    assert "--standalone" not in many


def test_train_in_the_foreground_refuses_a_group(tmp_path, runtime_dir):
    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump(changed(SPLIT_FREE, **{"distributed.procs_per_node": 2})))
    result = cli(env, "train", str(config), check=False)
    assert result.returncode != 0 and "longhaul start" in result.stderr and "distributed" in result.stderr


# ----------------------------------------------------------------------------- end to end
def test_two_ranks_train_step_for_step_like_one_process(tmp_path, runtime_dir):
    from trainer.history import read_history

    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump(SPLIT_FREE))
    cli(env, "train", str(config), "--run-dir", str(tmp_path / "one"), "--quiet")
    out = cli(env, "start", str(config), "--nodes", "1", "--procs-per-node", "2", "--name", "dp2").stdout
    assert "started dp2" in out
    info = finished(env, "dp2")
    assert info["world_size"] == 2
    one, two = losses(tmp_path / "one"), losses(tmp_path / "runs" / "dp2")
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == 108
    worst = max(abs(a - b) / max(abs(a), 1e-9) for (_, a), (_, b) in zip(one, two))
    assert worst < 1e-5, f"largest relative difference of a step's loss: {worst:.2e}"
    evals = [[r for r in read_history(d / "history.msgpack") if r["kind"] == "eval"]
             for d in (tmp_path / "one", tmp_path / "runs" / "dp2")]
    assert [r["step"] for r in evals[0]] == [r["step"] for r in evals[1]] and evals[0]
    for single, sharded in zip(*evals):  # each rank evaluated half of the examples; the gathered metrics
        assert single["val_accuracy"] == sharded["val_accuracy"]
        assert abs(single["val_loss"] - sharded["val_loss"]) < 1e-5 * abs(single["val_loss"])
    plan = json.loads((tmp_path / "runs" / "dp2" / "plan.json").read_text())
    assert plan["config"]["world_size"] == 2 and len(plan["config"]["hosts"]) == 2
    rows = [json.loads(line) for line in cli(env, "export", "dp2", "--format", "jsonl").stdout.splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [s for s, _ in two]


@pytest.mark.slow
def test_power_cuts_of_a_group_resume_bit_identical_to_an_uninterrupted_group(tmp_path, runtime_dir):
    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "powercut.yaml"
    config.write_text(yaml.safe_dump(changed(POWERCUT, phases=[{"name": "a", "epochs": 25},
                                                               {"name": "b", "epochs": 25, "lr_mult": 0.5}])))
    cli(env, "start", str(config), "--procs-per-node", "2", "--name", "reference")
    finished(env, "reference", 400)
    cli(env, "start", str(config), "--procs-per-node", "2", "--name", "cut")
    run_dir = tmp_path / "runs" / "cut"
    rng = random.Random(17)
    for kill in range(3):
        before = logged_steps(run_dir)
        wait_for(lambda: logged_steps(run_dir) >= before + rng.randint(5, 25), 180, "training progress")
        time.sleep(rng.uniform(0.0, 0.3))
        cut_power_and_resume(env, "cut", kill)  # the daemon and the agent; the ranks die with the agent
    finished(env, "cut", 400)
    assert_bit_identical(run_dir, tmp_path / "runs" / "reference")


@pytest.mark.slow
def test_a_killed_rank_is_restarted_by_the_agent_and_the_run_finishes(tmp_path, runtime_dir):
    import psutil

    env = cli_env(tmp_path / "runs", runtime_dir)
    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump(changed(SPLIT_FREE, phases=[{"name": "a", "epochs": 30}])))
    cli(env, "start", str(config), "--procs-per-node", "2", "--name", "rank")
    run_dir = tmp_path / "runs" / "rank"
    wait_for(lambda: logged_steps(run_dir) >= 30 and (run_dir / "ckpt").is_dir() and any((run_dir / "ckpt").iterdir()),
             120, "training and a checkpoint")
    agent = next(p for p in psutil.Process(status(env, "rank")["pid"]).children() if "torch.distributed.run" in
                 " ".join(p.cmdline()))
    wait_for(lambda: len(psutil.pids()) and any(p.environ().get("RANK") == "1" for p in psutil.process_iter()
                                                if p.pid != agent.pid and _under(p, agent.pid)), 30, "rank 1")
    rank1 = next(p for p in psutil.process_iter() if _under(p, agent.pid) and p.environ().get("RANK") == "1")
    rank1.kill()
    info = finished(env, "rank", 300)
    assert info["world_size"] == 2
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    restarts = [e for e in events if e["kind"] == "restart" and e["data"].get("agent")]
    # exactly one: a new generation that read the dead one's gloo addresses from the agent's store
    # failed to connect and took every restart the agent had (World._store)
    assert len(restarts) == 1, [e["message"] for e in events if e["level"] != "info"]
    assert not [e for e in events if e["kind"] == "restart" and not e["data"].get("agent")]
    resumes = [e for e in events if e["kind"] == "resume"]
    assert resumes and resumes[-1]["data"]["step"] > 0
    steps = [s for s, _ in losses(run_dir)]
    assert steps == list(range(1, steps[-1] + 1)), "the history has a gap or a repeat after the restart"


def _under(proc, ancestor: int) -> bool:
    try:
        return any(p.pid == ancestor for p in proc.parents())
    except Exception:
        return False


# ----------------------------------------------------------------------------- two boxes
def _start_on(host, config, name: str, port: int) -> None:
    host.cli("start", str(config), "--nodes", "2", "--min-nodes", "1", "--rdzv", f"10.231.7.1:{port}",
             "--local-addr", host.addr, "--interface", host.iface, "--name", name)


def _status(host, name: str) -> dict:
    return json.loads(host.cli("status", name, "--json").stdout)


def _events(run_dir) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_two_hosts_train_one_run_and_a_lost_link_restarts_the_group_elastically(tmp_path, two_hosts):
    """One rank on each of two network namespaces joined by a veth pair: the run trains with
    world size 2 (box a, whose address sorts first, is rank 0 and keeps the history and the
    checkpoints; box b shows the same progress and end). Then box b's link goes down: rank 0's
    collective times out (distributed.timeout_seconds), a node_lost alert, torchrun's agent on box
    a restarts the group, which goes on alone (min_nodes 1) from the last checkpoint, with a
    world_size warning, and finishes."""
    a, b = two_hosts
    port = 20000 + os.getpid() % 20000
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(changed(SPLIT_FREE, **{"name": "two", "distributed.timeout_seconds": 15})))
    for host in (a, b):
        _start_on(host, config, "two", port)
    for host in (a, b):
        wait_for(lambda: _status(host, "two")["state"] in ("finished", "failed"), 240, f"{host.ns} to finish")
        info = _status(host, "two")
        assert info["state"] == "finished" and info["world_size"] == 2 and info["step"] == 108, info
    assert logged_steps(a.run_dir("two")) == 108 and any((a.run_dir("two") / "ckpt").iterdir())
    assert not (b.run_dir("two") / "ckpt").exists() or not any((b.run_dir("two") / "ckpt").iterdir())
    plan_b = json.loads((b.run_dir("two") / "plan.json").read_text())  # box b's dashboard has the plan too
    assert plan_b["config"]["world_size"] == 2 and plan_b["plan"]["total_steps"] == 108

    config.write_text(yaml.safe_dump(changed(POWERCUT, **{"name": "lost", "phases": [{"name": "a", "epochs": 150}],
                                                          "distributed.timeout_seconds": 15})))
    for host in (a, b):
        _start_on(host, config, "lost", port + 1)
    wait_for(lambda: logged_steps(a.run_dir("lost")) >= 100, 180, "training on two boxes")
    assert _status(a, "lost")["world_size"] == 2
    b.link(up=False)
    wait_for(lambda: _status(a, "lost")["state"] in ("finished", "failed"), 400, "box a to finish alone")
    info = _status(a, "lost")
    assert info["state"] == "finished" and info["step"] == 1350 and info["world_size"] == 1, info
    events = _events(a.run_dir("lost"))
    whats = [e["data"].get("what") for e in events if e["kind"] == "alert"]
    assert "node_lost" in whats and "world_size" in whats, whats
    assert [e for e in events if e["kind"] == "restart" and e["data"].get("agent")]
    b.cli("stop", "lost", check=False)  # box b's agent waits for a rendezvous it cannot reach
    wait_for(lambda: _status(b, "lost")["state"] in ("stopped", "failed", "interrupted"), 60, "box b to stop")
