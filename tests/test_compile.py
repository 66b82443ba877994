"""torch.compile (trainer/compiling.py): the auto decision from planned FLOPs, the on-disk cache,
one compile per phase, and a compiled run killed with SIGKILL that resumes bit-identical."""
import json
import os
import shutil

import pytest
import torch
import torch._inductor.exc
import yaml

from tests.daemon_helpers import read_events, wait_for
from tests.longhaul_cli import assert_bit_identical, cli, cli_env, cut_power_and_resume, logged_steps, status
from tests.run_configs import POWERCUT, changed, run_config

from trainer import compiling, models
from trainer.config import ConfigError, load_config
from trainer.engine import NullPublisher, Trainer
from trainer.schedule import Plan

# The tests that really compile: inductor builds C++ kernels (torch.compile fails without a compiler)
needs_cxx = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                               reason="torch.compile's CPU kernels need a C++ compiler (apt-get install g++)")

# POWERCUT with a frozen-backbone phase before a full one: the second phase must recompile once.
FREEZE_THEN_TRAIN = changed(POWERCUT, phases=[{"name": "head", "epochs": 2, "trainable": 0.0},
                                              {"name": "full", "epochs": 2, "trainable": 1.0, "lr_mult": 0.5}],
                            threads_follow_load=False, **{"model.compile": True})


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles as a new process would: dynamo keeps compiled code per forward's code
    object, so a later test's model of the same class would reuse an earlier one's graphs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Events(NullPublisher):
    def __init__(self):
        self.seen = []

    def event(self, kind, level, message, **data):
        self.seen.append({"kind": kind, "message": message, "data": data})

    def of(self, kind):
        return [e for e in self.seen if e["kind"] == kind]


def tiny_model_and_plan(**changes):
    cfg = run_config(POWERCUT, **changes)
    model = models.build_model(cfg, 3, 1, (16, 32))
    return cfg, model, Plan.from_config(cfg, 144)


def test_planned_flop_weighs_each_phase_by_its_trainable_part():
    cfg, model, plan = tiny_model_and_plan(phases=[{"name": "head", "epochs": 1, "trainable": 0.0},
                                                   {"name": "full", "epochs": 2, "trainable": 1.0}])
    forward = compiling.forward_flop_per_sample(model, (16, 32))
    assert forward > 0
    head, full = plan.phases
    # a frozen backbone costs one forward per sample, a full backward two more
    expected = head.steps * head.samples_per_step * forward * 1 + full.steps * full.samples_per_step * forward * 3
    assert compiling.planned_train_flop(plan, forward) == pytest.approx(expected)


def test_counting_flops_changes_nothing_the_run_depends_on():
    cfg, model, plan = tiny_model_and_plan()
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    compiling.choose("auto", plan, model, (16, 32))
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_auto_compiles_long_runs_only_and_decides_the_same_every_time(monkeypatch):
    cfg, model, plan = tiny_model_and_plan()
    short = compiling.choose("auto", plan, model, (16, 32))
    assert short.mode == "eager" and "<" in short.reason and short.train_flop > 0
    monkeypatch.setattr(compiling, "AUTO_MIN_FLOP", short.train_flop)
    long = compiling.choose("auto", plan, model, (16, 32))
    assert long.mode == "measure" and ">=" in long.reason and long.train_flop == short.train_flop
    assert compiling.choose(True, plan, model, (16, 32)).mode == "compiled"
    off = compiling.choose(False, plan, model, (16, 32))
    assert off.mode == "eager" and off.train_flop == 0.0


def test_the_quickstart_stays_eager_and_a_long_preset_measures():
    """The threshold against the shipped configs: the quickstart (minutes) is not worth a trial,
    the B2 audio preset on 10,000 recordings (days) is."""
    quick = load_config("configs/quickstart.yaml")
    model = models.build_model(quick, 8, 1, (1, 64, 63))
    assert compiling.choose(quick.model.compile, Plan.from_config(quick, 2400), model, (1, 64, 63)).mode == "eager"
    b2 = load_config("configs/audio_efficientnet_b2_quality.yaml", check_paths=False)
    model = models.build_model(b2, 20, 1, (1, 160, 641))
    assert compiling.choose(b2.model.compile, Plan.from_config(b2, 10_000), model, (1, 160, 641)).mode == "measure"


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (True, True), ("false", False), ("yes", True)])
def test_config_takes_true_false_or_auto(tmp_path, value, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(changed(POWERCUT, **{"model.compile": value})))
    assert load_config(path).model.compile == expected


def test_config_rejects_another_compile_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(changed(POWERCUT, **{"model.compile": "sometimes"})))
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(path)


