"""`longhaul report`: one self-contained HTML page of a run (trainer/posthoc/report.py).

Small fake run directories in the shared formats (history, plan, events, state, config,
evaluation.json, calibration.json, predictions npz) for a binary and a 3-class run: the page has
every section with its images embedded, no external resource, and says what is missing instead of
failing when there is no evaluation (or no test split, or a damaged file). The curve helpers are
checked against scikit-learn and hand-worked values.
"""
from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report extra: pip install 'longhaul[report]'")

from trainer.history import HistoryWriter
from trainer.posthoc import report
from trainer.posthoc import report_figures as figs
from trainer.run.events import EventLog
from trainer.run.plan import write_plan
from trainer.run.rundir import RunDir, atomic_write_json
from trainer.run.state import StateFile

HEADINGS = ["Training curves", "Evaluation", "Confusion matrix", "Per-class metrics", "ROC and PR curves",
            "Calibration", "Time per phase", "Checkpoints and crashes", "Config"]
T0 = 1_700_000_000.0
STEPS, EVAL_EVERY, GAP_AT = 60, 20, 45  # a 2-hour interruption before step GAP_AT


def _plan(total: int) -> dict:
    half = total // 2
    phases = [{"index": 0, "name": "head", "start_step": 0, "end_step": half, "steps": half},
              {"index": 1, "name": "full", "start_step": half, "end_step": total, "steps": total - half}]
    return {"phases": phases, "total_steps": total, "lr_curve": [[s, 0.01 * (1 - s / total)] for s in range(total)]}


def _history(rd: RunDir) -> None:
    with HistoryWriter(rd.history) as writer:
        now = T0
        for step in range(1, STEPS + 1):
            now += 7200.0 if step == GAP_AT else 2.0
            phase = 0 if step <= STEPS // 2 else 1
            writer.append({"kind": "train", "step": step, "epoch": step // 10, "phase": phase, "time": now,
                           "train_loss": 2.0 / step ** 0.5, "lr": 0.01 * (1 - (step - 1) / STEPS), "grad_norm": 1.0})
            if step % EVAL_EVERY == 0:
                now += 5.0
                writer.append({"kind": "eval", "step": step, "epoch": step // 10, "phase": phase, "time": now,
                               "val_loss": 1.5 / step ** 0.3, "val_accuracy": 0.5 + step / 200,
                               "val_f1_macro": 0.4 + step / 200, "val_f1_weighted": 0.45 + step / 200})


def _events(rd: RunDir) -> None:
    log = EventLog(rd.events).open()
    log.add("phase", "info", "phase 1/2 head", {"index": 0, "name": "head"}, at=T0)
    for step in (20, 40, 60):
        log.add("checkpoint", "info", f"checkpoint step {step}", {"step": step, "stall_s": 0.01, "write_s": 0.4,
                                                                  "bytes": 3_000_000, "path": "x"}, at=T0 + step)
    log.add("crash", "error", "worker crashed (signal 9)", {"returncode": -9, "signal": 9,
                                                            "traceback": "Traceback: <boom> & more"}, at=T0 + 100)
    log.add("restart", "warning", "restarting in 2 s (attempt 1)", {"attempt": 1, "delay": 2.0}, at=T0 + 101)
    log.add("alert", "warning", "history gap", {"what": "history_gap"}, at=T0 + 102)
    log.add("eval", "info", "not listed", {"step": 60}, at=T0 + 103)
    log.close()


def _predictions(n_classes: int, n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and over-confident logits that carry the label (a model worth a report)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), labels] += 1.5
    return labels, (logits * 3).astype(np.float32)


