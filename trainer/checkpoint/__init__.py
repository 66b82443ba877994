"""Checkpoints: what the trainer writes so that a killed run resumes bit-exactly.

    errors.py   CheckpointError, DiskFullError and what counts as a full disk
    capture.py  the in-memory snapshot pipeline (tensor copies, copies deferred to the writer)
    store.py    the on-disk store (write protocol, fsync, manifest, retention, load_latest)
    policy.py   the trainer's side: when to checkpoint, its metadata, last.pt/best.pt, and
                answering requests whose state is already written

The names below are the package's public surface (``from trainer.checkpoint import ...``).
"""
from trainer.checkpoint.capture import estimate_bytes, snapshot
from trainer.checkpoint.errors import DISK_FULL_ERRNOS, CheckpointError, DiskFullError, is_disk_full
from trainer.checkpoint.store import (FORMAT_VERSION, LOCK_FILE, MANIFEST_FILE, META_FILE, OLD_PREFIX, STATE_FILE,
                                      TMP_PREFIX, CheckpointInfo, CheckpointStore, SaveResult)

__all__ = ["CheckpointError", "CheckpointInfo", "CheckpointStore", "DISK_FULL_ERRNOS", "DiskFullError",
           "FORMAT_VERSION", "LOCK_FILE", "MANIFEST_FILE", "META_FILE", "OLD_PREFIX", "STATE_FILE",
           "SaveResult", "TMP_PREFIX", "estimate_bytes", "is_disk_full", "snapshot"]
