"""A checkpoint's files and its MANIFEST.json, read and verified without torch.

The checkpoint store (trainer/checkpoint/store.py) writes a checkpoint directory and its
manifest (format version, step, size and sha256 of every other file); this module is the one
check of a checkpoint directory against its manifest, for the store (load, retention) and for
whoever copies checkpoints elsewhere without torch (the daemon's replicas, `resume --from`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
_HASH_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, step: int) -> tuple[Optional[dict], Optional[str]]:
    """(meta, None) when checkpoint directory `path` of `step` matches its manifest (every file
    re-hashed), else (None, what is wrong). Unreadable files other than missing ones raise OSError."""
    manifest, problem = read_manifest(path, step)
    if problem:
        return None, problem
    problem = files_problem(path, manifest)
    if problem:
        return None, problem
    return read_meta(path)


def read_manifest(path: Path, step: int) -> tuple[Optional[dict], Optional[str]]:
    """(manifest, None) of checkpoint ``path``, or (None, what is wrong with it)."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        return None, f"no {MANIFEST_FILE} (the write did not finish)"
    except ValueError as e:
        return None, f"{MANIFEST_FILE} is not valid JSON: {e}"
    problem = manifest_problem(manifest, step)
    return (None, problem) if problem else (manifest, None)


def read_meta(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """(meta, None) of checkpoint ``path`` (its files verified), or (None, what is wrong with it)."""
    try:
        meta = json.loads((path / META_FILE).read_bytes())
    except ValueError as e:
        return None, f"{META_FILE} is not valid JSON: {e}"
    if not isinstance(meta, dict):
        return None, f"{META_FILE} is not a JSON object"
    return meta, None


def files_problem(path: Path, manifest: dict) -> Optional[str]:
    """What is wrong with the files of checkpoint ``path`` against its manifest (size, sha256), or None."""
    for fname, expected in manifest["files"].items():
        try:
            size = (path / fname).stat().st_size
            if size != expected["size"]:
                return f"{fname} has {size} bytes, manifest says {expected['size']}"
            if sha256_of(path / fname) != expected["sha256"]:
                return f"{fname} sha256 does not match the manifest"
        except FileNotFoundError:
            return f"{fname} is missing"
    return None


def manifest_problem(manifest: Any, step: int) -> Optional[str]:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(manifest, dict):
        return f"{MANIFEST_FILE} is not a JSON object"
    if manifest.get("format") != FORMAT_VERSION:
        return f"{MANIFEST_FILE} has format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}"
    if manifest.get("step") != step:
        return f"{MANIFEST_FILE} is for step {manifest.get('step')!r}, not {step}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not {STATE_FILE, META_FILE} <= files.keys():
        return f"{MANIFEST_FILE} does not list {STATE_FILE} and {META_FILE}"
    for fname, entry in files.items():
        if "/" in fname or fname in (".", "..", MANIFEST_FILE):
            return f"{MANIFEST_FILE} lists a bad file name {fname!r}"
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str)):
            return f"{MANIFEST_FILE} entry for {fname} lacks size/sha256"
    return None
