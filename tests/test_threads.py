"""The thread count that follows the load (trainer/threads.py, `threads_follow_load`)."""
from __future__ import annotations

import subprocess
import sys
import time

from trainer.threads import OthersLoad, ThreadChoice, ThreadsFollowLoad


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
    assert choice.wanted(0.0) == 4 and choice.wanted(4.2) == 4 and choice.wanted(5.0) == 3 and choice.wanted(50.0) == 1
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


class FakeLoad:
    """Others' cores per window, from a list (None first, like OthersLoad)."""

    def __init__(self, values):
        self.values = list(values)

    def sample(self):
        return self.values.pop(0) if self.values else 0.0


def test_the_follower_looks_once_per_window_and_changes_threads_with_an_announcement():
    now = [0.0]
    set_to, said = [], []
    follow = ThreadsFollowLoad(2, set_to.append, lambda old, new, others: said.append((old, new, others)),
                               window=5.0, cores=2, load=FakeLoad([None, 1.0, 1.0, 1.0, 0.0, 0.0]),
                               clock=lambda: now[0])
    for t in (0.0, 1.0, 4.9):  # one look at t=0 (the baseline), none until the window ends
        now[0] = t
        follow.tick()
    assert set_to == [] and follow.threads == 2
    for t in (5.0, 10.0):
        now[0] = t
        follow.tick()
    assert set_to == [1] and said == [(2, 1, 1.0)] and follow.threads == 1
    for t in (15.0, 20.0, 25.0):
        now[0] = t
        follow.tick()
    assert set_to == [1, 2] and said[-1] == (1, 2, 0.0)


def test_a_run_beside_a_busy_process_drops_to_one_thread_and_says_so(tmp_path, monkeypatch):
    import torch

    import trainer.engine as engine
    import trainer.threads as threads
    from tests.run_configs import RESNET_TINY, run_config

    class Busy(ThreadsFollowLoad):
        def __init__(self, configured, set_threads, announce):
            super().__init__(configured, set_threads, announce, window=0.0, cores=2, load=FakeLoad([None] + [1.0] * 99))

    monkeypatch.setattr(threads, "ThreadsFollowLoad", Busy)
    events = []

    class Recorder(engine.NullPublisher):
        def event(self, kind, level, message, **data):
            events.append((kind, message, data))

    cfg = run_config(RESNET_TINY, threads=2, max_steps=4)
    before = torch.get_num_threads()
    try:
        assert engine.Trainer(cfg, tmp_path, Recorder()).run() == "finished"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    changes = [(m, d) for k, m, d in events if k == "threads"]
    assert len(changes) == 1 and changes[0][1] == {"threads": 1, "configured": 2, "others_cores": 1.0}
    assert "threads 2 -> 1" in changes[0][0] and "threads_follow_load: false" in changes[0][0]
    pinned = []
    monkeypatch.setattr(threads, "ThreadsFollowLoad", lambda *a, **k: pinned.append(1))
    (tmp_path / "pinned").mkdir()
    engine.Trainer(run_config(RESNET_TINY, threads=2, max_steps=2, threads_follow_load=False), tmp_path / "pinned").run()
    assert not pinned, "threads_follow_load: false must not follow the load"