def _result(split: str, weights: str, labels, logits, classes, at: float, tta: bool) -> dict:
    probs = figs.softmax(logits, 2.0)
    pred = probs.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), int)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {c: {"precision": 0.7, "recall": 0.6, "f1": 0.65, "sensitivity": 0.6, "specificity": 0.8, "ppv": 0.7,
                     "npv": 0.75, "auc_roc": 0.85, "auc_pr": 0.7, "support": int((labels == k).sum())}
                 for k, c in enumerate(classes)}
    accuracy = float((pred == labels).mean())
    return {"split": split, "weights": weights, "step": STEPS, "data": None, "time": at, "n": len(labels),
            "classes": classes, "accuracy": accuracy, "f1_macro": 0.6, "f1_weighted": 0.61,
            "auc_roc_macro": 0.85, "auc_pr_macro": 0.7, "per_class": per_class, "confusion": confusion.tolist(),
            "ci": {"accuracy": [accuracy - 0.05, accuracy + 0.05], "f1_macro": [0.5, 0.7], "auc_roc_macro": [0.8, 0.9]},
            "ci_level": 0.95, "bootstrap": 1000, "temperature": 2.0, "ece_before": 0.2, "ece_after": 0.05,
            "mce_before": 0.4, "mce_after": 0.1, "brier_before": 0.5, "brier_after": 0.4, "nll_before": 1.2,
            "nll_after": 0.8,
            "tta": {"transforms": ["original", "hflip"], "accuracy": accuracy, "f1_macro": 0.62,
                    "auc_roc_macro": 0.86, "per_class": per_class, "ece_after": 0.04} if tta else None}


def _evaluation(rd: RunDir, classes: list[str], splits=("test",), tta: bool = True) -> None:
    results = {}
    for i, split in enumerate(splits):
        labels, logits = _predictions(len(classes), seed=i)
        results[f"{split}/best"] = _result(split, "best", labels, logits, classes, T0 + 9000 + i, tta)
        extra = {"tta_probs": figs.softmax(logits * 0.9, 2.0)} if tta else {}
        np.savez(rd.predictions(split, "best"), labels=labels, logits=logits, classes=np.array(classes), **extra)
    atomic_write_json(rd.evaluation, {"version": 1, "results": results})
    atomic_write_json(rd.calibration, {"weights": {"best": {"temperature": 2.0, "step": STEPS, "split": "val",
                                                            "nll_before": 1.1, "nll_after": 0.7}}})


def make_run(root: Path, classes: list[str], evaluated=("test",), name: str = "run") -> RunDir:
    """A finished run directory with every file the report reads (`evaluated`: the splits of its
    evaluation.json; empty: not evaluated yet)."""
    rd = RunDir(root / name)
    rd.path.mkdir(parents=True)
    rd.config.write_text(f"name: {name}\nmodel: {{name: resnet18}}\n# <b>not markup</b>\n")
    write_plan(rd.path, _plan(STEPS), {"model": "resnet18", "source": "synthetic", "features": "mel",
                                       "classes": classes, "monitor": "val_f1_macro", "n_train": 100, "n_val": 20})
    _history(rd)
    _events(rd)
    StateFile(rd.path).update(name=name, state="finished", step=STEPS, total_steps=STEPS, elapsed=7300.0)
    if evaluated:
        _evaluation(rd, classes, evaluated)
    return rd


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)]


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="[^"]+"><h2>([^<]+)</h2>(.*?)</section>', page, flags=re.S))


def _self_contained(page: str) -> None:
    for forbidden in ("http://", "https://", "<script", "<link", "src=\"/", "url("):
        assert forbidden not in page, forbidden
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in _images(page))


@pytest.mark.parametrize("classes", [["negative", "positive"], ["normal", "benign", "malignant"]],
                         ids=["binary", "3-class"])
