"""k-fold cross-validation (`longhaul cv`, trainer.run.cv, cv_status, oof): the parent and its
fold runs made all or nothing, the parent's status and aggregate from the folds' files, the
out-of-fold file, and 3-fold CVs of a tiny run trained to the end (one with a fold that fails)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.daemon_helpers import wait_for
from tests.longhaul_cli import cli, cli_env
from tests.run_configs import MFCC_TINY, changed
from trainer.config import build_config
from trainer.run.cv import create_cv, find_cv, fold_parent, read_cv
from trainer.run.cv_status import cv_status, format_cv_status, stat
from trainer.run.errors import RunError, RunExists
from trainer.run.oof import collect
from trainer.run.rundir import CvDir, RunDir, atomic_write_json, is_run_dir
from trainer.run.status import list_runs

# 3 classes x 16 training clips: a pool of 48, three folds of 16; 4 test clips per class.
TINY = changed(MFCC_TINY, **{"data.synthetic.test_per_class": 4})


def tiny_cfg(tmp_path, **changes):
    return build_config(changed(TINY, **changes), "tiny.yaml", tmp_path, check_model=False)


def test_create_cv_makes_a_parent_and_ordinary_fold_runs(tmp_path):
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    assert [d.name for d in folds] == ["cvt-fold1", "cvt-fold2", "cvt-fold3"]
    assert not is_run_dir(parent) and find_cv("cvt", tmp_path) == parent
    assert [info["name"] for info in list_runs(tmp_path)] == ["cvt-fold1", "cvt-fold2", "cvt-fold3"]
    doc = read_cv(parent)
    assert doc["k"] == 3 and [f["dir"] for f in doc["folds"]] == [str(d) for d in folds]
    for index, run_dir in enumerate(folds):
        config = yaml.safe_load(RunDir(run_dir).config.read_text())
        assert config["data"]["folds"] == {"k": 3, "index": index} and config["name"] == run_dir.name
        assert fold_parent(run_dir) == (parent, index)
    status = cv_status(parent)
    assert status["state"] == "queued" and [f["state"] for f in status["folds"]] == ["waiting"] * 3
    assert status["aggregate"]["n"] == 0 and status["oof"] is None


def test_create_cv_that_fails_midway_leaves_nothing(tmp_path):
    (tmp_path / "cvt-fold2").mkdir()
    with pytest.raises(RunExists, match="cvt-fold2"):
        create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cvt-fold2"]
    assert list_runs(tmp_path) == []


def fake_fold(run_dir: Path, state: str, f1=None, test_f1=None, val=(), test=()) -> None:
    """A fold's state.json (best evaluation) and evaluation.json as a finished run leaves them
    (`val`, `test`: more of the best evaluation's and the test result's fields)."""
    best = {"step": 8, "val_accuracy": f1, "val_f1_macro": f1, "val_loss": 0.5, **dict(val)} if f1 is not None else None
    atomic_write_json(RunDir(run_dir).state, {"state": state, "step": 8, "total_steps": 8, "best_eval": best})
    if test_f1 is not None:
        atomic_write_json(RunDir(run_dir).evaluation, {"version": 1, "results": {
            "test/best": {"split": "test", "weights": "best", "accuracy": test_f1, "f1_macro": test_f1, "n": 12,
                          **dict(test)}}})


def test_the_aggregate_counts_finished_folds_and_shows_a_failed_one(tmp_path):
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    fake_fold(folds[0], "finished", 0.8, 0.7)
    fake_fold(folds[1], "failed")
    fake_fold(folds[2], "finished", 0.6, 0.5)
    status = cv_status(parent)
    assert status["state"] == "incomplete" and status["counts"] == {"finished": 2, "failed": 1}
    agg = status["aggregate"]
    assert agg["n"] == 2 and agg["excluded"] == [{"name": "cvt-fold2", "state": "failed"}]
    assert agg["val"]["f1_macro"] == pytest.approx({"mean": 0.7, "std": 0.1414213, "n": 2}, rel=1e-5)
    assert agg["val"]["val_f1_macro"]["n"] == 2  # the run's monitor
    assert agg["test"]["accuracy"] == pytest.approx({"mean": 0.6, "std": 0.1414213, "n": 2}, rel=1e-5)
    assert status["folds"][1]["state"] == "failed" and status["folds"][1]["val"] is None
    text = format_cv_status(status)
    assert "aggregate of 2 of 3 folds (left out: cvt-fold2 failed)" in text and "0.7000 ± 0.1414" in text
    # what a script reads: the cross-validated estimate, from the held-out (val) folds
    assert agg["accuracy"] == agg["val"]["accuracy"] and agg["f1_macro"] == agg["val"]["f1_macro"]
    assert agg["accuracy"]["mean"] == pytest.approx(0.7)
    assert "RECALL" not in text.splitlines()[1]  # the default monitor is F1: no column of its own


def per_class_result(recalls: dict, precisions: dict) -> dict:
    """The per-class part of an evaluation.json result (the classes all true somewhere)."""
    return {"classes": list(recalls), "confusion": [[4] * len(recalls)] * len(recalls),
            "per_class": {c: {"recall": recalls[c], "precision": precisions[c], "support": 4} for c in recalls}}


def test_the_aggregate_and_the_table_follow_a_monitor_that_is_not_accuracy_or_f1(tmp_path):
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path, **{"eval.monitor": "val_recall_macro"}), 3,
                              "tiny.yaml")
    fake_fold(folds[0], "finished", 0.8, 0.7, val={"val_recall_macro": 0.9},
              test=per_class_result({"a": 0.5, "b": 0.7, "c": 0.9}, {"a": 0.1, "b": 0.1, "c": 0.1}))
    fake_fold(folds[1], "finished", 0.6, 0.5, val={"val_recall_macro": 0.7}, test={"recall_macro": 0.5})
    fake_fold(folds[2], "running", 0.6, val={"val_recall_macro": 0.6})  # listed, not counted
    status = cv_status(parent)
    agg = status["aggregate"]
    assert agg["val"]["val_recall_macro"] == pytest.approx({"mean": 0.8, "std": 0.1414213, "n": 2}, rel=1e-5)
    # the test side's counterpart: fold 1's macro recall read from its per-class recalls
    assert status["folds"][0]["test"]["recall_macro"] == pytest.approx(0.7)
    assert agg["test"]["recall_macro"] == pytest.approx({"mean": 0.6, "std": 0.1414213, "n": 2}, rel=1e-5)
    lines = format_cv_status(status).splitlines()
    assert lines[1].endswith("VAL RECALL TEST RECALL")
    assert lines[2].split()[-2:] == ["0.9000", "0.7000"] and lines[3].split()[-2:] == ["0.7000", "0.5000"]
    assert lines[4].split()[-2:] == ["0.6000", "-"]


def test_a_two_class_monitor_reads_the_positive_class_of_the_test_result():
    from trainer.run.cv_status import test_value

    result = {"classes": ["neg", "pos"], "per_class": {"neg": {"sensitivity": 0.3}, "pos": {"sensitivity": 0.8}}}
    assert test_value(result, "sensitivity") == 0.8
    assert test_value({**result, "classes": ["a", "b", "c"]}, "sensitivity") is None  # no positive class


def test_stat_of_too_few_values():
    assert stat([]) == {"mean": None, "std": None, "n": 0}
    assert stat([0.5, None, float("nan")]) == {"mean": 0.5, "std": None, "n": 1}


def fake_predictions(run_dir: Path, names, labels, classes=("a", "b")) -> None:
    rng = np.random.default_rng(len(names))
    buffer = io.BytesIO()
    np.savez(buffer, names=np.asarray(names, dtype=str), labels=np.asarray(labels),
             logits=rng.normal(size=(len(names), len(classes))).astype(np.float32), classes=np.asarray(classes))
    RunDir(run_dir).predictions("val", "best").write_bytes(buffer.getvalue())


def test_oof_is_written_once_every_fold_has_predicted_its_fold(tmp_path):
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 2, "tiny.yaml")
    fake_fold(folds[0], "finished", 0.8)
    fake_predictions(folds[0], ["x0", "x1", "x2"], [0, 1, 0])
    assert collect(parent, finishing=0) is None and not CvDir(parent).oof_npz.exists()
    fake_predictions(folds[1], ["y0", "y1"], [1, 1])
    path = collect(parent, finishing=1)  # fold 2's own state.json is not written yet: it is the caller
    with np.load(path) as npz:
        assert list(npz["names"]) == ["x0", "x1", "x2", "y0", "y1"] and list(npz["fold"]) == [0, 0, 0, 1, 1]
        assert list(npz["labels"]) == [0, 1, 0, 1, 1]
        assert np.allclose(npz["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    rows = CvDir(parent).oof_csv.read_text().splitlines()
    assert rows[0] == "name,label,fold,a,b" and rows[4].startswith("y0,1,1,") and len(rows) == 6


def test_oof_of_overlapping_folds_is_an_error(tmp_path):
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 2, "tiny.yaml")
    for run_dir in folds:
        fake_fold(run_dir, "finished", 0.8)
    fake_predictions(folds[0], ["x0", "x1"], [0, 1])
    fake_predictions(folds[1], ["x1", "y1"], [1, 1])
    with pytest.raises(RunError, match="'x1' is in the validation split of 2 folds"):
        collect(parent)


# ----------------------------------------------------------------------------- the command
@pytest.fixture
def cv_env(tmp_path):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return cli_env(tmp_path / "runs", runtime)


def test_cv_refuses_a_class_smaller_than_k_and_makes_nothing(tmp_path, cv_env):
    result = cli(cv_env, "cv", str(tmp_path / "tiny.yaml"), "--folds", "5", "--name", "cvt", "--now",
                 "--set", "data.max_per_class=4", check=False)
    assert result.returncode == 2
    assert "class 'tone' has 4 training example(s), fewer than data.folds.k = 5" in result.stderr
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    result = cli(cv_env, "cv", str(tmp_path / "tiny.yaml"), "--folds", "1", check=False)
    assert result.returncode == 2 and "expected a whole number of folds >= 2, found '1'" in result.stderr


def test_a_3_fold_cv_through_the_queue_finishes_with_the_aggregate_and_out_of_fold_predictions(tmp_path, cv_env):
    out = cli(cv_env, "cv", str(tmp_path / "tiny.yaml"), "--folds", "3", "--name", "cvt", "--quiet").stdout
    assert "queued cvt-fold3 (position" in out  # returns at once: the queue trains them
    wait_for(lambda: cv_status(tmp_path / "runs" / "cvt")["oof"], 300,
             "the cross-validation to finish with its out-of-fold file (the last fold's after-run step)")
    status = json.loads(cli(cv_env, "status", "cvt", "--json").stdout)
    assert status["state"] == "finished" and [f["state"] for f in status["folds"]] == ["finished"] * 3
    for key in ("accuracy", "f1_macro"):
        for split in ("val", "test"):
            entry = status["aggregate"][split][key]
            assert entry["n"] == 3 and 0 <= entry["mean"] <= 1 and entry["std"] >= 0
    with np.load(status["oof"]["npz"]) as npz:
        names, folds, probs = list(npz["names"]), npz["fold"], npz["probabilities"]
        assert list(npz["classes"]) == ["tone", "chirp", "noise_burst"]
    pool = [f"synthetic:train (example {i})" for i in range(48)]
    assert sorted(names) == sorted(pool)  # the whole pool, each example once
    assert list(np.bincount(folds)) == [16, 16, 16]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert "aggregate of 3 of 3 folds" in cli(cv_env, "status", "cvt").stdout


def test_cv_now_trains_the_folds_here_one_after_another(tmp_path, cv_env):
    from trainer.run.queue import read_queue

    result = cli(cv_env, "cv", str(tmp_path / "tiny.yaml"), "--folds", "2", "--name", "cvn", "--now", "--quiet")
    out = result.stdout
    assert out.index("training cvn-fold1") < out.index("training cvn-fold2")
    assert "  cvn-fold1: finished" in out and "  cvn-fold2: finished" in out and "queued" not in out
    root = tmp_path / "runs"
    assert read_queue(root).entries == []  # trained here, never queued
    status = cv_status(root / "cvn")
    assert status["state"] == "finished" and status["aggregate"]["n"] == 2
    assert status["oof"] is not None  # the last fold's after-run step ran in the foreground too


def test_a_fold_that_fails_does_not_stop_the_others(tmp_path, cv_env, monkeypatch):
    from trainer.cli import queue_folds

    root = tmp_path / "runs"
    parent, folds = create_cv(root, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    empty = tmp_path / "no-data"
    empty.mkdir()
    broken = yaml.safe_load(RunDir(folds[1]).config.read_text())  # fold 2 alone reads an empty folder
    broken["data"].update(source="audio_folder", root=str(empty))
    RunDir(folds[1]).config.write_text(yaml.safe_dump(broken, sort_keys=False))
    for key, value in cv_env.items():
        monkeypatch.setenv(key, value)
    assert queue_folds(root, [parent, *folds]) == 0
    wait_for(lambda: cv_status(parent)["state"] == "incomplete" and all(
        f["state"] in ("finished", "failed") for f in cv_status(parent)["folds"]), 300, "every fold to end")
    status = cv_status(parent)
    assert [f["state"] for f in status["folds"]] == ["finished", "failed", "finished"]
    assert "no class folders" in RunDir(folds[1]).events.read_text()  # failed training, for the planted reason
    assert status["state"] == "incomplete" and status["oof"] is None
    assert status["aggregate"]["n"] == 2 and status["aggregate"]["val"]["f1_macro"]["n"] == 2
    assert status["aggregate"]["excluded"] == [{"name": "cvt-fold2", "state": "failed"}]


# ----------------------------------------------------------------------------- the run queue
def fake_queue(monkeypatch, refuse: str = "") -> list[str]:
    """The run queue's enqueue and start_queued (main's trainer.run.queue and
    trainer.daemon.launch) as recorders (`refuse`: a run name enqueue refuses)."""
    import sys
    import types

    calls: list[str] = []

    def enqueue(root, run_dir, after=()):
        if run_dir.name == refuse:
            raise RunError(f"the queue refuses {run_dir.name}")
        calls.append(run_dir.name)
        return len(calls)

    queue = types.ModuleType("trainer.run.queue")
    queue.enqueue, queue.remove = enqueue, lambda root, run_dir: calls.remove(run_dir.name)
    monkeypatch.setitem(sys.modules, "trainer.run.queue", queue)
    monkeypatch.setattr("trainer.daemon.launch.start_queued", lambda root: [(root / calls[0], None)], raising=False)
    return calls


def test_the_folds_go_to_the_queue_in_order(tmp_path, monkeypatch, capsys):
    from trainer.cli import queue_folds

    calls = fake_queue(monkeypatch)
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    assert queue_folds(tmp_path, [parent, *folds]) == 0
    assert calls == ["cvt-fold1", "cvt-fold2", "cvt-fold3"]
    out = capsys.readouterr().out
    assert "queued cvt-fold3 (position 3)" in out and "cvt-fold1 started" in out


def test_a_queue_that_refuses_a_fold_undoes_the_cross_validation(tmp_path, monkeypatch):
    from trainer.cli import queue_folds

    calls = fake_queue(monkeypatch, refuse="cvt-fold2")
    parent, folds = create_cv(tmp_path, "cvt", tiny_cfg(tmp_path), 3, "tiny.yaml")
    with pytest.raises(RunError, match="refuses cvt-fold2"):
        queue_folds(tmp_path, [parent, *folds])
    assert calls == []  # fold 1 was taken out of the queue again
    assert list(tmp_path.iterdir()) == [] and list_runs(tmp_path) == []
