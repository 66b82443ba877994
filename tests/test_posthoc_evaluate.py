"""`longhaul evaluate`: metrics for any number of classes against hand-worked values, bootstrap
intervals, temperature scaling and calibration errors, the command on tiny real runs (the
automation contract, evaluation.json, predictions, calibration.json, bad input), the evaluation
a finished run gets automatically, and `status --json`'s evaluation summary."""
from __future__ import annotations

import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.run_configs import MFCC_TINY, changed
from trainer import cli
from trainer.metrics import _auc_macro, _f1_macro, bootstrap_intervals, evaluation_metrics
from trainer.posthoc import calibration
from trainer.posthoc.classifier import ClassifierError
from trainer.run.rundir import RunDir

# ----------------------------------------------------------------------------- hand-worked, 3 classes
# y = 0,0,0, 1,1,1, 2,2,2,2; predictions 0,0,1, 1,2,0, 2,2,1,2 -> confusion [[2,1,0],[1,1,1],[0,1,3]]
Y3 = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
P3 = np.array([[.7, .2, .1], [.5, .4, .1], [.2, .6, .2],
               [.1, .8, .1], [.3, .3, .4], [.6, .3, .1],
               [.1, .1, .8], [.2, .1, .7], [.1, .5, .4], [.3, .2, .5]])
CLASSES3 = ["normal", "benign", "malignant"]


def test_three_class_metrics_match_hand_worked_values():
    m = evaluation_metrics(Y3, P3, CLASSES3)
    assert m["confusion"] == [[2, 1, 0], [1, 1, 1], [0, 1, 3]]
    assert m["n"] == 10 and m["accuracy"] == pytest.approx(0.6)
    # F1 per class 2/3, 1/3, 3/4; weighted by support 3, 3, 4
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3)
    assert m["f1_weighted"] == pytest.approx(0.6)
    normal, benign, malignant = (m["per_class"][c] for c in CLASSES3)
    # normal: TP 2, FN 1, FP 1, TN 6
    assert (normal["sensitivity"], normal["specificity"], normal["ppv"], normal["npv"]) == \
        pytest.approx((2 / 3, 6 / 7, 2 / 3, 6 / 7))
    # benign: TP 1, FN 2, FP 2, TN 5
    assert (benign["sensitivity"], benign["specificity"], benign["ppv"], benign["npv"]) == \
        pytest.approx((1 / 3, 5 / 7, 1 / 3, 5 / 7))
    # malignant: TP 3, FN 1, FP 1, TN 5
    assert (malignant["sensitivity"], malignant["specificity"], malignant["ppv"], malignant["npv"]) == \
        pytest.approx((3 / 4, 5 / 6, 3 / 4, 5 / 6))
    assert [m["per_class"][c]["support"] for c in CLASSES3] == [3, 3, 4]
    assert normal["precision"] == normal["ppv"] and normal["recall"] == normal["sensitivity"]
    # AUC-ROC one-vs-rest by counting pairs (ties 1/2): 16.5/21, 15/21, 23.5/24
    aucs = [16.5 / 21, 15 / 21, 23.5 / 24]
    assert [m["per_class"][c]["auc_roc"] for c in CLASSES3] == pytest.approx(aucs)
    assert m["auc_roc_macro"] == pytest.approx(sum(aucs) / 3)
    # average precision: normal 1/3 (1 + 2/3 + 3/7), benign 1/3 + 2/3 * 1/2, malignant 3/4 + 1/4 * 4/5
    aps = [(1 + 2 / 3 + 3 / 7) / 3, 2 / 3, 0.95]
    assert [m["per_class"][c]["auc_pr"] for c in CLASSES3] == pytest.approx(aps)
    assert m["auc_pr_macro"] == pytest.approx(sum(aps) / 3)


def test_a_class_absent_from_the_labels_has_no_auc_and_is_left_out_of_the_macro():
    y = np.array([0, 0, 1, 1])
    p = np.array([[.8, .1, .1], [.4, .5, .1], [.2, .7, .1], [.3, .3, .4]])
    m = evaluation_metrics(y, p, ["a", "b", "c"])
    assert m["per_class"]["c"]["auc_roc"] is None and m["per_class"]["c"]["auc_pr"] is None
    assert m["per_class"]["c"]["support"] == 0
    assert m["auc_roc_macro"] == pytest.approx(np.mean([m["per_class"][c]["auc_roc"] for c in "ab"]))
    json.dumps(m)  # plain values only


