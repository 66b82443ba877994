"""What the trainer says before its first step, and what it says when it resumes or is asked for a
checkpoint it already wrote (issue 13): `setup` events in events.jsonl, in order, before the
first progress; `resumed from step N: checkpoint PATH` (it was `resumed from step 30 ()`); an
`elapsed` that does not go backwards after a crash; `c` right after a checkpoint writes nothing."""
import json
import queue

import pytest

from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config

from trainer.console import ConsolePublisher
from trainer.engine import Trainer
from trainer.run.state import StateFile


def tiny_cfg(**changes):
    # 3 steps per epoch, 12 in all; no interval checkpoints unless a test asks
    return run_config(changed(RESNET_TINY, **MFCC_MLP), **{"checkpoint.interval_seconds": 3600, **changes})


class Recorder(ConsolePublisher):
    """The foreground publisher (it writes events.jsonl), also keeping the order of events and
    progress, and asking for a stop at `stop_at` (a step)."""

    def __init__(self, run_dir, controls: queue.SimpleQueue, stop_at: int):
        super().__init__(run_dir, "setup", quiet=True)
        self.controls, self.stop_at = controls, stop_at
        self.calls: list[tuple] = []

    def event(self, kind, level, message, **data):
        self.calls.append(("event", kind, message, data))
        super().event(kind, level, message, **data)

    def progress(self, body):
        self.calls.append(("progress", body))
        if body["step"] == self.stop_at:
            self.controls.put((1, "stop"))
        super().progress(body)


def train_until(run_dir, stop_at: int) -> Recorder:
    controls: queue.SimpleQueue = queue.SimpleQueue()
    publisher = Recorder(run_dir, controls, stop_at)
    assert Trainer(tiny_cfg(), run_dir, publisher, controls).run() == "stopped"
    return publisher


def read_events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def stages(events) -> list[str]:
    return [e["data"]["stage"] for e in events if e["kind"] == "setup"]


def test_setup_stages_come_in_order_before_the_first_step_and_again_on_resume(tmp_path):
    first = train_until(tmp_path, stop_at=2)
    events = read_events(tmp_path)
    assert stages(events) == ["scan", "data", "model", "ready"]
    setup = [e for e in events if e["kind"] == "setup"]
    assert setup[1]["message"] == "checking data: 64 files" and setup[1]["data"]["files"] == 64
    assert setup[2]["message"] == "building model mfcc_mlp (4 classes)"
    assert setup[3]["message"].startswith("ready: mfcc_mlp (") and "training from step 0 of 12" in setup[3]["message"]
    assert all(isinstance(e["data"]["started"], float) for e in setup)
    assert [e["time"] for e in setup] == sorted(e["time"] for e in setup)
    # all of it before the first step: `ready` comes before the first progress and the `running` state
    order = [c[1] if c[0] == "event" else "progress" for c in first.calls]
    ready = [i for i, c in enumerate(first.calls) if c[0] == "event" and c[3].get("stage") == "ready"][0]
    assert "progress" not in order[:ready] and ("state" in order[ready:])
    # the resumed worker sets up again, and says which checkpoint it loads
    train_until(tmp_path, stop_at=3)
    resumed = read_events(tmp_path)[len(events):]
    assert stages(resumed) == ["scan", "data", "model", "checkpoint", "ready"]
    loading = [e for e in resumed if e["kind"] == "setup" and e["data"]["stage"] == "checkpoint"][0]
    assert loading["message"] == "loading checkpoint step 2" and loading["data"]["step"] == 2
    assert "training from step 2 of 12" in [e for e in resumed if e["data"].get("stage") == "ready"][0]["message"]


