"""The automation contract of the CLI: train, status --json, export, check-data, error exits."""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.audio_folders import write_audio_folders
from tests.run_configs import MFCC_TINY

from trainer.cli import main

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(MFCC_TINY))
    return path


def test_train_status_export(tmp_path, config, capsys, monkeypatch):
    monkeypatch.setenv("LONGHAUL_ROOT", str(tmp_path / "runs"))
    assert main(["train", str(config), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "clitiny"
    assert (run_dir / "config.yaml").exists()
    capsys.readouterr()

    assert main(["status", "clitiny", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["name"] == "clitiny" and status["state"] == "finished"
    assert status["step"] == status["total_steps"] == 12 and status["pid"] is None
    for key in ("last_eval", "best_eval"):
        assert all(isinstance(status[key][k], float) for k in ("accuracy", "f1_macro", "loss"))
    assert status["last_eval"]["accuracy"] == status["last_eval"]["val_accuracy"]
    assert {"epoch", "phase"} <= set(status)

    assert main(["export", str(run_dir), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    trains = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in trains] == list(range(1, 13)) and all("train_loss" in r for r in trains)
    assert [r["step"] for r in evals] == [6, 12] and all("val_accuracy" in r and "train_loss" not in r for r in evals)
    assert main(["export", "clitiny", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 14 and list(table[0])[:5] == ["step", "epoch", "phase", "time", "kind"]
    assert "val_accuracy" in table[0] and table[0]["val_accuracy"] == "" 

    # running the same run directory again resumes it; its events continue the numbering
    first_events = len((run_dir / "events.jsonl").read_text().splitlines())
    assert main(["train", str(config), "--run-dir", str(run_dir), "--quiet"]) == 0
    seqs = [json.loads(line)["seq"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(seqs) > first_events and seqs == list(range(1, len(seqs) + 1))


def test_name_in_use_is_a_clear_error(tmp_path, config, capsys, monkeypatch):
    monkeypatch.setenv("LONGHAUL_ROOT", str(tmp_path / "runs"))
    (tmp_path / "runs" / "clitiny").mkdir(parents=True)
    assert main(["train", str(config)]) == 2
    assert "clitiny" in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: fast}\nphases: [{name: a, epochs: 0}]\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "optim.lr" in err and "phases.0.epochs" in err


def test_check_data_reports_and_fails_on_corrupt_files(tmp_path, capsys):
    write_audio_folders(tmp_path / "audio", per_class=3)
    cfg = dict(MFCC_TINY, data={"source": "audio_folder", "root": str(tmp_path / "audio"), "sample_rate": 8000,
                                "duration": 0.5})
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["check-data", str(path)]) == 1
    out = capsys.readouterr().out
    assert "broken.wav" in out and "bird" in out and "insect" in out
    # training refuses the same data with the report
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "broken.wav" in capsys.readouterr().err
    # with skip_bad_files the run goes on and counts what it skipped
    cfg["data"]["skip_bad_files"] = True
    cfg["phases"] = [{"name": "only", "epochs": 1}]
    cfg["optim"] = {"batch_size": 2}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run2"), "--quiet"]) == 0
    events = [json.loads(line) for line in (tmp_path / "run2" / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "alert" and e["data"].get("count") == 1 for e in events)


def test_commands_answer_without_importing_torch(tmp_path):
    code = ("import sys; from trainer.cli import main; main(['ls', '--json']); "
            "assert 'torch' not in sys.modules, 'ls imported torch'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"LONGHAUL_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin",
                                 "LONGHAUL_STATE_DIR": os.environ["LONGHAUL_STATE_DIR"]})  # (conftest)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_train_on_bad_data_prints_the_report_once(tmp_path, capsys):
    import numpy as np
    import soundfile

    for cls in ("bird", "frog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        soundfile.write(str(tmp_path / "data" / cls / "ok.wav"), np.full(4000, 0.1, np.float32), 8000)
    (tmp_path / "data" / "bird" / "broken.wav").write_bytes(b"\x00" * 64)
    cfg = {**MFCC_TINY, "data": {"source": "audio_folder", "root": str(tmp_path / "data"), "sample_rate": 8000,
                                 "duration": 0.5, "val_fraction": 0.5}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "broken.wav" in err
    assert err.count("broken.wav") == 1, err