def test_fast_bootstrap_metrics_equal_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        y = rng.integers(0, k, (8, 60))
        p = rng.random((8, 60, k)).round(1)  # ties
        pred = p.argmax(axis=2)
        f1, auc = _f1_macro(y, pred, k), _auc_macro(y, p)
        for i in range(8):
            assert f1[i] == pytest.approx(f1_score(y[i], pred[i], average="macro", zero_division=0))
            present = [c for c in range(k) if 0 < (y[i] == c).sum() < 60]
            assert auc[i] == pytest.approx(np.mean([roc_auc_score(y[i] == c, p[i, :, c]) for c in present]))


def test_bootstrap_intervals_are_seeded_stratified_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet([1, 1, 1], 300)
    p[np.arange(300), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    ci = bootstrap_intervals(y, p, n_boot=200)
    assert ci == bootstrap_intervals(y, p, n_boot=200)  # fixed seed
    m = evaluation_metrics(y, p, ["a", "b", "c"])
    for key in ("accuracy", "f1_macro", "auc_roc_macro"):
        lo, hi = ci[key]
        assert lo < m[key] < hi and hi - lo < 0.25
    # stratified: a perfect classifier stays perfect in every resample
    perfect = np.eye(3)[y] * 0.9 + 0.05
    assert bootstrap_intervals(y, perfect, n_boot=50) == {"accuracy": [1.0, 1.0], "f1_macro": [1.0, 1.0],
                                                           "auc_roc_macro": [1.0, 1.0]}


# ----------------------------------------------------------------------------- calibration
def test_calibration_errors_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    probs = np.array([[.9, .1], [.9, .1], [.6, .4]])
    labels = np.array([0, 1, 0])
    e = calibration.calibration_errors(probs, labels)
    assert e["ece"] == pytest.approx(2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6))
    assert e["mce"] == pytest.approx(0.4)
    assert e["brier"] == pytest.approx((2 * .1 ** 2 + 2 * .9 ** 2 + 2 * .4 ** 2) / 3)
    assert e["nll"] == pytest.approx(-(math.log(.9) + math.log(.1) + math.log(.6)) / 3)
    table = calibration.reliability(probs, labels)
    assert len(table["edges"]) == 16 and sum(table["count"]) == 3


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model():
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(4000, 3)) * 1.5
    labels = np.array([rng.choice(3, p=row) for row in calibration.softmax(honest)])
    over = honest * 4.0  # the same ranking, four times too sure
    val, test = slice(0, 2000), slice(2000, None)
    t = calibration.fit_temperature(over[val], labels[val])
    assert 3.0 < t < 5.0
    before = calibration.calibration_errors(calibration.softmax(over[test]), labels[test])
    after = calibration.calibration_errors(calibration.softmax(over[test], t), labels[test])
    assert before["ece"] > 0.15 and after["ece"] < before["ece"] / 3
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert calibration.nll(over[val], labels[val], t) <= calibration.nll(over[val], labels[val])


def test_a_validation_split_without_errors_sets_the_confidence_to_laplaces_accuracy():
    """Its NLL falls without end as T -> 0; instead the mean confidence is made (n+1)/(n+2),
    which softens an over-confident model and sharpens an under-confident one."""
    labels = np.arange(12) % 3
    for scale in (4.0, 1.0):  # confidence 0.96 and 0.58 at T = 1, both all correct
        logits = np.eye(3)[labels] * scale
        t = calibration.fit_temperature(logits, labels)
        confidence = calibration.softmax(logits, t).max(axis=1).mean()
        assert confidence == pytest.approx(13 / 14, abs=1e-5)
        assert (t > 1.0) if scale == 4.0 else (t < 1.0)


def test_fit_temperature_refuses_bad_logits():
    with pytest.raises(ValueError, match="NaN"):
        calibration.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="no examples"):
        calibration.fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