def test_report_has_every_section_with_its_images(tmp_path, classes):
    rd = make_run(tmp_path, classes)
    problems: list[str] = []
    path = report.write_report(rd.path, problems=problems)
    assert path == rd.report and problems == []
    page = path.read_text()
    sections = _sections(page)
    assert list(sections) == HEADINGS
    assert 'class="note"' not in page, "nothing is missing in a complete run"
    _self_contained(page)
    images = {h: len(_images(body)) for h, body in sections.items()}
    assert images == {"Training curves": 1, "Evaluation": 0, "Confusion matrix": 1, "Per-class metrics": 0,
                      "ROC and PR curves": 1, "Calibration": 1, "Time per phase": 1,
                      "Checkpoints and crashes": 0, "Config": 0}
    for name in classes:  # per-class table rows
        assert f"<td>{name}</td>" in sections["Per-class metrics"]
    assert "With test-time augmentation" in sections["Per-class metrics"]
    assert "<td>0.8500</td>" in sections["Per-class metrics"]  # auc_roc
    assert "95% interval" in sections["Evaluation"] and "0.8000 – 0.9000" in sections["Evaluation"]
    assert "with TTA" in sections["Evaluation"]
    events = sections["Checkpoints and crashes"]
    assert "3 checkpoints" in events and "worker crashed" in events and "restarting" in events
    assert "history gap" in events and "not listed" not in events
    assert "Traceback: &lt;boom&gt; &amp; more" in events
    assert "&lt;b&gt;not markup&lt;/b&gt;" in sections["Config"]
    assert "1 – 30" in sections["Time per phase"] and "31 – 60" in sections["Time per phase"]


def test_report_of_many_classes(tmp_path):
    classes = [f"class {i}" for i in range(20)]
    rd = make_run(tmp_path, classes)
    sections = _sections(report.write_report(rd.path).read_text())
    assert "Dashed: with test-time augmentation" in sections["ROC and PR curves"]
    assert [len(_images(sections[h])) for h in ("Confusion matrix", "ROC and PR curves", "Calibration")] == [1, 1, 1]


def test_report_without_an_evaluation_says_so(tmp_path):
    rd = make_run(tmp_path, ["a", "b", "c"], evaluated=())
    path = report.write_report(rd.path)
    sections = _sections(path.read_text())
    assert list(sections) == HEADINGS
    for heading in ("Evaluation", "Confusion matrix", "Per-class metrics", "ROC and PR curves"):
        assert "No evaluation yet" in sections[heading] and "<img" not in sections[heading]
    assert "No calibration yet" in sections["Calibration"]
    for heading in ("Training curves", "Time per phase"):
        assert len(_images(sections[heading])) == 1


def test_report_of_a_run_without_a_test_split_shows_val_and_says_so(tmp_path):
    rd = make_run(tmp_path, ["a", "b", "c"], evaluated=("val",))
    sections = _sections(report.write_report(rd.path).read_text())
    assert "No evaluation on a test split" in sections["Evaluation"] and "val/best" in sections["Evaluation"]
    assert len(_images(sections["ROC and PR curves"])) == 1


def test_report_prefers_the_test_split_and_lists_every_evaluation(tmp_path):
    rd = make_run(tmp_path, ["a", "b"], evaluated=("test", "val"))  # val evaluated later
    sections = _sections(report.write_report(rd.path).read_text())
    assert "test/best:" in sections["Evaluation"] and "All evaluations" in sections["Evaluation"]
    assert "<td>val/best</td>" in sections["Evaluation"]


def test_an_empty_run_directory_still_gets_a_report(tmp_path):
    rd = RunDir(tmp_path / "empty")
    rd.path.mkdir()
    sections = _sections(report.write_report(rd.path).read_text())
    assert list(sections) == HEADINGS
    assert "No training history yet" in sections["Training curves"]
    assert "config.yaml is missing" in sections["Config"]
    assert "No checkpoint events" in sections["Checkpoints and crashes"]


def test_damaged_files_are_named_in_the_page_and_the_rest_is_drawn(tmp_path):
    rd = make_run(tmp_path, ["a", "b", "c"])
    rd.evaluation.write_text("{not json")
    problems: list[str] = []
    page = report.write_report(rd.path, problems=problems).read_text()
    assert len(problems) == 1 and str(rd.evaluation) in problems[0]
    assert str(rd.evaluation) in page and "No evaluation yet" in page
    assert len(_images(_sections(page)["Training curves"])) == 1