def test_cache_dir_is_the_users_choice_or_one_that_survives_a_reboot(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing timm sets
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.cache_dir() == tmp_path / "xdg" / "longhaul" / "inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compiling.cache_dir() == compiling.Path.home() / ".cache" / "longhaul" / "inductor"


def test_a_trial_times_each_kind_after_its_warm_up_and_never_a_compiling_step(monkeypatch):
    monkeypatch.setattr(compiling, "TRIAL_WARMUP", 1)
    monkeypatch.setattr(compiling, "TRIAL_STEPS", 3)
    trial = compiling.CompileTrial(phase=0, threads=2)
    for seconds in (5.0, 1.0, 1.2, 0.8):  # warm-up, then three timed
        assert not trial.compiled_next()
        trial.record(seconds, compiled_now=False)
    assert trial.compiled_next()
    trial.record(90.0, compiled_now=True)  # the compile: not a step time
    trial.record(3.0, compiled_now=False)  # warm-up
    for seconds in (0.9, 0.95):
        trial.record(seconds, compiled_now=False)
        assert not trial.done
    trial.record(0.85, compiled_now=False)
    assert trial.done and trial.verdict() == (True, 1.0, 0.9)


def test_compiled_must_be_clearly_faster_to_be_chosen(monkeypatch):
    monkeypatch.setattr(compiling, "TRIAL_WARMUP", 0)
    monkeypatch.setattr(compiling, "TRIAL_STEPS", 1)
    for compiled_s, chosen in ((1.0 / compiling.MIN_GAIN, True), (0.97, False), (1.2, False)):
        trial = compiling.CompileTrial(phase=0, threads=1)
        trial.record(1.0, False)
        trial.record(compiled_s, False)
        assert trial.verdict()[0] is chosen, compiled_s


@needs_cxx
def test_auto_on_a_long_run_measures_each_phase_and_a_resume_keeps_the_decisions(tmp_path, monkeypatch):
    import queue

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(compiling, "AUTO_MIN_FLOP", 0.0)
    monkeypatch.setattr(compiling, "TRIAL_WARMUP", 1)
    monkeypatch.setattr(compiling, "TRIAL_STEPS", 2)
    cfg = run_config(FREEZE_THEN_TRAIN, **{"model.compile": "auto"})
    requests = queue.SimpleQueue()

    class StopAfterPhase0(Events):
        def event(self, kind, level, message, **data):
            super().event(kind, level, message, **data)
            if kind == "compile" and data.get("what") == "decided" and data["phase"] == 0:
                requests.put((1, "stop"))

    first = StopAfterPhase0()
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", first, controls=requests)
    assert trainer.run() == "stopped"
    assert [e["data"]["what"] for e in first.of("compile")][:1] == ["trial"]
    assert set(trainer.state.compile_decisions) == {0}
    decided = [e["data"] for e in first.of("compile") if e["data"]["what"] == "decided"]
    assert decided[0]["compiled"] is trainer.state.compile_decisions[0]
    assert decided[0]["eager_step_s"] > 0 and decided[0]["compiled_step_s"] > 0

    second = Events()
    resumed = Trainer(cfg, tmp_path / "run", second)
    assert resumed.run() == "finished"
    trials = [e["data"]["phase"] for e in second.of("compile") if e["data"]["what"] == "trial"]
    assert trials == [1]  # phase 0 was decided before the stop: the checkpoint kept it
    assert resumed.state.compile_decisions[0] == trainer.state.compile_decisions[0]
    assert set(resumed.state.compile_decisions) == {0, 1}


def _failing_compile(model, threads, follows_load):
    def forward(x):  # what inductor raises without a working C++ compiler
        raise torch._inductor.exc.InductorError(RuntimeError("CppCompileError: C++ compile error\nmore lines"), None)
    return forward


def test_auto_trains_eager_when_torch_compile_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "AUTO_MIN_FLOP", 0.0)
    monkeypatch.setattr(compiling, "compile_model", _failing_compile)
    events = Events()
    trainer = Trainer(run_config(FREEZE_THEN_TRAIN, max_steps=30, **{"model.compile": "auto"}), tmp_path, events)
    assert trainer.run() == "finished"
    alerts = [e for e in events.of("alert") if e["data"].get("what") == "compile_failed"]
    assert len(alerts) == 1 and "CppCompileError" in alerts[0]["message"] and "more lines" not in alerts[0]["message"]
    assert trainer.training_forward.choice.mode == "eager" and trainer.state.compile_decisions == {}