def test_the_resume_message_names_the_checkpoint_and_elapsed_does_not_go_backwards(tmp_path):
    train_until(tmp_path, stop_at=2)
    stopped_elapsed = StateFile(tmp_path).read()["elapsed"]
    # a crash after the checkpoint: the header had shown 100 s more of training, now lost
    StateFile(tmp_path).update(elapsed=stopped_elapsed + 100.0)
    second = train_until(tmp_path, stop_at=3)
    (resume,) = [c for c in second.calls if c[0] == "event" and c[1] == "resume"]
    message, data = resume[2], resume[3]
    assert "()" not in message
    assert message.startswith(f"resumed from step 2: checkpoint {tmp_path / 'ckpt'}")
    assert "written 0s ago" in message or "written 1s ago" in message
    assert message.endswith("1m40s of training after it is done again")
    assert data["path"].startswith(str(tmp_path / "ckpt")) and data["lost_seconds"] == pytest.approx(100.0, abs=1.0)
    elapsed = [c[1]["elapsed"] for c in second.calls if c[0] == "progress"]
    assert elapsed[0] >= stopped_elapsed + 100.0 and elapsed == sorted(elapsed)


def test_elapsed_is_not_raised_by_a_state_file_that_is_behind(tmp_path):
    train_until(tmp_path, stop_at=2)
    StateFile(tmp_path).update(elapsed=0.0)
    second = train_until(tmp_path, stop_at=3)
    (resume,) = [c for c in second.calls if c[0] == "event" and c[1] == "resume"]
    assert resume[3]["lost_seconds"] < 1.0 and "done again" not in resume[2]


def test_a_checkpoint_request_right_after_a_checkpoint_writes_nothing(tmp_path):
    controls: queue.SimpleQueue = queue.SimpleQueue()
    publisher = Recorder(tmp_path, controls, stop_at=-1)
    trainer = Trainer(tiny_cfg(max_steps=6), tmp_path, publisher, controls)
    interval = trainer.checkpoints.maybe_checkpoint

    def interval_at_step_4_then_c():
        if trainer.state.step == 4:  # an interval checkpoint, still being written when `c` comes
            trainer.checkpoints.checkpoint(reason="interval")
            controls.put((7, "checkpoint"))
        if trainer.state.step == 5:  # a step nothing has checkpointed yet
            controls.put((8, "checkpoint"))
        interval()

    trainer.checkpoints.maybe_checkpoint = interval_at_step_4_then_c
    assert trainer.run() == "finished"
    events = read_events(tmp_path)
    written = [e["data"]["step"] for e in events if e["kind"] == "checkpoint"]
    assert written.count(4) == 1 and written.count(5) == 1
    answers = {e["data"]["id"]: e for e in events if e["kind"] == "request"}
    path4 = [e["data"]["path"] for e in events if e["kind"] == "checkpoint" and e["data"]["step"] == 4][0]
    assert answers[7]["message"] == f"checkpoint of step 4 already written: {path4}"
    assert answers[7]["data"]["outcome"] == "done" and answers[7]["data"]["written"] is False
    path5 = [e["data"]["path"] for e in events if e["kind"] == "checkpoint" and e["data"]["step"] == 5][0]
    assert answers[8]["message"] == f"checkpoint written at step 5: {path5}" and answers[8]["data"]["written"]


def test_the_checkpoint_interval_counts_from_the_first_step_not_from_the_set_up(tmp_path, monkeypatch):
    from trainer import models

    build = models.build_model

    def slow_build(*args, **kwargs):  # a set-up longer than the interval (a data check of minutes)
        import time

        time.sleep(0.6)
        return build(*args, **kwargs)

    monkeypatch.setattr(models, "build_model", slow_build)
    publisher = Recorder(tmp_path, queue.SimpleQueue(), stop_at=-1)
    # 2 steps of a 3-step epoch in well under the interval: only the final checkpoint
    assert Trainer(tiny_cfg(max_steps=2, **{"checkpoint.interval_seconds": 0.5}), tmp_path, publisher).run() == "finished"
    assert [e["data"]["step"] for e in read_events(tmp_path) if e["kind"] == "checkpoint"] == [2]


def test_the_console_prints_the_epoch_a_person_reads_and_the_last_step_once(tmp_path, capsys):
    publisher = ConsolePublisher(tmp_path, "console")
    body = {"step": 12, "total_steps": 12, "epoch": 2, "total_epochs": 2, "phase_name": "only", "metrics": {}}
    publisher.progress(body)  # the end of a run is published twice (the last step, then finish)
    publisher.progress(body)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert lines == ["step 12/12 | ep 2/2 | only"]  # was `ep 3/2`, printed twice
