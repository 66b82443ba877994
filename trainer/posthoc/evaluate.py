"""`longhaul evaluate RUN [--split test|val] [--data PATH] [--weights best|last] [--tta] [--json]`.

The split's examples go through the run's own data pipeline (trainer.data.build_datasets with
the run's kept `auto` values; --data: the same config with data.root replaced by PATH, which
must be laid out like the training data) and the run's model (Classifier.logits). Then:

- calibration: the temperature fitted on the run's validation split (trainer.posthoc.calibration;
  reused from calibration.json when it was fitted for these weights at this step, else fitted and
  saved); ECE/MCE/Brier/NLL before and after on the evaluated split;
- metrics of the calibrated probabilities (trainer.metrics.evaluation_metrics) with stratified
  bootstrap 95% intervals (1000 resamples, seed 0) of accuracy, F1 macro and AUC-ROC macro;
- with --tta, the same metrics of the test-time-augmented probabilities beside the plain ones
  (a split read from the feature store keeps features: TTA decodes its source files again).

With data.windows (long recordings from a feature store) the split is one item per (recording,
window): the model gives logits per window, the temperature is fitted on the windows of the
validation split, and a recording's probabilities are the mean of its windows' (calibrated:
after; uncalibrated: before), as predict does. RESULT's metrics, intervals and calibration are
then per recording, and RESULT["windows"] holds n_windows and the per-window accuracy, F1 macro
and AUC-ROC macro (calibrated windows); the npz is per recording (`logits` = log of the
uncalibrated mean, so that its softmax gives the recording's probabilities back) with the
windows beside (window_logits, window_labels, window_recording).

Results: evaluation.json (`{"version": 1, "results": {"<split>/<weights>": RESULT}}`, the other
entries kept), predictions-<split>-<weights>.npz (labels, logits, classes, names, tta_probs), a text
table, or RESULT as one JSON object with --json. trainer.posthoc.after runs it when a run finishes.
"""
from __future__ import annotations

import importlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer import metrics
from trainer.data import windows
from trainer.posthoc import calibration
from trainer.posthoc.classifier import Classifier, ClassifierError, load_classifier
from trainer.run.evaluation import read_evaluation
from trainer.run.rundir import RunDir, atomic_write_bytes, atomic_write_json

BOOTSTRAP = 1000
CI_LEVEL = 0.95
BATCH = 64
VERSION = 1


class EvaluationError(ClassifierError):
    """Input `longhaul evaluate` cannot use (unknown split, --data laid out differently, no TTA)."""


class NoSplit(EvaluationError):
    """The data has no such split (a run without test data)."""


@dataclass
class SplitData:
    """The logits of one split with their labels and where the examples came from."""
    logits: np.ndarray
    labels: np.ndarray
    dataset: object


# ----------------------------------------------------------------------------- the data
def data_config(cfg, data: Optional[str]):
    """The run's config for building datasets: features not cached; with `data`, data.root
    replaced by that folder and no feature store, which holds the run's own data, not the
    folder's (EvaluationError when the run's data is not read from a folder, or is evaluated
    as windows of long recordings, which only its store has)."""
    changes: dict = {"cache": False}
    if data is not None:
        root = Path(data).expanduser().absolute()
        if cfg.data.source not in ("audio_folder", "image_folder"):
            raise EvaluationError(f"--data {data}: the run reads its data from source {cfg.data.source!r}, not a "
                                  "folder; --data takes a folder laid out like data.root (audio_folder, image_folder)")
        if cfg.data.windows.enabled:
            raise EvaluationError(f"--data {data}: this run evaluates windows of long recordings (data.windows), "
                                  "which are read from its feature store, not from a folder; evaluate without --data")
        if not root.is_dir():
            raise EvaluationError(f"--data {data}: folder not found")
        changes.update(root=str(root), store=None)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=changes)})


def build_bundle(clf: Classifier, files: RunDir, data: Optional[str] = None):
    """The run's datasets (or those of `data`), checked against the run's classes. Built once
    per evaluation: it decodes every example of every split."""
    from trainer.data import build_datasets

    bundle = build_datasets(data_config(clf.cfg, data), frozen=files.data_auto)
    if list(bundle.classes) != list(clf.classes):
        raise EvaluationError(f"{_where(data)} is not laid out like the training data: its classes are "
                              f"{bundle.classes}, the model's are {clf.classes}")
    return bundle


def _where(data: Optional[str]) -> str:
    return f"--data {data}" if data else "the run's data"