# ----------------------------------------------------------------------------- the command on real runs
TINY_TEST = changed(MFCC_TINY, **{"data.synthetic.test_per_class": 4, "name": "evaltiny"})


def train(tmp: Path, raw: dict, name: str) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run_dir = tmp / name
    assert cli.main(["train", str(cfg), "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-class run with a test split (evaluated automatically when it finished)."""
    return train(tmp_path_factory.mktemp("evaluate"), TINY_TEST, "evaltiny")


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def evaluate(run_dir: Path, *args: str, capsys=None):
    code = cli.main(["evaluate", str(run_dir), *args])
    out = capsys.readouterr() if capsys is not None else None
    return code, out


def test_a_finished_run_with_test_data_was_evaluated_automatically(finished):
    files = RunDir(finished)
    doc = json.loads(files.evaluation.read_text())
    assert doc["version"] == 1 and set(doc["results"]) == {"test/best"}
    events = [json.loads(line) for line in files.events.read_text().splitlines()]
    finished_at = next(e["seq"] for e in events if e["kind"] == "state" and e["data"]["state"] == "finished")
    evaluated = [e for e in events if e["kind"] == "evaluation" and e["data"].get("what") == "evaluation"]
    assert len(evaluated) == 1 and evaluated[0]["seq"] > finished_at  # after the run was finished
    assert evaluated[0]["data"]["split"] == "test" and evaluated[0]["data"]["ci"]["accuracy"]
    reported = [e for e in events if e["kind"] == "report" or e["data"].get("what") in ("report_missing", "report_failed")]
    assert len(reported) == 1  # the report was written, or why not was said
    from trainer.run.status import status
    summary = status(finished)["evaluation"]
    assert summary["split"] == "test" and summary["n"] == 12 and summary["ci"]["accuracy"][0] <= summary["accuracy"]


def test_evaluate_json_follows_the_automation_contract(run, capsys):
    code, out = evaluate(run, "--split", "test", "--json", capsys=capsys)
    assert code == 0
    result = json.loads(out.out)
    for key in ("n", "accuracy", "f1_macro", "auc_roc_macro", "per_class", "ece_before", "ece_after", "temperature",
                "f1_weighted", "auc_pr_macro", "confusion", "ci", "ci_level", "bootstrap", "mce_before", "mce_after",
                "brier_before", "brier_after", "nll_before", "nll_after", "step", "data", "time", "classes"):
        assert key in result, key
    assert result["n"] == 12 and result["tta"] is None and result["bootstrap"] == 1000
    assert list(result["per_class"]) == result["classes"] and len(result["classes"]) == 3
    for row in result["per_class"].values():
        assert {"sensitivity", "specificity", "ppv", "npv", "auc_roc", "auc_pr", "support"} <= set(row)
    files = RunDir(run)
    stored = json.loads(files.evaluation.read_text())["results"]["test/best"]
    assert stored["accuracy"] == result["accuracy"]
    saved = np.load(files.predictions("test", "best"))
    assert saved["logits"].shape == (12, 3) and saved["logits"].dtype == np.float32
    assert list(saved["classes"]) == result["classes"]
    accuracy = float((calibration.softmax(saved["logits"], result["temperature"]).argmax(1) == saved["labels"]).mean())
    assert accuracy == result["accuracy"]
    fit = json.loads(files.calibration.read_text())["weights"]["best"]
    assert fit["split"] == "val" and fit["temperature"] == result["temperature"]
    assert {"step", "nll_before", "nll_after"} <= set(fit) and fit["nll_after"] <= fit["nll_before"]


def test_evaluate_prints_a_table_and_keeps_other_results(run, capsys):
    code, out = evaluate(run, "--split", "val", "--weights", "last", capsys=capsys)
    assert code == 0
    for text in ("accuracy", "AUC-ROC macro", "temperature", "ECE", "sensitivity", "confusion", "val split"):
        assert text in out.out
    results = json.loads(RunDir(run).evaluation.read_text())["results"]
    assert set(results) == {"test/best", "val/last"}
    assert set(json.loads(RunDir(run).calibration.read_text())["weights"]) == {"best", "last"}


def test_a_calibration_fit_applies_only_to_the_weights_of_its_step(run):
    from trainer.posthoc.classifier import load_classifier
    from trainer.posthoc.evaluate import evaluate_run

    files = RunDir(run)
    doc = json.loads(files.calibration.read_text())
    fitted = doc["weights"]["best"]["temperature"]
    assert load_classifier(run).temperature == pytest.approx(fitted)
    doc["weights"]["best"].update(step=-1, temperature=9.0)  # a fit of older weights
    files.calibration.write_text(json.dumps(doc))
    assert load_classifier(run).temperature == 1.0
    assert evaluate_run(run, n_boot=10)["temperature"] == pytest.approx(fitted)  # fitted again


def test_bad_input_gets_a_clear_error(run, capsys):
    from trainer.posthoc.evaluate import EvaluationError, evaluate_run

    with pytest.raises(EvaluationError, match="unknown split 'train'"):
        evaluate_run(run, "train")
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(run), "--split", "train"])
    capsys.readouterr()
    code, out = evaluate(run, "--data", str(run), capsys=capsys)
    assert code == 2 and "not a folder" in out.err
    (run / "best.pt").unlink()
    code, out = evaluate(run, capsys=capsys)
    assert code == 2 and "best.pt does not exist" in out.err and "no best weights yet" in out.err


