"""Where runs are and what they are called: the runs root, run names, finding a run by name or
path (under the root, else in the user's registry), creating a new run directory. No torch.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from trainer.run import registry
from trainer.run.errors import InvalidRunName, RunError, RunExists, RunNotFound
from trainer.run.rundir import is_run_dir, make_run_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
#: Longest run name `start --name` accepts (file systems allow 255 bytes per name; a name is
#: also typed, shown in tables and put into socket names).
NAME_MAX = 100


def runs_root() -> Path:
    """Root of run directories: `$LONGHAUL_ROOT`, else `./checkpoints` (absolute)."""
    root = os.environ.get("LONGHAUL_ROOT") or "checkpoints"
    return Path(root).expanduser().absolute()


def check_run_name(name: str) -> str:
    """Return `name` if it is a valid run name, else raise InvalidRunName (a ValueError) saying why."""
    if not name or not _NAME_RE.match(name) or name in (".", ".."):
        raise InvalidRunName(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' only")
    if len(name) > NAME_MAX:
        raise InvalidRunName(f"invalid run name {name[:20]!r}... ({len(name)} characters): "
                             f"at most {NAME_MAX} characters")
    return name


def run_names(root: Path) -> list[str]:
    """Names of the run directories directly under `root`, sorted ([] when it is unreadable)."""
    try:
        return sorted(p.name for p in root.iterdir() if is_run_dir(p))
    except OSError:  # missing or unreadable root: no runs there
        return []


def resolve_run(name_or_path: str | os.PathLike, root: Optional[Path] = None) -> Path:
    """A run name under `root` (default `runs_root()`) or a run directory path -> absolute path.

    Raises RunNotFound naming the runs that do exist.
    """
    root = Path(root) if root is not None else runs_root()
    text = str(name_or_path)
    # any directory name (spaces, unicode: made with --run-dir) addresses its run
    if text and "/" not in text and text not in (".", "..") and safe_is_run_dir(root / text):
        return (root / text).absolute()
    path = Path(text).expanduser()
    if safe_is_run_dir(path):
        return path.absolute()
    if text and "/" not in text:
        found = _registered_named(text)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise RunNotFound(f"several registered runs are named {text!r}: "
                              f"{', '.join(str(p) for p in found)}; give the directory instead")
    names = run_names(root)
    known = f"runs under {root}: {', '.join(names)}" if names else f"no runs under {root}"
    raise RunNotFound(f"no run named or at {text!r} ({known})")


def safe_is_run_dir(path: Path) -> bool:
    """`is_run_dir`, False when the path cannot even be looked at."""
    try:
        return is_run_dir(path)
    except OSError:  # name too long, permission denied on a parent...
        return False


def _registered_named(name: str) -> list[Path]:
    """Registered run directories (see trainer.run.registry) whose directory name is `name`."""
    return [path for path in registry.registered() if path.name == name and safe_is_run_dir(path)]


def create_run_dir(root: Path, name: str) -> Path:
    """Create `root/name` (and root), private (make_run_dir). Raises RunExists if it is taken,
    InvalidRunName for bad names and RunError when the file system refuses (read-only root,
    path too long, no permission)."""
    check_run_name(name)
    path = Path(root) / name
    try:
        make_run_dir(path)
    except FileExistsError:
        raise RunExists(f"run {name!r} already exists at {path}; pick another --name or resume it") from None
    except OSError as exc:
        raise RunError(f"cannot create the run directory {path}: {exc.strerror or exc}") from None
    return path.absolute()