def split_of(clf: Classifier, bundle, split: str, data: Optional[str] = None):
    """The EvalDataset of `split` in `bundle`; NoSplit when the data has no such split."""
    where = _where(data)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None or len(dataset) == 0:
        hint = "a test/ folder beside train/" if clf.cfg.data.source.endswith("folder") else \
            "data.test (or data.synthetic.test_per_class)"
        raise NoSplit(f"{where} has no {split} split (it needs {hint}); evaluate --split val instead")
    return windows.evaluation_view(dataset, clf.cfg, getattr(bundle, "data_config", None))


@torch.no_grad()
def split_logits(clf: Classifier, dataset, batch_size: int = BATCH) -> SplitData:
    """Logits (N, K) float32 and labels (N,) of every example of `dataset`, in order."""
    chunks, labels = [], []
    for first in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        chunks.append(clf.logits(torch.stack([x for x, _ in batch])))
        labels += [int(y) for _, y in batch]
    logits = torch.cat(chunks).numpy().astype(np.float32)
    return SplitData(logits, np.asarray(labels, dtype=np.int64), dataset)


def bases(dataset, cfg=None, bundle=None, split: str = "test") -> list[np.ndarray]:
    """The base examples (decoded clip or image) of an EvalDataset, for TTA. A split read from the
    feature store (`bundle` of the run `cfg`) holds features, not the waveforms and pixels the transforms change:
    its examples are decoded from their source files again."""
    if windows.is_windowed(dataset):
        raise EvaluationError("--tta: this run evaluates windows of long recordings read from its feature store, "
                              "which keeps features, not the waveforms the audio transforms shift; evaluate "
                              "without --tta")
    examples = dataset.examples
    if hasattr(examples, "items"):
        items, decoder = examples.items, examples.decoder
    else:
        items, decoder = source_items(cfg, bundle, split, examples.names)
    return [item.load(decoder).base for item in items]


def source_items(cfg, bundle, split: str, names: list[str]):
    """(items, decoder) of the source files of a stored split, in the store's order: the files are
    found by name (realpath, as the store names a file by its real folder); EvaluationError when
    one is gone."""
    import os

    from trainer.data.decode import Decoder
    from trainer.data.sources import scan

    cfg = cfg.model_copy(update={"data": bundle.data_config.model_copy(update={"store": None})})
    found = {os.path.realpath(item.name): item for item in scan(cfg).splits.get(split, [])}
    wanted = [os.path.realpath(name) for name in names]
    missing = [name for name, real in zip(names, wanted) if real not in found]
    if missing:
        raise EvaluationError(f"--tta decodes the {split} split's source files again (the feature store keeps "
                              f"features, not waveforms or pixels), and {len(missing)} of its {len(names)} files "
                              f"are gone, e.g. {missing[0]}; restore them, or evaluate without --tta")
    return [found[real] for real in wanted], Decoder.from_config(cfg)


# ----------------------------------------------------------------------------- calibration
def temperature_fit(clf: Classifier, files: RunDir, val: Optional[SplitData], own_bundle=None) -> dict:
    """calibration.json's entry for the classifier's weights: the saved one when it was fitted
    at this step, else fitted on the run's validation split (`val`, else taken from the run's
    own datasets `own_bundle`, built here when not given) and saved."""
    saved = calibration.saved_fit(files, clf.weights, clf.step)
    if saved is not None:
        return saved
    if val is None:
        bundle = own_bundle if own_bundle is not None else build_bundle(clf, files)
        val = split_logits(clf, split_of(clf, bundle, "val"))
    record = calibration.fit_record(val.logits, val.labels, clf.step, "val")
    calibration.save_fit(files, clf.weights, record)
    return record


# ----------------------------------------------------------------------------- evaluation
def evaluate_run(run_dir, split: str = "test", weights: str = "best", data: Optional[str] = None,
                 tta: bool = False, n_boot: int = BOOTSTRAP) -> dict:
    """Evaluate the run in `run_dir` (see the module docstring) and store the result; returns
    RESULT. EvaluationError/NoSplit/ClassifierError/DataError for input it cannot use."""
    if split not in ("test", "val"):
        raise EvaluationError(f"unknown split {split!r}: a run has the splits test and val")
    files = RunDir(run_dir)
    tta_module = _tta_module() if tta else None
    clf = load_classifier(run_dir, weights, calibrated=False)
    bundle = build_bundle(clf, files, data)
    evaluated = split_logits(clf, split_of(clf, bundle, split, data))
    own_val = evaluated if split == "val" and data is None else None
    fit = temperature_fit(clf, files, own_val, bundle if data is None else None)
    clf.temperature = float(fit["temperature"])
    result = result_of(clf, evaluated, fit, split, data, n_boot)
    tta_probs = None
    if tta_module is not None:
        tta_bases = bases(evaluated.dataset, clf.cfg, bundle, split)
        tta_probs = tta_module.tta_probabilities(clf, tta_bases, calibrated=True).numpy()
        result["tta"] = tta_result(tta_module.transform_names(clf.cfg), tta_probs, evaluated.labels, clf.classes)
    store(files, result, evaluated, clf.classes, tta_probs)
    return result