def test_compile_true_that_cannot_compile_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(compiling, "compile_model", _failing_compile)
    trainer = Trainer(run_config(FREEZE_THEN_TRAIN, max_steps=3), tmp_path)
    with pytest.raises(ConfigError, match="model.compile: true, but torch.compile failed: InductorError"):
        trainer.run()


def test_an_error_of_a_compiled_step_that_is_not_a_compile_failure_stays_the_runs_own(tmp_path, monkeypatch):
    """Only compile failures fall back to eager (auto) or stop as a config error (true): any other
    error of a compiled step is an ordinary crash, which the daemon's restart policy handles."""
    def broken(model, threads, follows_load):
        def forward(x):
            raise MemoryError("out of memory in a compiled step")
        return forward

    monkeypatch.setattr(compiling, "compile_model", broken)
    trainer = Trainer(run_config(FREEZE_THEN_TRAIN, max_steps=3), tmp_path)
    with pytest.raises(MemoryError, match="out of memory in a compiled step"):
        trainer.run()


def test_an_eager_run_records_why_it_is_not_compiled(tmp_path):
    trainer = Trainer(run_config(POWERCUT, max_steps=2), tmp_path)
    assert trainer.run() == "finished"
    recorded = json.loads((tmp_path / "plan.json").read_text())["config"]["compile"]
    assert recorded["mode"] == "eager" and recorded["setting"] == "auto"
    assert recorded["reason"].startswith("auto: planned training") and recorded["train_flop"] > 0
    assert trainer.training_forward.compiled is None


@needs_cxx
def test_a_frozen_phase_and_a_full_one_compile_once_each(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    events = Events()
    (tmp_path / "run").mkdir()
    trainer = Trainer(run_config(FREEZE_THEN_TRAIN), tmp_path / "run", events)
    trainer.setup()
    backbone = trainer.model.features[1].weight
    initial = backbone.detach().clone()
    assert trainer.train() == "finished"
    assert not torch.equal(backbone, initial), "the unfrozen phase did not train the backbone"
    steps_per_phase = [p.steps for p in trainer.plan.phases]
    assert steps_per_phase[0] > 2 and steps_per_phase[1] > 2
    compiles = [e for e in events.of("compile") if e["data"]["what"] == "compiled"]
    assert [c["data"]["phase"] for c in compiles] == [0, 1], [c["message"] for c in compiles]
    assert [c["data"]["step"] for c in compiles] == [0, steps_per_phase[0]]
    assert all(c["data"]["graphs"] >= 1 for c in compiles)
    assert [e["data"]["stage"] for e in events.of("setup")][-1] == "compile"
    # the minutes a compile takes are training time but not a measure of the step time
    assert trainer.eta.steps == {0: steps_per_phase[0] - 1, 1: steps_per_phase[1] - 1}
    assert list((tmp_path / "inductor").iterdir()), "nothing was cached on disk"


@pytest.mark.slow
@needs_cxx
def test_a_compiled_run_killed_and_resumed_ends_bit_identical_from_the_cache(tmp_path, runtime_dir):
    """The reference run compiles cold into the cache; the daemon's run is killed (daemon and
    trainer, as by a power cut) twice, and every resumed trainer compiles from the cache."""
    cache = tmp_path / "inductor"
    env = cli_env(tmp_path / "runs", runtime_dir, TORCHINDUCTOR_CACHE_DIR=str(cache))
    config = tmp_path / "powercut.yaml"
    raw = changed(FREEZE_THEN_TRAIN, phases=[{"name": "head", "epochs": 10, "trainable": 0.0},
                                             {"name": "full", "epochs": 30, "trainable": 1.0, "lr_mult": 0.5}])
    config.write_text(yaml.safe_dump(raw))
    cli(env, "train", str(config), "--run-dir", str(tmp_path / "reference"), "--quiet")

    cli(env, "start", str(config))
    run_dir = tmp_path / "runs" / "powercut"
    for kill, at_least in enumerate((20, 150)):  # once in the frozen phase, once in the full one
        wait_for(lambda: logged_steps(run_dir) >= at_least, 180, "training progress")
        cut_power_and_resume(env, "powercut", kill)
    wait_for(lambda: status(env, "powercut")["state"] == "finished", 300, "the run to finish")
    assert_bit_identical(run_dir, tmp_path / "reference")
    compiles = [e["data"] for e in read_events(run_dir) if e["kind"] == "compile" and e["data"]["what"] == "compiled"]
    assert len(compiles) >= 3, compiles  # the first start and two resumes, each compiling
    assert all(c["cache_hits"] > 0 and c["cache_misses"] == 0 for c in compiles), compiles
