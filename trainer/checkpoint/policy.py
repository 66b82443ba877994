"""The trainer's checkpoint policy: when it checkpoints, what each checkpoint's metadata says,
the weights-only copies (best.pt when an evaluation improves, last.pt from each checkpoint
written), answering a request whose state is already on disk, and reporting each failure once.

How a checkpoint is taken without stopping training is in capture.py and store.py; the state
that goes into one is `Trainer.checkpoint_state()`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from trainer.checkpoint.capture import estimate_bytes, on_cpu
from trainer.checkpoint.errors import CheckpointError, DiskFullError, full_disk_error, is_disk_full
from trainer.checkpoint.store import CheckpointStore, SaveResult
from trainer.config import RunConfig, dump_config, resolved_dict
from trainer.run.rundir import RunDir, fsync_dir

log = logging.getLogger(__name__)


def config_sha256(cfg: RunConfig) -> str:
    """Hash of the resolved config (what the run directory's config.yaml holds). Each checkpoint
    stores it; resuming under another config is refused instead of training another plan."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a torn file (nor hold its space)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def eval_weights(state: dict) -> dict:
    """The weights the last evaluation followed, from a checkpoint state: the EMA copy when EMA
    is on, unless that evaluation found the raw weights better (see evaluation.Evaluation)."""
    followed = ((state.get("loop") or {}).get("last_eval") or {}).get("eval_weights")
    if state.get("ema") is None or followed == "raw":
        return state["model"]
    prefix = "module."  # ModelEmaV3 keeps the averaged model as its submodule `module`
    return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}