def result_of(clf: Classifier, data: SplitData, fit: dict, split: str, path: Optional[str], n_boot: int) -> dict:
    """RESULT (the shared evaluation.json format) of the split's logits (per recording, with a
    "windows" section, when the split is windows of long recordings)."""
    temperature = float(fit["temperature"])
    labels, uncalibrated, probs = data.labels, calibration.softmax(data.logits), calibration.softmax(data.logits, temperature)
    windowed = windows.is_windowed(data.dataset)
    if windowed:
        window_probs, dataset = probs, data.dataset
        labels = dataset.recording_labels
        uncalibrated = windows.recording_probabilities(uncalibrated, dataset.recording, dataset.recordings)
        probs = windows.recording_probabilities(probs, dataset.recording, dataset.recordings)
    before = calibration.calibration_errors(uncalibrated, labels)
    after = calibration.calibration_errors(probs, labels)
    result = {"split": split, "weights": clf.weights, "step": clf.step,
              "data": str(Path(path).expanduser().absolute()) if path else None, "time": time.time()}
    result.update(metrics.evaluation_metrics(labels, probs, clf.classes))
    result.update(ci=metrics.bootstrap_intervals(labels, probs, n_boot, CI_LEVEL), ci_level=CI_LEVEL,
                  bootstrap=n_boot, temperature=temperature, calibration_split=fit.get("split", "val"), tta=None)
    for key in ("ece", "mce", "brier", "nll"):
        result[f"{key}_before"], result[f"{key}_after"] = before[key], after[key]
    if windowed:
        result["windows"] = windows_result(clf, data, window_probs)
    return result


def windows_result(clf: Classifier, data: SplitData, window_probs: np.ndarray) -> dict:
    """RESULT's "windows" section: how many windows, their geometry, and the per-window metrics
    of the calibrated window probabilities."""
    geometry = data.dataset.windows
    seconds = lambda rows: rows * geometry.row_samples / clf.decoder.sample_rate  # noqa: E731
    full = metrics.evaluation_metrics(data.labels, window_probs, clf.classes)
    return {"n_windows": int(len(data.labels)), "n_recordings": int(data.dataset.recordings),
            "window_seconds": clf.decoder.n_samples / clf.decoder.sample_rate, "hop_seconds": seconds(geometry.hop),
            "accuracy": full["accuracy"], "f1_macro": full["f1_macro"], "auc_roc_macro": full["auc_roc_macro"]}


