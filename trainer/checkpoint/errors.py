"""What a failed checkpoint is, and what counts as a full disk (for checkpoints and every other
file the run writes)."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional

class CheckpointError(Exception):
    """A checkpoint could not be written, or a verified checkpoint could not be loaded."""


class DiskFullError(CheckpointError):
    """A checkpoint did not fit: too little free space before the write (the estimate plus
    ``min_free_mb``), or ENOSPC/EDQUOT during it. ``free`` and ``needed`` are bytes (``needed``
    is None when the write itself ran out of space)."""

    def __init__(self, message: str, free: int, needed: Optional[int] = None):
        super().__init__(message)
        self.free = free
        self.needed = needed


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """True for a DiskFullError or an OSError (also as the cause of another error) meaning the
    file system has no space left (ENOSPC) or the user's quota is used up (EDQUOT)."""
    while exc is not None:
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        exc = exc.__cause__
    return False



def full_disk_error(exc: BaseException, message: str, path: Path, needed: int) -> Optional[DiskFullError]:
    """``exc`` as a DiskFullError if it means a full disk, else None. torch.save reports a full
    disk as a RuntimeError ("unexpected pos") without an errno, so a failure while ``path`` has
    less than ``needed`` bytes free counts too (an estimate was short, or something else filled
    the disk)."""
    free = shutil.disk_usage(path).free
    if is_disk_full(exc) or free < needed:
        return DiskFullError(message, free=free, needed=needed)
    return None
