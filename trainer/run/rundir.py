"""The layout of a run directory (`checkpoints/<name>/`), named once, and how its files are
written: privately (umask, 0700 directories) and atomically (temp file, fsync, rename, fsync of
the directory).

Every file of a run directory is an attribute of `RunDir`; no other module spells a file name.
docs/ARCHITECTURE.md ("Run directory") says who writes each file and what it holds. No torch.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from trainer.run.errors import RunError

_CHECKPOINT_DIR = re.compile(r"^step-(\d{10})$")


class RunDir:
    """The paths of one run directory's files (nothing is read or created here).

    `RunDir(path).state` is `path/state.json`, and so on for every file the run keeps.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = self.path.name
        self.config = self.path / "config.yaml"
        """The resolved config (after --set): what the run trains, never the source YAML."""
        self.plan = self.path / "plan.json"
        """{"plan": Plan.to_dict(), "config": config summary}, written when the trainer starts."""
        self.data_auto = self.path / "data_auto.json"
        """What `data.sample_rate: auto` / `data.duration: auto` resolved to."""
        self.data_store = self.path / "data_store.json"
        """The feature store the run trains from (data.store): its summary and fingerprint, written
        when the run first builds its data; a resume refuses a store whose fingerprint differs."""
        self.state = self.path / "state.json"
        """The run's durable status (trainer.run.state.StateFile)."""
        self.history = self.path / "history.msgpack"
        """Append-only metric records (trainer.history)."""
        self.series_cache = self.path / "series-cache.msgpack"
        """Downsampled series of the history, keyed by its size and mtime (a cache)."""
        self.events = self.path / "events.jsonl"
        """Append-only events, one JSON line each (trainer.run.events.EventLog)."""
        self.train_log = self.path / "train.log"
        """The trainer's output."""
        self.daemon_log = self.path / "daemon.log"
        """The daemon's own stdout and stderr."""
        self.daemon_lock = self.path / ".daemon.lock"
        """flock'ed by the live daemon: one daemon per run."""
        self.checkpoints = self.path / "ckpt"
        """The checkpoint store: one `step-NNNNNNNNNN/` directory per checkpoint."""
        self.best_weights = self.path / "best.pt"
        """Model weights of the best evaluation."""
        self.last_weights = self.path / "last.pt"
        """Model weights at the end of the run."""
        self.calibration = self.path / "calibration.json"
        """The temperature fitted on the validation split (`longhaul evaluate`), used by predict and export."""
        self.evaluation = self.path / "evaluation.json"
        """The latest `longhaul evaluate` result per split and weights (trainer.posthoc.evaluate)."""
        self.report = self.path / "report.html"
        """`longhaul report`: the run in one self-contained HTML page."""
        self.replica_origin = self.path / "replica-of.txt"
        """In a replica (checkpoint.replicate_to.dir), the absolute path of the run directory it
        copies: another run of the same name is refused there instead of mixing checkpoints."""
        self.cv_fold = self.path / "cv-fold.json"
        """In a fold of a cross-validation (`longhaul cv`): {parent, index, k}, the parent's
        directory (trainer.run.cv) that collects the folds' out-of-fold predictions."""

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def corrupt_state_copy(self, at: float) -> Path:
        """Where a damaged state.json is kept when it is rebuilt at unix time `at`."""
        return self.path / f"{self.state.name}.corrupt-{int(at)}"

    def history_aside(self, at: float) -> Path:
        """Where the history is moved when the run starts over at unix time `at` (never truncated)."""
        return self.path / f"history.before-restart-{int(at)}.msgpack"

    def predictions(self, split: str, weights: str) -> Path:
        """Labels and probabilities of the latest evaluation of `split` with `weights` (npz), for
        the report's curves."""
        return self.path / f"predictions-{split}-{weights}.npz"

    def export_dir(self, fmt: str) -> Path:
        """Default folder of `longhaul export-model --format fmt` (onnx, torchscript)."""
        return self.path / f"export-{fmt}"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint directory of `step`."""
        return self.checkpoints / checkpoint_dir_name(step)

    def looks_like_run(self) -> bool:
        """True when the directory has a config or a state file (OSError on a path too long...)."""
        return self.path.is_dir() and (self.config.is_file() or self.state.is_file())

    def newest_checkpoint(self) -> Optional[dict]:
        """{step, path, time (mtime)} of the highest `ckpt/step-N` directory (None if none). Its
        files are not checked: that is the checkpoint store's job."""
        best = None
        try:
            for entry in os.scandir(self.checkpoints):
                step = checkpoint_step(entry.name)
                if step is not None and entry.is_dir(follow_symlinks=False) and (best is None or step > best[0]):
                    best = (step, entry.path)
        except OSError:
            return None
        if best is None:
            return None
        return {"step": best[0], "path": best[1], "time": os.stat(best[1]).st_mtime}


