"""The user's registry of run directories, wherever they live.

A run can live under any runs root (`--root`, `$LONGHAUL_ROOT`, `./checkpoints` of whatever the
current directory was) or anywhere at all (`--run-dir`). So that `longhaul ls`, the attach
picker, `status`/`attach` by name and `resume --all` (the boot job) see every run of the user,
`start`, `train` and `resume` register the absolute path of the run directory here, as pueue
keeps its state in the user's state directory:

    $LONGHAUL_STATE_DIR                     (tests), else
    $XDG_STATE_HOME/longhaul/runs/          (default ~/.local/state/longhaul/runs/)
        <sha256 of the path, 16 hex>.json   {"dir": "/abs/run/dir", "registered": unix time}

One small file per run, written atomically (temp file, fsync, rename, fsync of the directory):
concurrent writers never clobber each other's entries, and a power cut leaves an entry whole or
absent. Registering is best effort: a registry that cannot be written (read-only home) costs a
warning, never the run. No torch here.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from trainer.run.rundir import atomic_write_bytes


def state_dir() -> Path:
    """`$LONGHAUL_STATE_DIR`, else `$XDG_STATE_HOME/longhaul`, else `~/.local/state/longhaul`."""
    override = os.environ.get("LONGHAUL_STATE_DIR")
    if override:
        return Path(override).expanduser().absolute()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base).expanduser().absolute() / "longhaul"


def entries_dir() -> Path:
    return state_dir() / "runs"


def _entry(run_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:16]
    return entries_dir() / f"{digest}.json"


def register(run_dir: Path) -> bool:
    """Remember `run_dir` (absolute). Returns False (with a warning on stderr) when the registry
    cannot be written."""
    run_dir = Path(run_dir).absolute()
    entry = _entry(run_dir)
    try:
        if entry.is_file() and _read_entry(entry) == run_dir:
            return True
        folder = entries_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({"dir": str(run_dir), "registered": time.time()}) + "\n"
        atomic_write_bytes(entry, data.encode())
    except OSError as exc:
        print(f"longhaul: warning: cannot register {run_dir} in {entries_dir()}: {exc.strerror or exc} "
              f"(ls and resume --all will only find it under its runs root)", file=sys.stderr)
        return False
    return True


def unregister(run_dir: Path) -> None:
    """Forget `run_dir` (nothing happens when it was not registered)."""
    try:
        _entry(Path(run_dir).absolute()).unlink()
    except OSError:
        pass


def _read_entry(path: Path):
    """The run directory an entry names, or None for an unreadable or foreign file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    text = data.get("dir") if isinstance(data, dict) else None
    return Path(text) if isinstance(text, str) and os.path.isabs(text) else None


def registered() -> list[Path]:
    """Every registered run directory (existing or not), sorted by path."""
    try:
        names = sorted(os.listdir(entries_dir()))
    except OSError:
        return []
    found = set()
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            path = _read_entry(entries_dir() / name)
            if path is not None:
                found.add(path)
    return sorted(found)
