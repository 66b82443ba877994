"""A k-fold cross-validation (`longhaul cv`): a parent directory and k ordinary runs, its folds.

    ROOT/NAME/cv.json          the parent (not a run: no config.yaml, no state.json)
    ROOT/NAME-fold1 ... -foldK ordinary runs (config.yaml with data.folds {k, index}; cv-fold.json
                               names the parent), queued, resumed, attached like any run

`create_cv` makes them all or nothing; `find_cv`, `read_cv` and `fold_parent` find them again
(trainer.run.cv_status: what `status NAME` shows; trainer.run.oof: the out-of-fold file). No torch.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from trainer.run import registry
from trainer.run.errors import RunError
from trainer.run.locate import check_run_name, create_run_dir, runs_root
from trainer.run.rundir import CvDir, RunDir, atomic_write_bytes, atomic_write_json

VERSION = 1


def fold_name(name: str, index: int) -> str:
    """The run name of fold `index` (0-based) of the cross-validation `name`: NAME-fold1, ..."""
    return f"{name}-fold{index + 1}"


def create_cv(root: Path, name: str, cfg, k: int, source: str) -> tuple[Path, list[Path]]:
    """The parent directory ROOT/name and k fold runs ROOT/name-fold1.. with their configs (cfg with
    data.folds {k, index} and the fold's name); cv.json is written last. Anything made is removed
    when a step fails (RunExists when a name is taken, InvalidRunName for a bad one)."""
    check_run_name(fold_name(name, k - 1))  # the longest name: refused before anything is made
    made: list[Path] = []
    try:
        made.append(create_run_dir(root, name))
        for index in range(k):
            made.append(create_fold(root, name, cfg, k, index, made[0]))
        write_cv(made[0], cfg, k, source, made[1:])
    except BaseException:
        remove_cv(made)
        raise
    return made[0], made[1:]


def remove_cv(made: list[Path]) -> None:
    """Undo a cross-validation that could not be set up: its directories, the folds' registry
    entries. Only for one whose folds never ran (create_cv, a queue that refused them)."""
    for path in reversed(made):
        shutil.rmtree(path, ignore_errors=True)
        registry.unregister(path)


def create_fold(root: Path, name: str, cfg, k: int, index: int, parent: Path) -> Path:
    """One fold's run directory with its config.yaml and cv-fold.json; registered like `start`'s."""
    from trainer.config import FoldsConfig, dump_config

    run_dir = create_run_dir(root, fold_name(name, index))
    data = cfg.data.model_copy(update={"folds": FoldsConfig(k=k, index=index)})
    fold_cfg = cfg.model_copy(update={"data": data, "name": run_dir.name})
    files = RunDir(run_dir)
    atomic_write_bytes(files.config, dump_config(fold_cfg).encode())
    atomic_write_json(files.cv_fold, {"parent": str(parent), "index": index, "k": k})
    registry.register(run_dir)
    return run_dir


def write_cv(parent: Path, cfg, k: int, source: str, folds: list[Path]) -> None:
    from trainer.config import resolved_dict

    atomic_write_json(CvDir(parent).cv, {
        "version": VERSION, "name": parent.name, "k": k, "source": source, "created": time.time(),
        "monitor": cfg.eval.monitor, "config": resolved_dict(cfg),
        "folds": [{"index": i, "name": d.name, "dir": str(d)} for i, d in enumerate(folds)]})


# ----------------------------------------------------------------------------- finding and reading
def read_cv(parent: Path) -> dict:
    """cv.json of the parent directory; RunError naming the file when it is damaged."""
    path = CvDir(parent).cv
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read the cross-validation's file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("folds"), list) or not isinstance(doc.get("k"), int):
        raise RunError(f"{path}: expected an object with 'k' and a list of 'folds'")
    return doc


def is_cv_dir(path: Path) -> bool:
    try:
        return CvDir(path).looks_like_cv()
    except OSError:
        return False


def find_cv(name_or_path: str, root: Optional[Path] = None) -> Optional[Path]:
    """The parent directory `name_or_path` names (a name under the root, or a path), else None."""
    root = Path(root) if root is not None else runs_root()
    text = str(name_or_path)
    for candidate in ([root / text] if text and "/" not in text else []) + [Path(text).expanduser()]:
        if is_cv_dir(candidate):
            return candidate.absolute()
    return None


def cv_names(root: Path) -> list[str]:
    """The cross-validations directly under `root`, sorted ([] when it is unreadable)."""
    try:
        return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and is_cv_dir(Path(entry.path)))
    except OSError:
        return []


def fold_parent(run_dir: Path) -> Optional[tuple[Path, int]]:
    """(parent directory, fold index) of a fold run, None for any other run."""
    try:
        link = json.loads(RunDir(run_dir).cv_fold.read_text())
        return Path(link["parent"]), int(link["index"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{RunDir(run_dir).cv_fold}: damaged ({exc})") from None
