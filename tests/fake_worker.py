"""A stand-in trainer for daemon tests and benchmarks: no torch, steady and scriptable.

Run by the daemon as its worker (`launch_daemon(run_dir, worker_script=this file)`). It goes
through the real `trainer.worker.main` (link threads, controls queue, exit codes) with
`FakeTrainer` in place of `engine.Trainer`. Its behaviour comes from RUN_DIR/fake.json:

    steps            optimizer steps in the whole run (default 50)
    steps_per_epoch  an `eval` record + event at each epoch end (default 10)
    step_time        seconds of busy work per step (default 0.01)
    log_every        print a line to stdout every N steps (0: never; default 1)
    log_bytes        length of those lines (default 80)
    event_every      emit an `alert` event every N steps (0: never)
    checkpoint_every write a fake checkpoint every N steps (0: only on request/stop/end)
    crash_at         raise at this step ...
    crash_runs       ... during the first N starts of the worker (default: every start)
    crash_mode       "raise" (traceback), "exit" (os._exit(3)) or "kill" (SIGKILL itself)
    ignore_controls  never look at the controls queue
    stderr_lines     lines printed to stderr at start
    fail_checkpoints the first N checkpoint attempts fail (a `checkpoint_failed` event, like a
                     full disk): a stop the daemon asked for is then refused (`request` event,
                     outcome "failed") and training goes on; the worker's own stop (SIGTERM)
                     ends the run anyway, without a checkpoint
    write_history    append records to history.msgpack (default true)
    pause_below_kb   pause ("disk_full") while the run directory's disk has less free space,
                     resume by itself ("disk_space_back") once it has more, like the engine
    rates            [[from_step, samples/s], ...]: the samples/s progress reports from that step
                     on (default 100 throughout)
    hang_at          at this step the training thread sleeps `hang_seconds` (default 3600) in
                     `hang()`, alive but making no progress (a deadlock, a stuck disk), in the
                     first start of the worker only
    preparing_items  before the plan, "prepare a feature store" of this many items: `preparing`
                     frames (one per preparing_step seconds, default 0.05, 10 items each) between
                     two `preparing` events, like the engine's store_setup

Progress is resumed from RUN_DIR/fake_ckpt (the step of the last fake checkpoint), so restarts
behave like the real engine. Every start appends a line to RUN_DIR/fake_runs; at exit the worker
writes RUN_DIR/fake_stats.json: steps run, wall time, frames the link sent.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import history, worker  # noqa: E402


def busy(seconds: float) -> None:
    """Burn CPU like a training step would (sleeping would hide contention)."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def hang(seconds: float) -> None:
    """Make no progress for `seconds` (the stall watchdog's stacks name this function)."""
    time.sleep(seconds)


