"""Issue 9, builds 2 and 5: phases that cannot improve, per-phase warm-up, and the console
(warnings once, smoothed samples/s, progress of the data check, export rows with a kind)."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.audio_folders import write_audio_folders
from tests.run_configs import MFCC_TINY, changed
from trainer.config import RunConfig, config_warnings

ROOT = Path(__file__).resolve().parents[1]

# the CLI's tiny synthetic MFCC run, with a frozen head phase and a short patience
TINY = {**MFCC_TINY, "name": "lc", "seed": 3,
        "phases": [{"name": "head", "epochs": 3, "trainable": 0.0}, {"name": "full", "epochs": 2}],
        "eval": {"monitor": "val_f1_macro", "early_stopping": {"patience": 1}}}


def tiny(**changes) -> dict:
    return changed(TINY, **changes)


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
    from trainer.data.augment import no_effect_warnings

    assert no_effect_warnings(cfg) == []  # a preset never warns about its own settings


def test_data_paths_the_source_does_not_read_are_named():
    # the MFCC preset switched to folders, with its CSV path left over
    leftover = {"data": {"source": "audio_folder", "root": "/data/words", "train": "../data/audio/train.csv"}}
    warnings = dict(config_warnings(RunConfig.model_validate(leftover)))
    assert list(warnings) == ["data.train"]
    assert "not used: source audio_folder reads the splits from data.root" in warnings["data.train"]
    csv = {"data": {"source": "csv", "root": "/data/words", "train": "a.csv"}}
    assert list(dict(config_warnings(RunConfig.model_validate(csv)))) == ["data.root"]
    used = {"data": {"source": "audio_folder", "root": "/data/words"}}
    assert config_warnings(RunConfig.model_validate(used)) == []


def test_evaluations_of_a_frozen_random_backbone_do_not_use_up_patience(tmp_path):
    from trainer.engine import Trainer

    trainer = Trainer(RunConfig.model_validate(tiny()), tmp_path)
    trainer.setup()   # 48 examples / 8 = 6 steps per epoch: "head" is steps 1-18
    for step, f1 in ((6, 0.4), (12, 0.3), (18, 0.3)):
        trainer.state.step = step
        trainer.evaluation.judge({"val_f1_macro": f1})
    assert trainer.state.evals_since_best == 0 and not trainer.state.stopped_early
    trainer.state.step = 24   # "full" trains the backbone: now a flat evaluation counts
    trainer.evaluation.judge({"val_f1_macro": 0.3})
    assert trainer.state.evals_since_best == 1 and trainer.state.stopped_early


def test_with_pretrained_weights_the_head_phase_counts(tmp_path):
    from trainer.engine import Trainer

    trainer = Trainer(RunConfig.model_validate(tiny()), tmp_path)
    trainer.setup()
    trainer.cfg.model.pretrained = "weights.pt"   # as if loaded: a frozen trained backbone can improve
    for step, f1 in ((6, 0.4), (12, 0.3)):
        trainer.state.step = step
        trainer.evaluation.judge({"val_f1_macro": f1})
    assert trainer.state.stopped_early


def test_check_data_prints_the_frozen_phase_warning(tmp_path, capsys):
    from trainer.cli import main

    path = tmp_path / "lc.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert main(["check-data", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("phases.0.trainable") == 1 and "model.pretrained is null" in err and str(path) in err


# ----------------------------------------------------------------------------- build 5: console
def audio_folder_config(tmp_path) -> Path:
    """Audio folders with one broken file that data.skip_bad_files skips (a warning event)."""
    write_audio_folders(tmp_path / "audio", per_class=4)
    raw = tiny(data={"source": "audio_folder", "root": str(tmp_path / "audio"), "sample_rate": 8000,
                     "duration": 0.5, "skip_bad_files": True},
               phases=[{"name": "only", "epochs": 1}], optim={"batch_size": 4})
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_foreground_train_prints_each_warning_once(tmp_path):
    path = audio_folder_config(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), LONGHAUL_ROOT=str(tmp_path / "runs"))
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "train", str(path), "--quiet"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("skipped 1 bad data files") == 1, result.stderr


def test_progress_line_shows_samples_per_s_smoothed(tmp_path, capsys):
    from trainer.console import ConsolePublisher

    publisher = ConsolePublisher(tmp_path, "lc", line_interval=0.0)
    for step in range(1, 41):   # per-step rates jump between 9 and 220 as in the issue
        rate = 9.0 if step % 2 else 220.0
        publisher.progress({"step": step, "total_steps": 100, "epoch": 0, "total_epochs": 1, "phase_name": "a",
                            "eta": None, "metrics": {"samples_per_s": rate}})
    shown = [float(line.split(" samples/s")[0].rsplit("| ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == 40
    late = shown[10:]
    assert max(late) - min(late) < 3          # steady from line to line
    assert 15 < late[-1] < 20                 # samples over time: 2 steps take 1/9 + 1/220 s -> 17.3


def test_rate_smoother_counts_each_step_once():
    from trainer.console import RateSmoother

    smoother = RateSmoother(beta=0.5)
    assert smoother.update(1, None) is None
    assert smoother.update(1, 10.0) == 10.0
    assert smoother.update(1, 1000.0) == 10.0   # the same step published again (end of the run)
    assert smoother.update(2, 5.0) == pytest.approx(0.75 / (0.25 * 0.1 + 0.5 * 0.2))  # weights 1/3, 2/3


def test_decode_progress_line_at_most_every_interval():
    from trainer.console import DecodeProgressLine
    from trainer.data import DECODING

    now = [0.0]
    out = io.StringIO()
    line = DecodeProgressLine(out, interval=1.0, log_interval=1.0, clock=lambda: now[0])
    DECODING.start(7200)
    with DECODING.watch(line):
        for i in range(7200):
            now[0] = i * 0.001   # 1 ms a file: 7.2 s in all
            DECODING.step()
    DECODING.step()   # outside the block: nobody is told
    lines = out.getvalue().splitlines()
    assert lines[0] == "checking data: 1001/7200 files" and lines[-1] == "checking data: 7200/7200 files"
    assert len(lines) == 8
    quick = io.StringIO()
    with DECODING.watch(DecodeProgressLine(quick, clock=lambda: 0.0)):
        DECODING.start(3)
        for _ in range(3):
            DECODING.step()
    assert quick.getvalue() == ""   # over at once: no line at all


def test_check_data_reports_progress_of_the_decode_pass(tmp_path, capsys, monkeypatch):
    from trainer import console
    from trainer.cli import main

    path = audio_folder_config(tmp_path)
    seen = []
    monkeypatch.setattr(console, "DecodeProgressLine", lambda: lambda done, total: seen.append((done, total)))
    assert main(["check-data", str(path)]) == 1   # the broken file (check-data ignores skip_bad_files' verdict)
    assert seen[-1] == (17, 17) and [d for d, _ in seen] == list(range(1, 18))


def test_start_prints_the_frozen_phase_warning(tmp_path, capsys, monkeypatch):
    from trainer import daemon
    from trainer.cli import main

    monkeypatch.setattr(daemon, "launch_daemon", lambda run_dir: 4242)  # no daemon needed here
    path = tmp_path / "lc.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert main(["--root", str(tmp_path / "runs"), "start", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("phases.0.trainable") == 1 and "model.pretrained is null" in err


def test_eval_mode_follows_the_monitor_and_a_contrary_one_is_named():
    assert RunConfig.model_validate({"eval": {"monitor": "val_loss"}}).eval.mode == "min"
    assert RunConfig.model_validate({"eval": {"monitor": "train_loss"}}).eval.mode == "min"
    assert RunConfig.model_validate({"eval": {"monitor": "val_accuracy"}}).eval.mode == "max"
    contrary = RunConfig.model_validate({"eval": {"monitor": "val_loss", "mode": "max"}})
    assert contrary.eval.mode == "max"  # kept: a run made before the inference still resumes
    assert "follow the worst evaluation" in dict(config_warnings(contrary))["eval.mode"]
