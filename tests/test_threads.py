"""The thread count that follows the load (trainer/threads.py; issue 14, in progress)."""
from __future__ import annotations

import subprocess
import sys
import time

from trainer.threads import OthersLoad, ThreadChoice


def test_a_busy_neighbour_costs_a_thread_after_two_windows_and_quiet_gives_it_back():
    choice = ThreadChoice(configured=2, cores=2)
    assert choice.observe(0.1) is None and choice.current == 2  # a shell at 10%: nothing
    assert choice.observe(1.0) is None  # one window of a busy process: not yet
    assert choice.observe(0.98) == 1 and choice.current == 1
    assert choice.observe(1.0) is None
    assert choice.observe(0.05) is None  # one quiet window: not yet
    assert choice.observe(0.0) == 2


def test_a_burst_between_quiet_windows_changes_nothing():
    choice = ThreadChoice(configured=2, cores=2)
    for load in (0.0, 1.0, 0.0, 1.0, 0.0, 1.0):
        assert choice.observe(load) is None
    assert choice.current == 2


def test_never_below_one_thread_nor_above_the_configured_count():
    choice = ThreadChoice(configured=4, cores=8)
    assert choice.wanted(0.0) == 4 and choice.wanted(4.2) == 3 and choice.wanted(50.0) == 1
    assert ThreadChoice(configured=1, cores=2).wanted(5.0) == 1
    assert ThreadChoice(configured=2, cores=2).wanted(0.2) == 2  # under a quarter core: free


def test_others_load_sees_a_busy_process_and_not_its_own_children():
    import os
    import signal

    load = OthersLoad()
    assert load.sample() is None
    # Not our child: started by a shell that exits at once, so it is reparented (another program).
    pid = int(subprocess.run(["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout)
    try:
        load.sample()
        time.sleep(1.5)
        busy_other = load.sample()
    finally:
        os.kill(pid, signal.SIGKILL)
    # Our own child: started by this process, it counts as the trainer's (its loaders), not as others.
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load.sample()
        time.sleep(1.5)
        busy_child = load.sample()
    finally:
        child.kill()
        child.wait()
    assert busy_other is not None and busy_other > 0.6, busy_other
    assert busy_child is not None and busy_child < busy_other - 0.4, (busy_child, busy_other)