def test_a_missing_or_inconsistent_predictions_file_leaves_only_the_curves_out(tmp_path):
    rd = make_run(tmp_path, ["a", "b", "c"])
    rd.predictions("test", "best").unlink()
    problems: list[str] = []
    sections = _sections(report.write_report(rd.path, problems=problems).read_text())
    assert "predictions file of test/best is missing" in sections["ROC and PR curves"]
    assert len(_images(sections["Confusion matrix"])) == 1 and "missing" in problems[0]
    np.savez(rd.predictions("test", "best"), labels=np.zeros(4, int), logits=np.zeros((4, 2)), classes=np.array(["a", "b", "c"]))
    problems = []
    report.write_report(rd.path, problems=problems)
    assert "expected labels (N,), logits (N, C)" in problems[0]


def test_cli_writes_the_file_named_by_out(tmp_path, capsys):
    from trainer import cli

    rd = make_run(tmp_path, ["a", "b"])
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    assert cli.main(["report", str(rd.path), "--out", str(out)]) == 0
    assert out.is_file() and not rd.report.exists()
    assert f"report: {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["r.html"], "no temp file left behind"


def test_cli_refuses_an_out_path_it_cannot_write(tmp_path, capsys):
    from trainer import cli

    rd = make_run(tmp_path, ["a", "b"])
    assert cli.main(["report", str(rd.path), "--out", str(tmp_path / "nope" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "longhaul report: cannot write the report" in err and "does not exist" in err
    assert cli.main(["report", str(rd.path), "--out", str(tmp_path)]) == 2
    assert "it is a directory" in capsys.readouterr().err


def test_without_matplotlib_the_message_names_the_extra(tmp_path, monkeypatch, capsys):
    from trainer import cli

    rd = make_run(tmp_path, ["a", "b"], evaluated=())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(report.ReportError, match=r"longhaul\[report\]"):
        report.write_report(rd.path)
    assert cli.main(["report", str(rd.path)]) == 2
    assert "install longhaul[report]" in capsys.readouterr().err
    assert not rd.report.exists()


def test_report_module_is_torch_free():
    code = ("import sys, trainer.posthoc.report; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'torchaudio', 'textual'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr[-800:]


# ----------------------------------------------------------------------------- the numbers
def test_phase_times_leave_interruptions_out(tmp_path):
    rd = make_run(tmp_path, ["a", "b"], evaluated=())
    rows = report.phase_times(rd.history, _plan(STEPS))
    assert [(r["name"], r["first_step"], r["last_step"], r["gaps"]) for r in rows] == [("head", 1, 30, 0), ("full", 31, 60, 1)]
    # a phase's time: the pause before each of its records (2 s a step, 5 s an evaluation)
    assert rows[0]["active_s"] == pytest.approx(29 * 2.0 + 5.0)  # the first record has no pause before it
    assert rows[1]["active_s"] == pytest.approx(29 * 2.0 + 2 * 5.0) and rows[1]["gap_s"] == pytest.approx(7200.0)


def test_curves_match_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(3)
    positive = rng.random(500) < 0.3
    score = np.round(rng.random(500) + positive * 0.4, 1)  # many ties
    assert figs.roc_curve(positive, score)[2] == pytest.approx(roc_auc_score(positive, score))
    assert figs.pr_curve(positive, score)[2] == pytest.approx(average_precision_score(positive, score))
    assert np.isnan(figs.roc_curve(np.zeros(5, bool), score[:5])[2])


def test_reliability_bins_and_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])  # correct, wrong, correct, correct
    bins = figs.reliability(labels, probs, bins=5)  # (0.4, 0.6], (0.6, 0.8], (0.8, 1.0]
    assert bins["count"].tolist() == [0, 0, 1, 2, 1]
    assert bins["accuracy"][3] == pytest.approx(0.5) and bins["confidence"][3] == pytest.approx(0.75)
    # |1 - 0.55| * 1 + |0.5 - 0.75| * 2 + |1 - 0.9| * 1, over 4
    assert bins["ece"] == pytest.approx((0.45 + 0.5 + 0.1) / 4)
    assert figs.softmax(np.log(probs), 1.0) == pytest.approx(probs)
