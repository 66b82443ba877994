"""EMA that is right from the first evaluation, evaluation of EMA and raw weights following the
better one, the ema_slow warning, eval.monitor checked against the class count, and a run that
never had a best checkpoint ending failed (issue 9, builds 1 and 3). Tiny in-process runs."""

import pytest
import torch
import yaml

from tests.run_configs import changed, run_config

from trainer import evaluation
from trainer.config import ConfigError, RunConfig, load_config
from trainer.engine import NullPublisher, Trainer
from trainer.history import read_history
from trainer.metrics import classification_metrics, monitor_metrics

# 4 well-separated synthetic classes, an MLP on MFCCs: 320 / 16 = 20 steps, one evaluation at
# step 20; the raw weights reach ~0.65 validation accuracy in those 20 steps (chance 0.25).
SMALL = {
    "name": "ema", "seed": 3, "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 4, "train_per_class": 80, "val_per_class": 10, "snr_db": 30.0}},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 20},
    "model": {"name": "mfcc_mlp", "drop_rate": 0.1},
    "optim": {"batch_size": 16, "lr": 0.01},
    "schedule": {"name": "constant"},
    "phases": [{"name": "train", "epochs": 1}],
    "eval": {"monitor": "val_accuracy", "ema": {"enabled": True, "decay": 0.999}},
    "checkpoint": {"interval_seconds": 600, "min_free_mb": 1},
}


def small_cfg(**overrides) -> RunConfig:
    return run_config(SMALL, **overrides)


class Events(NullPublisher):
    def __init__(self):
        self.events = []

    def event(self, kind, level, message, **data):
        self.events.append((kind, level, message, data))

    def alerts(self, what):
        return [(level, message, data) for kind, level, message, data in self.events
                if kind == "alert" and data.get("what") == what]


def run(tmp_path, **overrides):
    events = Events()
    tmp_path.mkdir(exist_ok=True)
    trainer = Trainer(small_cfg(**overrides), tmp_path, events)
    result = trainer.run()
    evals = [r for r in read_history(tmp_path / "history.msgpack") if r["kind"] == "eval"]
    return trainer, result, evals, events


def test_ema_with_warmup_tracks_the_model_from_the_first_evaluation(tmp_path):
    _, result, evals, _ = run(tmp_path / "warm", **{"eval.ema.warmup": True})
    assert result == "finished"
    first = evals[0]
    assert first["val_raw_accuracy"] >= 0.5  # the model learned (chance is 0.25)
    assert abs(first["val_ema_accuracy"] - first["val_raw_accuracy"]) <= 0.15

    # without warm-up a 0.999 EMA is still (almost) the model after its first step
    _, _, evals, _ = run(tmp_path / "cold", **{"eval.ema.warmup": False})
    first = evals[0]
    assert first["val_raw_accuracy"] - first["val_ema_accuracy"] >= 0.25


def test_both_weights_are_reported_and_the_better_one_is_followed(tmp_path):
    trainer, result, evals, events = run(tmp_path, **{"eval.ema.warmup": False})
    assert result == "finished"
    record = evals[-1]
    assert record["eval_weights"] == "raw"  # the cold EMA is worse
    for key in ("val_loss", "val_accuracy", "val_f1_macro"):
        name = key.removeprefix("val_")
        assert record[key] == record[f"val_raw_{name}"] and f"val_ema_{name}" in record
    assert trainer.state.best_eval["eval_weights"] == "raw"
    assert trainer.state.best_metric == record["val_raw_accuracy"]
    # best.pt (best at the last step here) and last.pt hold the raw weights, not the EMA's
    raw_weights = trainer.model.state_dict()
    for name in ("best.pt", "last.pt"):
        saved = torch.load(tmp_path / name, weights_only=False)["model"]
        assert all(torch.equal(saved[k], v) for k, v in raw_weights.items()), name
    eval_events = [data for kind, _, _, data in events.events if kind == "eval"]
    assert eval_events[-1]["eval_weights"] == "raw"


def test_evaluate_raw_off_follows_the_ema_only(tmp_path):
    _, _, evals, _ = run(tmp_path, **{"eval.ema.warmup": False, "eval.ema.evaluate_raw": False})
    record = evals[-1]
    assert record["eval_weights"] == "ema" and not any(k.startswith("val_raw_") for k in record)
    assert record["val_accuracy"] == record["val_ema_accuracy"]


def set_up(run_dir, **overrides) -> Events:
    run_dir.mkdir()
    trainer = Trainer(small_cfg(**overrides), run_dir, events := Events())
    trainer.setup()
    trainer.checkpoints.store.close()
    trainer.history.close()
    return events


def test_slow_ema_warns_at_start_with_the_numbers(tmp_path):
    events = set_up(tmp_path / "cold", **{"eval.ema.warmup": False})
    [(level, message, data)] = events.alerts("ema_slow")
    assert level == "warning" and "1,000 steps" in message and "20 steps" in message
    assert data["total_steps"] == 20 and data["time_constant_steps"] == pytest.approx(1000)
    assert data["first_quarter_share"] > 0.9

    events = set_up(tmp_path / "warm", **{"eval.ema.warmup": True})
    assert events.alerts("ema_slow") == []