def tta_result(names: list[str], probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """RESULT's `tta` entry: the metrics of the test-time-augmented probabilities."""
    full = metrics.evaluation_metrics(labels, probs, classes)
    return {"transforms": list(names), "accuracy": full["accuracy"], "f1_macro": full["f1_macro"],
            "auc_roc_macro": full["auc_roc_macro"], "per_class": full["per_class"],
            "ece_after": calibration.calibration_errors(probs, labels)["ece"]}


def _tta_module():
    return importlib.import_module("trainer.posthoc.tta")  # through sys.modules: tests put a stand-in there


def store(files: RunDir, result: dict, data: SplitData, classes: list[str], tta_probs: Optional[np.ndarray]) -> None:
    """The predictions npz and the result in evaluation.json (both atomic; other entries kept)."""
    arrays = {"labels": data.labels, "logits": data.logits.astype(np.float32), "classes": np.asarray(classes, dtype=str)}
    if windows.is_windowed(data.dataset):
        arrays.update(recording_arrays(data))
    elif hasattr(data.dataset, "names"):  # which example each row is: the out-of-fold file names them
        arrays["names"] = np.asarray(data.dataset.names, dtype=str)
    if tta_probs is not None:
        arrays["tta_probs"] = np.asarray(tta_probs, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(files.predictions(result["split"], result["weights"]), buffer.getvalue())
    doc = read_evaluations(files)
    doc["results"][f"{result['split']}/{result['weights']}"] = result
    atomic_write_json(files.evaluation, doc)


def recording_arrays(data: SplitData) -> dict:
    """The npz of a windowed split: per recording (labels; logits whose softmax is the mean of the
    windows' uncalibrated probabilities) with the windows' own beside them."""
    dataset = data.dataset
    probs = windows.recording_probabilities(calibration.softmax(data.logits), dataset.recording, dataset.recordings)
    return {"labels": dataset.recording_labels, "logits": np.log(np.clip(probs, 1e-30, None)).astype(np.float32),
            "window_logits": data.logits.astype(np.float32), "window_labels": data.labels,
            "window_recording": dataset.recording}


def read_evaluations(files: RunDir) -> dict:
    """evaluation.json (trainer.run.evaluation's reading), or an empty one when it is missing or
    unreadable."""
    try:
        doc = read_evaluation(files.path)
    except (OSError, ValueError):
        doc = None
    return doc if doc is not None else {"version": VERSION, "results": {}}


# ----------------------------------------------------------------------------- the command
def main(args, run_dir) -> int:
    """`longhaul evaluate`: prints the text table, or RESULT as JSON with --json."""
    from trainer.posthoc.classifier import run_config

    torch.set_num_threads(run_config(run_dir).threads)
    result = evaluate_run(run_dir, args.split, args.weights, args.data, args.tta)
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def format_result(r: dict) -> str:
    """The readable table of one RESULT."""
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda key: f"  [{num(r['ci'][key][0])}, {num(r['ci'][key][1])}]" if r["ci"].get(key) else ""  # noqa: E731
    lines = [f"{r['split']} split{' of ' + r['data'] if r['data'] else ''}, {r['weights']} weights (step {r['step']}), "
             f"{r['n']} examples; {int(r['ci_level'] * 100)}% intervals from {r['bootstrap']} stratified bootstrap resamples",
             f"  accuracy       {num(r['accuracy'])}{ci('accuracy')}",
             f"  F1 macro       {num(r['f1_macro'])}{ci('f1_macro')}",
             f"  F1 weighted    {num(r['f1_weighted'])}",
             f"  AUC-ROC macro  {num(r['auc_roc_macro'])}{ci('auc_roc_macro')}",
             f"  AUC-PR macro   {num(r['auc_pr_macro'])}",
             f"calibration: temperature {r['temperature']:.3f} (fitted on {r.get('calibration_split', 'val')}); "
             "before -> after",
             *(f"  {name:<6} {num(r[key + '_before'])} -> {num(r[key + '_after'])}"
               for name, key in (("ECE", "ece"), ("MCE", "mce"), ("Brier", "brier"), ("NLL", "nll"))),
             ""]
    lines += per_class_table(r["per_class"])
    lines += ["", "confusion (rows: true class, columns: predicted, in the order above)"]
    lines += ["  " + " ".join(f"{v:>5}" for v in row) for row in r["confusion"]]
    if r.get("windows"):
        w = r["windows"]
        lines += ["", f"per recording above ({w['n_recordings']} recordings, the mean of their windows' probabilities); "
                      f"per window ({w['n_windows']} windows of {w['window_seconds']:g} s every {w['hop_seconds']:.3g} s): "
                      f"accuracy {num(w['accuracy'])}, F1 macro {num(w['f1_macro'])}, AUC-ROC macro {num(w['auc_roc_macro'])}"]
    if r.get("tta"):
        t = r["tta"]
        lines += ["", f"with TTA ({', '.join(t['transforms'])}): accuracy {num(t['accuracy'])}, F1 macro "
                      f"{num(t['f1_macro'])}, AUC-ROC macro {num(t['auc_roc_macro'])}, ECE {num(t['ece_after'])}"]
    return "\n".join(lines)


def per_class_table(per_class: dict) -> list[str]:
    """One line per class: support, precision/recall/F1, the clinical rates, the AUCs."""
    cols = ("support", "precision", "recall", "f1", "sensitivity", "specificity", "ppv", "npv", "auc_roc", "auc_pr")
    width = max([5] + [len(name) for name in per_class])
    out = [f"  {'class':<{width}} " + " ".join(f"{c[:11]:>11}" for c in cols)]
    for name, row in per_class.items():
        cells = [f"{row['support']:>11}"] + [f"{'-' if row[c] is None else format(row[c], '.3f'):>11}" for c in cols[1:]]
        out.append(f"  {name:<{width}} " + " ".join(cells))
    return out


def summary_line(result: dict) -> str:
    ci = result["ci"].get("accuracy")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    auc = result["auc_roc_macro"]
    return (f"{result['split']} ({result['n']} examples): accuracy {result['accuracy']:.3f}{interval}, "
            f"F1 macro {result['f1_macro']:.3f}, AUC-ROC {'-' if auc is None else format(auc, '.3f')}, "
            f"ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f} (T {result['temperature']:.2f})")
