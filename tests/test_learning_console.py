"""Issue 9, builds 2 and 5: phases that cannot improve, per-phase warm-up, and the console
(warnings once, smoothed samples/s, progress of the data check, export rows with a kind)."""
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import RunConfig, config_warnings

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "lc", "seed": 3, "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 3, "train_per_class": 16, "val_per_class": 4}},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13},
    "model": {"name": "mfcc_mlp"},
    "optim": {"batch_size": 8},
    "phases": [{"name": "head", "epochs": 3, "trainable": 0.0}, {"name": "full", "epochs": 2}],
    "eval": {"monitor": "val_f1_macro", "early_stopping": {"patience": 1}},
}


def tiny(**changes) -> dict:
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return raw


# ----------------------------------------------------------------------------- build 2: phases
def test_frozen_phase_without_pretrained_weights_is_named_with_the_reason():
    warnings = dict(config_warnings(RunConfig.model_validate(tiny())))
    assert list(warnings) == ["phases.0.trainable"]
    assert "'head'" in warnings["phases.0.trainable"] and "model.pretrained is null" in warnings["phases.0.trainable"]
    partial = tiny(phases=[{"name": "top", "epochs": 1, "trainable": 0.25}, {"name": "all", "epochs": 1}])
    assert "75% of a random backbone" in dict(config_warnings(RunConfig.model_validate(partial)))["phases.0.trainable"]
    with_weights = RunConfig.model_validate(tiny(model={"name": "mfcc_mlp", "pretrained": "w.pt"}))
    assert config_warnings(with_weights) == []


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_presets_load_and_say_what_their_frozen_phases_do(preset):
    from trainer.config import load_config

    cfg = load_config(ROOT / "configs" / preset, check_paths=False, check_model=False)
    frozen = [i for i, p in enumerate(cfg.phases) if p.trainable < 1.0]
    assert [key for key, _ in config_warnings(cfg)] == [f"phases.{i}.trainable" for i in frozen]


def test_evaluations_of_a_frozen_random_backbone_do_not_use_up_patience(tmp_path):
    from trainer.engine import Trainer

    trainer = Trainer(RunConfig.model_validate(tiny()), tmp_path)
    trainer.setup()   # 48 examples / 8 = 6 steps per epoch: "head" is steps 1-18
    for step, f1 in ((6, 0.4), (12, 0.3), (18, 0.3)):
        trainer.state.step = step
        trainer._after_eval({"val_f1_macro": f1})
    assert trainer.state.evals_since_best == 0 and not trainer.state.stopped_early
    trainer.state.step = 24   # "full" trains the backbone: now a flat evaluation counts
    trainer._after_eval({"val_f1_macro": 0.3})
    assert trainer.state.evals_since_best == 1 and trainer.state.stopped_early


def test_with_pretrained_weights_the_head_phase_counts(tmp_path):
    from trainer.engine import Trainer

    trainer = Trainer(RunConfig.model_validate(tiny()), tmp_path)
    trainer.setup()
    trainer.cfg.model.pretrained = "weights.pt"   # as if loaded: a frozen trained backbone can improve
    for step, f1 in ((6, 0.4), (12, 0.3)):
        trainer.state.step = step
        trainer._after_eval({"val_f1_macro": f1})
    assert trainer.state.stopped_early


def test_check_data_prints_the_frozen_phase_warning(tmp_path, capsys):
    from trainer.cli import main

    path = tmp_path / "lc.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert main(["check-data", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("phases.0.trainable") == 1 and "model.pretrained is null" in err and str(path) in err