def _plain(result: SaveResult) -> dict:
    """Checkpoint results as msgpack-friendly values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()
            if isinstance(v, (str, int, float, bool, type(None), Path))}


class CheckpointPolicy:
    """Checkpoints of one Trainer (`trainer`: its state, history, publisher and disk watch).

    A checkpoint is taken at each epoch end, every checkpoint.interval_seconds, on request and
    at the end; the writer thread reports through `_done`. `saved_at` is the (step, history
    offset) of the newest written checkpoint: a request for that very state is answered by it.
    """

    def __init__(self, trainer, cfg: RunConfig, run_dir: Path):
        self.trainer = trainer
        self.cfg = cfg
        self.run_dir = run_dir
        self.files = RunDir(run_dir)
        self.store: Optional[CheckpointStore] = None  # opened by open_store (it takes the directory's lock)
        self.last_time = time.monotonic()
        self.pending_stall: Optional[float] = None  # loop stall of the checkpoint being written
        self.saved_at: Optional[tuple] = None  # (step, history offset) of the newest written checkpoint
        self.saved_path: Optional[str] = None  # and its directory
        self.failed_at: Optional[tuple] = None  # (step, history offset) of the last failed checkpoint
        self.last_failure: Optional[BaseException] = None
        self.best_unsaved = False  # best.pt could not be written
        self.estimate = 0  # estimated bytes of the next checkpoint

    def open_store(self) -> None:
        c = self.cfg.checkpoint
        self.store = CheckpointStore(self.files.checkpoints, keep_last=c.keep_last, keep_best=c.keep_best,
                                     keep_phase_ends=c.keep_phase_ends, min_free_mb=c.min_free_mb,
                                     writer_nice=c.writer_nice, on_done=self._done)

    # ------------------------------------------------------------------ cadence
    def maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_time >= self.cfg.checkpoint.interval_seconds:
            self.checkpoint(reason="interval")

    def is_written(self) -> bool:
        """The newest checkpoint holds the current state (same step, same history offset)."""
        return self.saved_at == (self.trainer.state.step, self.trainer.history.tell()) and not self.trainer.unwritten

    def answer_request(self, request_id: int) -> None:
        """Write a checkpoint for a request, unless the newest one already holds this very state:
        then that one answers it. So requests queued together cost one write, not one each."""
        step = self.trainer.state.step
        self.wait()  # a write in flight may be of this state
        if self.is_written():  # e.g. `c` pressed right after an interval or epoch-end checkpoint
            where = f": {self.saved_path}" if self.saved_path else ""
            self.trainer.event("request", "info", f"checkpoint of step {step:,} already written{where}",
                               id=request_id, action="checkpoint", outcome="done", step=step,
                               path=self.saved_path, written=False)
        elif self.write(reason="request", request_id=request_id):
            self.trainer.event("request", "info", f"checkpoint written at step {step:,}: {self.saved_path}",
                               id=request_id, action="checkpoint", outcome="done", step=step,
                               path=self.saved_path, written=True)
        else:
            self.trainer.event("request", "error", f"checkpoint at step {step} failed: {self.last_failure}",
                               id=request_id, action="checkpoint", outcome="failed")

    # ------------------------------------------------------------------ writing
    def checkpoint(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        """Snapshot the state in memory and hand it to the background writer. False if the
        write could not even start (reported as checkpoint_failed; a full disk pauses the run)."""
        trainer = self.trainer
        started = time.perf_counter()
        self.wait()  # a failure of the previous write was reported by its writer
        self.last_time = time.monotonic()
        step = trainer.state.step
        try:
            trainer.flush_history()  # the offset stored below must follow every logged record
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            error = DiskFullError(f"checkpoint at step {step}: appending to {trainer.history.path} failed: {exc}",
                                  free=trainer.disk.free_bytes())
            self._failed(step, trainer.history.tell(), error, reason, phase_end)
            return False
        state = trainer.checkpoint_state()
        self.estimate = estimate_bytes(state)
        try:  # the store refuses a checkpoint that does not fit before it copies anything
            self.store.save_async(state, self._meta(step, state["history_offset"], reason, phase_end, request_id),
                                  stable=trainer.stable_tensors(), before_commit=trainer.history.fsync,
                                  after_commit=self._write_last_weights)
        except CheckpointError as exc:
            self._failed(step, state["history_offset"], exc, reason, phase_end)
            return False
        finally:
            self.pending_stall = time.perf_counter() - started
        return True

    def _meta(self, step: int, offset: int, reason: str, phase_end: bool, request_id: Optional[int]) -> dict:
        state = self.trainer.state
        return {"step": step, "history_offset": offset, "epoch": state.epoch,
                "phase": self.trainer.plan.phase_at(max(step - 1, 0)).index, "reason": reason,
                "phase_end": phase_end, "time": time.time(), "mode": self.cfg.eval.mode,
                "min_delta": self.cfg.eval.early_stopping.min_delta,
                "metric": (state.last_eval or {}).get(self.cfg.eval.monitor),
                "request_id": request_id, "config_sha256": self.trainer.config_hash}

    def write(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        """Checkpoint and wait for the write; True if it is on disk."""
        return self.checkpoint(reason, phase_end, request_id) and self.wait()

    def wait(self) -> bool:
        """Block until the write in flight is done. A failed write was already reported as a
        checkpoint_failed event and the previous checkpoint is intact, so training goes on."""
        try:
            self.store.wait()
            return True
        except CheckpointError:
            return False

    def fence(self) -> None:
        """Before the optimizer step: the write in flight must hold its copy of the weights."""
        waited = self.store.fence()
        if waited and self.pending_stall is not None:
            self.pending_stall += waited

    def _failed(self, step: int, offset: Optional[int], error: BaseException, reason: str,
                phase_end: bool, **data: Any) -> None:
        """Report a failed checkpoint once: a retry of the same state (same step and history
        offset, e.g. a stop right after a failed interval checkpoint) that fails again is only
        logged. A full disk is handed to the loop (see DiskSpace.watch), which pauses."""
        repeat = self.failed_at == (step, offset)
        self.failed_at, self.last_failure = (step, offset), error
        if is_disk_full(error):
            self.trainer.disk.error = (error, step, reason, phase_end)
        if repeat:
            log.error("checkpoint at step %s failed again: %s", step, error)
            return
        self.trainer.event("checkpoint_failed", "error", f"checkpoint at step {step} failed: {error}",
                           **{"step": step, "error": str(error), "reason": reason,
                              "disk_full": is_disk_full(error), **data})

    def _done(self, result: SaveResult) -> None:
        """Called by the checkpoint store's writer thread."""
        meta = result.meta
        if result.error:
            extra = {k: v for k, v in _plain(result).items() if k not in ("step", "error")}
            self._failed(result.step, meta.get("history_offset"), result.error, meta.get("reason", ""),
                         bool(meta.get("phase_end")), **extra)
            return
        self.saved_at = (result.step, meta.get("history_offset"))
        self.saved_path = str(result.path)
        stall = self.pending_stall
        self.trainer.event("checkpoint", "info", f"checkpoint step {result.step}: stall {1000 * (stall or 0):.0f} ms, "
                           f"write {result.write_s:.2f} s", stall_s=stall, **_plain(result))

    # ------------------------------------------------------------------ best.pt and last.pt
    def save_best(self) -> None:
        """best.pt from the weights the best evaluation followed; a full disk pauses the run and
        it is written again when space is back (nothing trains meanwhile)."""
        trainer = self.trainer
        try:
            best_from = (trainer.state.best_eval or {}).get("eval_weights", "ema")
            model = trainer.ema.module if trainer.ema is not None and best_from == "ema" else trainer.model
            self._write_weights(on_cpu(model.state_dict()), trainer.state.step, self.files.best_weights)
            self.best_unsaved = False
        except (OSError, RuntimeError) as exc:
            full = full_disk_error(exc, f"writing {self.files.best_weights.name} failed: {exc}", self.run_dir, trainer.disk.space_needed())
            if full is None:
                raise
            self.best_unsaved = True
            trainer.disk.pause(full)

    def _write_last_weights(self, snap: dict, result: SaveResult) -> None:
        """last.pt from the checkpoint just written; runs in the checkpoint writer thread."""
        try:
            self._write_weights(eval_weights(snap), result.step, self.files.last_weights)
        except Exception as exc:  # the checkpoint itself is safe; last.pt is a convenience copy
            self.trainer.event("alert", "warning", f"could not write last.pt: {exc}", what="last_weights",
                               error=str(exc))

    def _write_weights(self, weights: dict, step: int, path: Path) -> None:
        atomic_torch_save({"model": weights, "classes": list(self.trainer.classes),
                           "config": resolved_dict(self.cfg), "step": step}, path)
