"""glibc malloc settings for the training process.

glibc moves its mmap threshold up to the largest block freed so far and gives the free top of the
heap back to the system beyond twice that (the trim threshold). A training step allocates MBs of
activations and frees them all at once, so by default the heap's top is handed back and faulted
in again, zeroed, every step (tests/test_allocator.py counts the page faults). Measured on this
2-core box (bench/data_scale.py's config, EfficientNet-B0 on 64x63 log-mels, batch 32): 208
samples/s from the feature store and 253 from the in-RAM cache, whose filling happened to leave
larger thresholds; 295-324 for both with the thresholds fixed here at glibc's maximum mmap
threshold and twice it for the trim.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_step_memory() -> bool:
    """Set the thresholds above for this process; False where there is no glibc mallopt (then
    nothing changes) or it refused a value."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
