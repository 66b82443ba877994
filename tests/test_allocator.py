"""The training process's malloc settings (trainer/allocator.py): what a step's activations cost."""
import subprocess
import sys

import pytest

# Like a step's activations: allocate and touch eight 4 MiB blocks, free them all, 20 times, and
# count the page faults. By default glibc moves its threshold to 4 MiB and trims the heap's free
# top beyond twice that, so every round faults most of its 8,192 pages in again; tuned, only the
# first round does.
FAULTS = """
import resource, sys
import numpy as np
from trainer.allocator import keep_step_memory
if sys.argv[1] == "tuned":
    assert keep_step_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [np.ones(2 ** 20, dtype=np.float32) for _ in range(8)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    return int(out.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_step_memory_is_reused_not_faulted_in_again():
    assert faults("default") > 5 * 8192
    assert faults("tuned") < 2 * 8192