def test_a_run_without_test_data_says_so(run, capsys):
    from trainer.posthoc.after import has_test_split

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["synthetic"]["test_per_class"] = 0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert not has_test_split(run)
    code, out = evaluate(run, capsys=capsys)
    assert code == 2 and "has no test split" in out.err and "--split val" in out.err
    assert evaluate(run, "--split", "val", capsys=capsys)[0] == 0


def test_tta_metrics_sit_beside_the_plain_ones(run, capsys, monkeypatch):
    import torch

    fake = types.ModuleType("trainer.posthoc.tta")
    fake.transform_names = lambda cfg: ["original", "shift"]
    fake.tta_probabilities = lambda clf, bases, batch_size=32, calibrated=True: \
        torch.softmax(torch.stack([clf.logits(clf.inputs(b)[None])[0] for b in bases]) / clf.temperature, dim=-1)
    monkeypatch.setitem(sys.modules, "trainer.posthoc.tta", fake)
    code, out = evaluate(run, "--tta", "--json", capsys=capsys)
    result = json.loads(out.out)
    assert code == 0 and result["tta"]["transforms"] == ["original", "shift"]
    assert result["tta"]["accuracy"] == pytest.approx(result["accuracy"])  # the fake TTA is the plain model
    assert set(result["tta"]["per_class"]) == set(result["classes"])
    assert np.load(RunDir(run).predictions("test", "best"))["tta_probs"].shape == (12, 3)


def test_after_run_never_raises_and_says_what_happened(run, monkeypatch):
    from trainer.posthoc import after

    events = []
    record = lambda kind, level, message, **data: events.append((kind, level, data.get("what"), message))  # noqa: E731
    fake = types.ModuleType("trainer.posthoc.report")
    fake.write_report = lambda run_dir: Path(run_dir) / "report.html"
    monkeypatch.setitem(sys.modules, "trainer.posthoc.report", fake)
    assert after.after_run(run, record)["split"] == "test"
    assert [e[0] for e in events] == ["evaluation", "evaluation", "report"]
    events.clear()
    (run / "best.pt").unlink()
    monkeypatch.setitem(sys.modules, "trainer.posthoc.report", None)
    assert after.after_run(run, record) is None
    assert [(e[0], e[2]) for e in events][-2:] == [("alert", "evaluation_failed"), ("alert", "report_missing")]
    events.clear()
    monkeypatch.setitem(sys.modules, "trainer.posthoc.report", fake)
    monkeypatch.setattr(after, "has_test_split", lambda run_dir: False)
    assert after.after_run(run, record) is None  # no test data: no evaluation, the report all the same
    assert [e[0] for e in events] == ["report"]


# ----------------------------------------------------------------------------- --data: another folder
def write_tones(root: Path, classes: dict[str, float], per_class: int, splits=("train", "val", "test")) -> Path:
    import soundfile as sf

    t = np.arange(4000) / 8000
    for s, split in enumerate(splits):
        for name, freq in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                noise = np.random.default_rng(100 * s + i).normal(size=t.size) * 0.05
                sf.write(folder / f"{i}.wav", np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) * 0.5 + noise, 8000)
    return root


