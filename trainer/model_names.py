"""The model names timm can build, without importing timm each time.

`longhaul start` checks the config's model name before it launches anything, so that a typo is
reported in the user's terminal. timm only lists its models once imported, and importing it
(torch, torchvision) took 3 s on an idle 2-core box and most of the 12 s `start` took on a busy
one. The list is written once per installed timm to the per-user state directory and read from
there after (a few milliseconds); a missing, damaged or unwritable cache only costs the import.

Torch-free at import (config.py, the CLI and the daemon use it).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Optional

from trainer.run.registry import state_dir
from trainer.run.rundir import atomic_write_bytes

CACHE_PREFIX = "timm-models-"


def timm_identity() -> Optional[str]:
    """What identifies the installed timm (its directory and the mtime of its version file),
    found without importing it; None when timm is not installed."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.origin:
        return None
    package = Path(spec.origin).parent
    try:
        stamp = os.stat(package / "version.py").st_mtime_ns
    except OSError:
        stamp = 0
    return f"{package}:{stamp}"


def cache_path(identity: str) -> Path:
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return state_dir() / f"{CACHE_PREFIX}{digest}.txt"


def timm_models() -> list[str]:
    """Every model name timm lists (from the cache when it matches the installed timm)."""
    identity = timm_identity()
    path = cache_path(identity) if identity is not None else None
    if path is not None:
        try:
            lines = path.read_text().split("\n")
        except (OSError, UnicodeDecodeError):
            lines = []
        # the first line repeats the identity: a hash collision or a torn file is not trusted
        if len(lines) > 1 and lines[0] == identity:
            return [name for name in lines[1:] if name]
    import timm  # lazy: the one slow path

    names = list(timm.list_models())
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, "\n".join([identity, *names]).encode())
        except OSError:
            pass  # a read-only home: every check imports timm, as before
    return names