def test_monitor_for_two_classes_only_fails_at_config_time_when_classes_are_known(tmp_path):
    raw = changed(SMALL, **{"eval.monitor": "val_auc_roc"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path, check_model=False)
    problem = dict(info.value.problems)["eval.monitor"]
    assert "val_auc_roc" in problem and "4 classes" in problem and "val_f1_macro" in problem

    raw["data"]["synthetic"]["classes"] = 2  # two classes: AUC exists
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path, check_model=False).eval.monitor == "val_auc_roc"


def test_unknown_monitor_is_a_config_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"eval": {"monitor": "val_acc"}}))
    with pytest.raises(ConfigError, match="unknown metric 'val_acc'"):
        load_config(path, check_model=False)


def test_monitor_is_checked_by_the_engine_once_the_data_is_built(tmp_path):
    # folder data: the class count is known only after the data is read; the engine checks it
    trainer = Trainer(small_cfg(**{"eval.monitor": "val_sensitivity"}), tmp_path)
    with pytest.raises(ConfigError) as info:
        trainer.setup()
    assert str(tmp_path / "config.yaml") in str(info.value)
    problem = dict(info.value.problems)["eval.monitor"]
    assert "4 classes" in problem and "only for 2 classes" in problem and "val_accuracy" in problem


def test_monitor_names_match_what_evaluation_produces():
    for k in (2, 3):
        metrics = classification_metrics([0, 1] * 3, torch.eye(k)[[0, 1] * 3].numpy(), list("abc"[:k]), loss=1.0)
        produced = {name for name, value in metrics.items() if name.startswith("val_")}
        assert produced | {"train_loss"} == monitor_metrics(k)


def test_run_that_never_had_a_best_checkpoint_ends_failed(tmp_path, monkeypatch):
    def without_monitor(*args, **kwargs):
        metrics = classification_metrics(*args, **kwargs)
        metrics.pop("val_accuracy")  # e.g. an AUC that is None on every validation set
        return metrics

    monkeypatch.setattr(evaluation, "classification_metrics", without_monitor)
    trainer, result, _, events = run(tmp_path)
    assert result == "failed"
    [(level, message, data)] = events.alerts("no_best")
    assert level == "error" and "val_accuracy" in message and "no best.pt" in message
    states = [data["state"] for kind, _, _, data in events.events if kind == "state"]
    assert states[-1] == "failed" and "finished" not in states
    assert not (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_foreground_train_exits_non_zero_without_a_best_checkpoint(tmp_path, monkeypatch):
    from trainer import cli

    monkeypatch.setenv("LONGHAUL_STATE_DIR", str(tmp_path / "state"))  # the run registry
    monkeypatch.setattr(evaluation, "classification_metrics",
                        lambda *a, **kw: {k: v for k, v in classification_metrics(*a, **kw).items()
                                          if k != "val_accuracy"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert cli.main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) != 0


FAILING_WORKER = '''
import sys
from pathlib import Path
from trainer import worker


class NoBestTrainer:
    """Ends as the engine does when no evaluation ever produced eval.monitor."""

    def __init__(self, cfg, run_dir, publisher, controls):
        self.run_dir, self.publisher = Path(run_dir), publisher

    def run(self):
        with open(self.run_dir / "starts", "a") as fh:
            fh.write("start\\n")
        self.publisher.event("alert", "error", "no best checkpoint", what="no_best")
        self.publisher.event("state", "error", "failed: no best checkpoint", state="failed", reason="no_best")
        return "failed"


sys.exit(worker.main(trainer_factory=NoBestTrainer))
'''


def test_daemon_ends_failed_without_restarting_a_trainer_that_failed_cleanly(tmp_path, runtime_dir, launcher):
    from daemon_helpers import FAST_SETTINGS, make_run, read_events, wait_for

    from trainer import daemon
    from trainer.run.liveness import is_longhaul_process
    from trainer.run.state import FINAL_STATES, StateFile

    run_dir = make_run(tmp_path / "runs", "nobest")
    script = tmp_path / "no_best_worker.py"
    script.write_text(FAILING_WORKER)
    launcher.run_dirs.append(run_dir)
    pid = daemon.launch_daemon(run_dir, worker_script=script, settings=FAST_SETTINGS)
    wait_for(lambda: StateFile(run_dir).read().get("state") in FINAL_STATES, 30, "a final state")
    wait_for(lambda: not is_longhaul_process(pid), 30, "the daemon's exit")
    assert StateFile(run_dir).read()["state"] == "failed"
    assert (run_dir / "starts").read_text().count("start") == 1  # a decision, not a crash: no restart
    kinds = [event["kind"] for event in read_events(run_dir)]
    assert "restart" not in kinds and "crash" not in kinds