class FakeTrainer:
    def __init__(self, cfg, run_dir: Path, publisher, controls):
        self.run_dir = Path(run_dir)
        self.publisher = publisher
        self.controls = controls
        self.spec = json.loads((self.run_dir / "fake.json").read_text()) if (self.run_dir / "fake.json").exists() else {}
        self.steps = int(self.spec.get("steps", 50))
        self.per_epoch = int(self.spec.get("steps_per_epoch", 10))
        self.paused = False
        self.disk_paused = False
        self.stop_id = None
        self.checkpoint_failures = int(self.spec.get("fail_checkpoints", 0))
        with open(self.run_dir / "fake_runs", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        self.start_number = len((self.run_dir / "fake_runs").read_text().split())
        ckpt = self.run_dir / "fake_ckpt"
        self.step = int(ckpt.read_text()) if ckpt.exists() else 0
        self.history = history.HistoryWriter(self.run_dir / "history.msgpack")

    def prepare_store(self) -> None:
        total = int(self.spec.get("preparing_items", 0))
        if not total:
            return
        self.publisher.event("preparing", "info", "preparing data: feature store /s is missing", status="missing")
        started = time.monotonic()
        for done in list(range(0, total, 10)) + [total]:
            elapsed = time.monotonic() - started
            self.publisher.preparing({"done": done, "total": total, "rate": done / elapsed if done else None,
                                      "eta": None, "elapsed": elapsed, "time": time.time(), "store": "/s",
                                      "finished": done == total})
            time.sleep(float(self.spec.get("preparing_step", 0.05)))
        self.publisher.event("preparing", "info", f"data prepared: {total} items", status="done")

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        for i in range(int(self.spec.get("stderr_lines", 0))):
            print(f"fake stderr line {i}", file=sys.stderr, flush=True)
        time.sleep(float(self.spec.get("setup_seconds", 0.0)))  # like building datasets and the model
        self.prepare_store()
        self.publisher.plan({"plan": {"total_steps": self.steps, "phases": []},
                             "config": {"model": "fake", "source": "synthetic", "features": "mfcc",
                                        "classes": ["a", "b"], "threads": 1, "batch_size": 8,
                                        "accum_steps": 1, "seed": 0, "monitor": "val_f1_macro"}})
        if self.step:
            self.publisher.event("resume", "info", f"resumed from step {self.step}", step=self.step)
        self.publisher.event("state", "info", "running", state="running")
        started = time.monotonic()
        while True:
            while self.step < self.steps:
                self.wait_for_disk()
                if not self.spec.get("ignore_controls"):
                    self.handle_controls()
                    if self.stop_id is not None:
                        break
                self.train_step()
            saved = self.checkpoint()
            if saved or self.stop_id in (None, worker.INTERNAL_REQUEST_ID):
                break
            # a stop the daemon asked for, whose checkpoint failed: say so and train on
            self.publisher.event("request", "error", f"stop failed: checkpoint at step {self.step} not written",
                                 id=self.stop_id, action="stop", outcome="failed")
            self.stop_id = None
        wall = time.monotonic() - started
        self.write_stats(wall)
        if self.stop_id is not None:
            self.publisher.event("request", "info", f"stopped at step {self.step}", id=self.stop_id,
                                 action="stop", outcome="done")
            self.publisher.event("state", "info", "stopped", state="stopped")
            return "stopped"
        self.publisher.event("finished", "info", f"finished at step {self.step}", best=None, last=None,
                             classes=["a", "b"], confusion=[[1, 0], [0, 1]])
        self.publisher.event("state", "info", "finished", state="finished")
        return "finished"

    def train_step(self) -> None:
        busy(float(self.spec.get("step_time", 0.01)))
        self.step += 1
        spec = self.spec
        if spec.get("crash_at") == self.step and self.start_number <= spec.get("crash_runs", 10**9):
            self.crash(spec.get("crash_mode", "raise"))
        if spec.get("hang_at") == self.step and self.start_number == 1:
            hang(float(spec.get("hang_seconds", 3600)))
        record = {"kind": "train", "step": self.step, "epoch": self.step // self.per_epoch, "phase": 0,
                  "time": time.time(), "train_loss": 1.0 / self.step, "lr": 0.001, "grad_norm": 1.0,
                  "samples_per_s": 100.0, "data_share": 0.1}
        if spec.get("write_history", True):
            self.history.append(record)
        self.publisher.record(record)
        if spec.get("log_every", 1) and self.step % spec.get("log_every", 1) == 0:
            print(f"step {self.step} " + "x" * int(spec.get("log_bytes", 80)), flush=True)
        if spec.get("event_every") and self.step % spec["event_every"] == 0:
            self.publisher.event("alert", "info", f"tick {self.step}", what="tick", step=self.step)
        if self.step % self.per_epoch == 0:
            metrics = {"val_loss": 1.0 / self.step, "val_accuracy": min(1.0, self.step / self.steps),
                       "val_f1_macro": min(1.0, self.step / self.steps)}
            evaluation = {"kind": "eval", "step": self.step, "epoch": self.step // self.per_epoch, "phase": 0,
                          "time": time.time(), **metrics}
            if spec.get("write_history", True):
                self.history.append(evaluation)
            self.publisher.record(evaluation)
            self.publisher.event("eval", "info", f"eval at step {self.step}", step=self.step,
                                 epoch=self.step // self.per_epoch, metrics=metrics)
        if spec.get("checkpoint_every") and self.step % spec["checkpoint_every"] == 0:
            self.checkpoint()
        self.publisher.progress({
            "step": self.step, "total_steps": self.steps, "epoch": self.step // self.per_epoch,
            "total_epochs": max(1, self.steps // self.per_epoch), "phase": 0, "phase_name": "train",
            "epoch_step": self.step % self.per_epoch, "steps_per_epoch": self.per_epoch,
            "elapsed": float(self.step), "eta": float(self.steps - self.step), "phase_etas": [float(self.steps - self.step)],
            "metrics": {"train_loss": 1.0 / self.step, "lr": 0.001, "samples_per_s": self.rate()},
            "time": time.time()})

    def rate(self) -> float:
        rates = [rate for start, rate in self.spec.get("rates", ()) if start <= self.step]
        return float(rates[-1]) if rates else 100.0

    def crash(self, mode: str) -> None:
        if mode == "exit":
            os._exit(3)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"fake crash at step {self.step}")

    def checkpoint(self, request_id=None) -> bool:
        """Write the fake checkpoint; False (and a `checkpoint_failed` event) when it fails."""
        try:
            if self.checkpoint_failures > 0:
                self.checkpoint_failures -= 1
                raise OSError(28, "No space left on device (scripted)")
            self.history.fsync()
            tmp = self.run_dir / ".fake_ckpt.tmp"
            tmp.write_text(str(self.step))
            os.replace(tmp, self.run_dir / "fake_ckpt")
        except OSError as exc:
            self.publisher.event("checkpoint_failed", "error", f"checkpoint at step {self.step} failed: {exc}",
                                 step=self.step, error=str(exc), request_id=request_id)
            return False
        self.publisher.event("checkpoint", "info", f"checkpoint step {self.step}", step=self.step,
                             path=str(self.run_dir / "fake_ckpt"), stall_s=0.0, write_s=0.0, bytes=8,
                             request_id=request_id)
        return True

    def wait_for_disk(self) -> None:
        """Pause while the disk is short of `pause_below_kb`, as the engine does on a full disk.
        Controls still work meanwhile (a resume is answered by a fresh look at the disk)."""
        limit = self.spec.get("pause_below_kb")
        if not limit:
            return
        import shutil

        while shutil.disk_usage(self.run_dir).free < limit * 1024:
            if not self.disk_paused:
                self.disk_paused = True
                self.publisher.event("state", "warning", "paused: the disk is full", state="paused",
                                     reason="disk_full")
            self.handle_controls(block=False)
            if self.stop_id is not None:
                return
            time.sleep(0.05)
        if self.disk_paused:
            self.disk_paused = False
            self.publisher.event("state", "info", "running: disk space is back", state="running",
                                 reason="disk_space_back")

    # ------------------------------------------------------------------ controls
    def handle_controls(self, block: bool = True) -> None:
        while True:
            try:
                request_id, action = self.controls.get() if self.paused and block else self.controls.get_nowait()
            except Exception:  # queue.Empty
                return
            if action == "resume" and self.disk_paused:
                self.publisher.event("request", "warning", "resume: the disk is still full", id=request_id,
                                     action=action, outcome="failed")
            elif action == "pause" and not self.paused:
                self.paused = True
                self.publisher.event("state", "info", "paused", state="paused", request_id=request_id)
            elif action == "resume" and self.paused:
                self.paused = False
                self.publisher.event("state", "info", "running", state="running", request_id=request_id)
            elif action == "checkpoint":
                self.checkpoint(request_id)
                self.publisher.event("request", "info", f"checkpoint written at step {self.step}",
                                     id=request_id, action=action, outcome="done")
            elif action == "stop":
                self.paused = False
                self.stop_id = request_id
                return
            if not (self.paused and block) and self.controls.empty():
                return

    def write_stats(self, wall: float) -> None:
        link = getattr(self.publisher, "link", None)
        stats = {"steps": self.step, "wall": wall, "frames_sent": link.frames_sent if link else None,
                 "pid": os.getpid()}
        (self.run_dir / "fake_stats.json").write_text(json.dumps(stats))


if __name__ == "__main__":
    sys.exit(worker.main(trainer_factory=FakeTrainer))