def test_data_evaluates_another_folder_laid_out_like_the_training_data(tmp_path, capsys):
    tones = {"low": 300.0, "mid": 900.0, "high": 2500.0}
    raw = changed(MFCC_TINY, data={"source": "audio_folder", "root": str(write_tones(tmp_path / "d", tones, 4)),
                                   "duration": 0.5, "sample_rate": 8000}, name="folders")
    run_dir = train(tmp_path, raw, "folders")
    capsys.readouterr()
    other = write_tones(tmp_path / "other", tones, 3)
    code, out = evaluate(run_dir, "--data", str(other), "--json", capsys=capsys)
    result = json.loads(out.out)
    assert code == 0 and result["n"] == 9 and result["data"] == str(other)
    wrong = write_tones(tmp_path / "wrong", {"low": 300.0, "other": 900.0, "high": 2500.0}, 2)
    code, out = evaluate(run_dir, "--data", str(wrong), capsys=capsys)
    assert code == 2 and "not laid out like the training data" in out.err
    with pytest.raises(ClassifierError, match="folder not found"):
        from trainer.posthoc.evaluate import evaluate_run
        evaluate_run(run_dir, data=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("module", ["trainer.posthoc.after", "trainer.posthoc.calibration"])
def test_end_of_run_and_calibration_modules_are_torch_free(module):
    """The worker's fake trainers and `status` pay nothing for a run without test data."""
    from tests.test_layering import _heavy_imports

    proc = _heavy_imports(module, ("torch", "textual"))
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- a run read from its feature store
TONES = {"low": 300.0, "mid": 900.0, "high": 2500.0}


@pytest.fixture(scope="module")
def store_run(tmp_path_factory) -> Path:
    """A finished run trained from a float32 feature store of 4 tones per class and split."""
    tmp = tmp_path_factory.mktemp("storerun")
    raw = changed(MFCC_TINY, data={"source": "audio_folder", "root": str(write_tones(tmp / "d", TONES, 4)),
                                   "store": str(tmp / "store"), "store_dtype": "float32", "prepare_workers": 1,
                                   "duration": 0.5, "sample_rate": 8000}, name="stored")
    return train(tmp, raw, "stored")


def test_data_on_a_store_run_evaluates_the_folder_not_the_store(store_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(store_run, tmp_path / "run"))
    other = write_tones(tmp_path / "other", TONES, 3)
    code, out = evaluate(run_dir, "--data", str(other), "--json", capsys=capsys)
    result = json.loads(out.out)
    assert code == 0 and result["data"] == str(other) and result["n"] == 9  # the store's test split has 12


def test_tta_on_a_store_run_decodes_the_source_files_in_the_stores_order(store_run, tmp_path, capsys, monkeypatch):
    import torch

    run_dir = Path(shutil.copytree(store_run, tmp_path / "run"))
    fake = types.ModuleType("trainer.posthoc.tta")
    fake.transform_names = lambda cfg: ["original"]
    fake.tta_probabilities = lambda clf, bases, batch_size=32, calibrated=True: \
        torch.softmax(torch.stack([clf.logits(clf.inputs(b)[None])[0] for b in bases]) / clf.temperature, dim=-1)
    monkeypatch.setitem(sys.modules, "trainer.posthoc.tta", fake)
    code, out = evaluate(run_dir, "--tta", "--json", capsys=capsys)
    assert code == 0, out.err
    result = json.loads(out.out)
    saved = np.load(RunDir(run_dir).predictions("test", "best"))
    # the plain model on the decoded files gives the probabilities of the stored features, example by example
    np.testing.assert_allclose(saved["tta_probs"], calibration.softmax(saved["logits"], result["temperature"]),
                               atol=1e-4)
    gone = next((store_run.parent / "d" / "test" / "mid").iterdir())
    moved = gone.rename(tmp_path / "moved.wav")
    try:
        code, out = evaluate(run_dir, "--tta", capsys=capsys)
    finally:
        moved.rename(gone)
    assert code == 2 and "1 of its 12 files are gone" in out.err and gone.name in out.err
