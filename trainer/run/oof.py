"""Out-of-fold predictions of a cross-validation (trainer.run.cv): every pool example predicted
once, by the fold run that did not train on it.

Each fold, once finished, evaluates its validation split (its held-out fold) with best.pt through
`longhaul evaluate`'s path (trainer.posthoc.after), which leaves predictions-val-best.npz (names,
labels, logits, classes) in the fold's directory. `collect(parent)` joins them when every fold has
one: the fold that finishes last writes the parent's files, and so does any later call (a fold
resumed and finished again). Two folds finishing together both write the same content; each
write is atomic, so a reader sees one whole file or none.

    oof_predictions.npz: names (N,), labels (N,), fold (N,) 0-based, probabilities (N, C)
                         float32 (softmax of the logits, uncalibrated: a temperature fitted on the
                         fold is fitted on these very examples), classes (C,)
    oof_predictions.csv: name,label,fold,<class 1>,...,<class C>  (label and fold as numbers)

numpy only, no torch.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.run.cv import read_cv
from trainer.run.errors import RunError
from trainer.run.rundir import CvDir, RunDir, atomic_write_bytes
from trainer.run.state import read_state

SPLIT, WEIGHTS = "val", "best"


def fold_predictions(run_dir: Path) -> Path:
    """Where a fold's held-out predictions are (the npz `longhaul evaluate --split val` writes)."""
    return RunDir(run_dir).predictions(SPLIT, WEIGHTS)


def ready(folds: list[dict], finishing: Optional[int]) -> bool:
    """Whether every fold has its held-out predictions and finished. The fold `finishing` (the
    caller) is not asked: a daemon's worker runs this before its daemon wrote `finished`."""
    return all(fold_predictions(Path(f["dir"])).is_file()
               and (f["index"] == finishing or read_state(Path(f["dir"])).get("state") == "finished")
               for f in folds)


def collect(parent: Path, finishing: Optional[int] = None) -> Optional[Path]:
    """Write the parent's out-of-fold files when every fold is ready (`finishing`: the index of
    the fold that calls, just finished); returns the npz path, None while a fold is missing.
    RunError when the folds disagree (classes, an example in two folds)."""
    doc = read_cv(parent)
    folds = sorted(doc["folds"], key=lambda f: f["index"])
    if not ready(folds, finishing):
        return None
    parts = [load_fold(Path(f["dir"]), f["index"]) for f in folds]
    classes = parts[0]["classes"]
    for fold, part in zip(folds, parts):
        if list(part["classes"]) != list(classes):
            raise RunError(f"{fold['name']} has the classes {list(part['classes'])}, fold 1 {list(classes)}")
    joined = {key: np.concatenate([part[key] for part in parts]) for key in ("names", "labels", "fold", "probabilities")}
    names, counts = np.unique(joined["names"], return_counts=True)
    if (counts > 1).any():
        raise RunError(f"the folds of {parent} overlap: {str(names[counts > 1][0])!r} is in the validation split of "
                       f"{int(counts.max())} folds (were their configs changed?)")
    files = CvDir(parent)
    buffer = io.BytesIO()
    np.savez(buffer, **joined, classes=classes)
    atomic_write_bytes(files.oof_csv, table(joined, classes).encode())
    atomic_write_bytes(files.oof_npz, buffer.getvalue())  # last: its presence says both are whole
    return files.oof_npz


def load_fold(run_dir: Path, index: int) -> dict:
    """One fold's held-out predictions as names, labels, fold, probabilities, classes."""
    path = fold_predictions(run_dir)
    with np.load(path, allow_pickle=False) as npz:
        if "names" not in npz:
            raise RunError(f"{path} has no example names (written by an older longhaul evaluate): run "
                           f"`longhaul evaluate {run_dir} --split val` again")
        logits = npz["logits"].astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"names": npz["names"].astype(str), "labels": npz["labels"].astype(np.int64),
                "fold": np.full(len(logits), index, dtype=np.int64),
                "probabilities": (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32),
                "classes": npz["classes"].astype(str)}


def table(joined: dict, classes) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "label", "fold", *[str(c) for c in classes]])
    for name, label, fold, probs in zip(joined["names"], joined["labels"], joined["fold"], joined["probabilities"]):
        writer.writerow([name, int(label), int(fold), *[f"{p:.6g}" for p in probs]])
    return out.getvalue()