class CvDir:
    """The files of a cross-validation's parent directory (`longhaul cv`, trainer.run.cv): not a
    run (no config.yaml, no state.json), so ls, resume --all and the daemon never take it for one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = self.path.name
        self.cv = self.path / "cv.json"
        """{version, name, k, config, source, created, folds: [{index, name, dir}]}, written last."""
        self.oof_npz = self.path / "oof_predictions.npz"
        """Out-of-fold predictions of the whole pool: names, labels, fold, probabilities, classes."""
        self.oof_csv = self.path / "oof_predictions.csv"
        """The same as a table: name, label, fold, one probability column per class."""

    def looks_like_cv(self) -> bool:
        return self.cv.is_file()


def checkpoint_dir_name(step: int) -> str:
    """`step-0000001234`: the name of a checkpoint's directory under `ckpt/`."""
    return f"step-{step:010d}"


def checkpoint_step(name: str) -> Optional[int]:
    """The step a checkpoint directory name stands for, or None for any other name."""
    match = _CHECKPOINT_DIR.match(name)
    return int(match.group(1)) if match else None


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when `path` looks like a run directory (has a config or a state file)."""
    return RunDir(path).looks_like_run()


# ----------------------------------------------------------------------------- privacy
def private_umask() -> int:
    """The umask longhaul runs under: 0o077 (run data is private: directories 0700, files 0600)
    unless `$LONGHAUL_UMASK` (octal, e.g. 022) relaxes it."""
    text = os.environ.get("LONGHAUL_UMASK", "").strip()
    if text:
        try:
            value = int(text, 8)
        except ValueError:
            raise RunError(f"LONGHAUL_UMASK={text!r} is not an octal umask such as 077 or 022") from None
        if 0 <= value <= 0o777:
            return value
        raise RunError(f"LONGHAUL_UMASK={text!r} is out of range (000 to 777)")
    return 0o077


def apply_umask() -> int:
    """Set the process umask to `private_umask()` (entry points call this first); returns it."""
    value = private_umask()
    os.umask(value)
    return value


def make_run_dir(path: Path, exist_ok: bool = False) -> None:
    """mkdir a run directory (and its parents) with private permissions, whatever the process
    umask: 0700 unless LONGHAUL_UMASK relaxes it."""
    mode = 0o777 & ~private_umask()
    path = Path(path).absolute()
    existing = next(p for p in path.parents if p.exists())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not exist_ok or not path.is_dir():
            raise
        return
    os.chmod(path, mode)  # mkdir's mode is filtered by the umask; the run's privacy is not
    # A directory entry survives a power cut only once its parent is fsynced: without this the
    # whole run directory was gone after a cut (tests/test_powercut.py).
    for created in [path, *path.parents]:
        fsync_dir(created.parent)
        if created.parent == existing:
            break


# ----------------------------------------------------------------------------- atomic files
def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old or the new content, never a mix, and the
    new content survives a power cut once this returns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written temp file behind
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """`atomic_write_bytes` of `obj` as indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())
