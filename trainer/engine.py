"""The Trainer: one readable loop that can be killed at any instant and resumed bit-exactly.

    while self.should_continue():
        apply controls -> train one optimizer step -> log -> maybe end the epoch (evaluate,
        early stopping, phase change) -> maybe checkpoint -> publish progress

Everything the next step depends on lives in `self.state` (counters, early-stopping and plateau
state, the ETA model) plus the model/optimizer/EMA state dicts and every RNG; all of it goes into
each checkpoint. Data order and augmentation are functions of (seed, epoch, index), so a resumed
run rebuilds the same batches from the checkpointed position.

The engine is rank-aware: only rank 0 writes files, so torch.distributed (gloo) data parallelism
can wrap it later without a rewrite.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from trainer import models
from trainer.checkpoint import CheckpointError, CheckpointStore, DiskFullError, estimate_bytes, is_disk_full
from trainer.config import ConfigError, RunConfig, dump_config, resolved_dict
from trainer.data import build_datasets, make_loader, mixup_batch, EpochSampler
from trainer.runs import atomic_write_json, fsync_dir
from trainer.history import HistoryWriter, LossSmoother, read_history, truncate_history
from trainer.metrics import TRAIN_MONITOR, classification_metrics, monitor_problem
from trainer.schedule import EtaModel, Plan

log = logging.getLogger(__name__)

#: How often a running trainer compares the free space of its run directory with what the next
#: checkpoint needs (one statvfs), and how often a trainer paused for disk space looks again.
DISK_CHECK_SECONDS = 5.0
DISK_POLL_SECONDS = 2.0


def config_sha256(cfg: RunConfig) -> str:
    """Hash of the resolved config (what the run directory's config.yaml holds). Each checkpoint
    stores it; resuming under another config is refused instead of training another plan."""
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()


def must_exit(request_id: Optional[int]) -> bool:
    """Stops with id <= 0 come from the process itself (the worker's INTERNAL_REQUEST_ID when
    the daemon is gone or at SIGTERM, -1 for Ctrl-C in the foreground): the process ends even
    when their checkpoint fails. A user's stop (id > 0) is refused then instead."""
    return request_id is not None and request_id <= 0


class Publisher(Protocol):
    """Where the trainer reports to: the daemon link, or the console in the foreground."""

    def progress(self, body: dict) -> None: ...
    def event(self, kind: str, level: str, message: str, **data: Any) -> None: ...
    def record(self, record: dict) -> None: ...
    def plan(self, body: dict) -> None: ...


class NullPublisher:
    def progress(self, body: dict) -> None:
        pass

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        pass

    def record(self, record: dict) -> None:
        pass

    def plan(self, body: dict) -> None:
        pass


@dataclass
class LoopState:
    """Counters and policy state that, with the weights, optimizer and RNGs, define the run."""

    step: int = 0                      # optimizer steps done
    epoch: int = 0                     # current global epoch (0-based)
    epoch_step: int = 0                # steps done inside the current epoch
    elapsed: float = 0.0               # training wall seconds, excluding pauses, across restarts
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    evals_since_best: int = 0
    plateau_scale: float = 1.0
    plateau_bad: int = 0
    plateau_best: Optional[float] = None
    stopped_early: bool = False
    last_eval: Optional[dict] = None
    best_eval: Optional[dict] = None
    eta: dict = field(default_factory=dict)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float,
               weight: Optional[torch.Tensor], label_smoothing: float) -> torch.Tensor:
    """Focal loss on soft targets: -sum_c w_c (1 - p_c)^gamma t_c log p_c, averaged over the batch."""
    num_classes = logits.shape[1]
    target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    log_p = F.log_softmax(logits.float(), dim=1)
    loss = -((1.0 - log_p.exp()) ** gamma) * target * log_p
    if weight is not None:
        loss = loss * weight
    return loss.sum(dim=1).mean()


def class_weights(spec, counts: list[int]) -> Optional[torch.Tensor]:
    """Loss weights from the config: a list, 'balanced' (n / (k * count_c)) or None."""
    if spec is None:
        return None
    if spec == "balanced":
        total, k = sum(counts), len(counts)
        return torch.tensor([total / (k * max(c, 1)) for c in counts], dtype=torch.float32)
    if len(spec) != len(counts):
        raise ValueError(f"loss.class_weights has {len(spec)} values but the data has {len(counts)} classes")
    return torch.tensor(spec, dtype=torch.float32)


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
    is on, unless that evaluation found the raw weights better (see Trainer.evaluate)."""
    followed = ((state.get("loop") or {}).get("last_eval") or {}).get("eval_weights")
    if state.get("ema") is None or followed == "raw":
        return state["model"]
    prefix = "module."  # ModelEmaV3 keeps the averaged model as its submodule `module`
    return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Trainer:
    """Trains one run in `run_dir`, resuming from its newest valid checkpoint if there is one."""

    def __init__(self, cfg: RunConfig, run_dir: Path, publisher: Optional[Publisher] = None,
                 controls: Optional[queue.SimpleQueue] = None, rank: int = 0):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.publisher = publisher or NullPublisher()
        self.controls = controls or queue.SimpleQueue()
        self.rank = rank
        self.state = LoopState()
        self.paused = False
        self.stop_requested: Optional[int] = None  # request id (or -1) of a pending stop
        self.last_checkpoint_time = time.monotonic()
        self.smoother = LossSmoother()  # the same smoothing the TUI's series use
        self.last_metrics: dict = {}
        self.last_confusion: Optional[list] = None
        self.pending_stall: Optional[float] = None  # loop stall of the checkpoint being written
        self.saved_at: Optional[tuple] = None  # (step, history offset) of the newest written checkpoint
        self.config_hash = config_sha256(cfg)
        # full disk: while `disk_full` is set the loop waits (see handle_controls) and looks at
        # the free space every DISK_POLL_SECONDS; what a full disk refused is redone on resume
        self.disk_full: Optional[dict] = None  # free_bytes, needed_bytes, path, cause
        self.disk_error: Optional[tuple] = None  # (error, step, reason, phase_end) from the writer thread
        self.unwritten: list[dict] = []  # history records not yet in history.msgpack, in order
        self.best_unsaved = False  # best.pt could not be written
        self.retry_checkpoint: Optional[dict] = None  # checkpoint() arguments to retry when space is back
        self.ckpt_estimate = 0  # estimated bytes of the next checkpoint
        self.last_disk_check = time.monotonic()
        self.failed_at: Optional[tuple] = None  # (step, history offset) of the last failed checkpoint
        self.last_failure: Optional[BaseException] = None
        self.early_stop_announced = False

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.data = build_datasets(cfg, frozen=self.run_dir / "data_auto.json")  # keeps what `auto` became
        if self.data.skipped:
            self.event("alert", "warning", f"skipped {len(self.data.skipped)} bad data files (data.skip_bad_files)",
                       what="bad_data", count=len(self.data.skipped))
        self.classes = self.data.classes
        self._check_monitor()
        self.plan = Plan.from_config(cfg, len(self.data.train))
        self.eta = EtaModel(self.plan)
        self.model = models.build_model(cfg, len(self.classes), self.data.in_chans, self.data.input_shape)
        self.channels_last = cfg.model.channels_last and len(self.data.input_shape) == 3
        self.optimizer = self._make_optimizer()
        self.ema = self._make_ema()
        self.loss_weight = class_weights(cfg.loss.class_weights, self.data.class_counts["train"])
        self.history = HistoryWriter(self.run_dir / "history.msgpack") if self.rank == 0 else None
        self.store = CheckpointStore(self.run_dir / "ckpt", keep_last=cfg.checkpoint.keep_last,
                                     keep_best=cfg.checkpoint.keep_best,
                                     keep_phase_ends=cfg.checkpoint.keep_phase_ends,
                                     min_free_mb=cfg.checkpoint.min_free_mb,
                                     writer_nice=cfg.checkpoint.writer_nice,
                                     on_done=self._checkpoint_done)
        self.step_fn = torch.compile(self.model) if cfg.model.compile else None
        self.resumed = self._resume()
        self._apply_phase(self.plan.phase_at(self.state.step), announce=not self.resumed)
        self._write_plan()
        self.ckpt_estimate = estimate_bytes(self.checkpoint_state())
        if not self.resumed:
            self._warn_slow_ema()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = list(self.model.parameters())
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.name == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    def _check_monitor(self) -> None:
        """eval.monitor against the data's class count, known only now for folder data: a
        metric that is never produced (val_auc_roc with 10 classes) would silently never
        improve, so no best.pt, early stopping on nothing, plateau cuts for nothing."""
        problem = monitor_problem(self.cfg.eval.monitor, len(self.classes))
        if problem:
            raise ConfigError(str(self.run_dir / "config.yaml"), [("eval.monitor", problem)])

    def _make_ema(self):
        ema = self.cfg.eval.ema
        if not ema.enabled:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=ema.decay, use_warmup=ema.warmup, warmup_power=ema.warmup_power)

    def _ema_decay_at(self, step: int) -> float:
        """The decay of the EMA update after optimizer step `step` (0-based; see train_step)."""
        return self.ema.get_decay(step + 1)

    def _warn_slow_ema(self) -> None:
        """Warn at start when the EMA is slow for this run: at the last step more than 10% of
        its weight would still come from the run's first quarter (the random start included).
        For a constant decay that is a time constant 1/(1 - decay) over about a third of the
        run; with warmup it happens only for very short runs or warmup_power 1 (a plain mean)."""
        if self.ema is None:
            return
        total = self.plan.total_steps
        first_quarter = total // 4
        share = 1.0
        for k in range(first_quarter, total):
            share *= self._ema_decay_at(k)
            if share <= 0.1:  # factors are <= 1: it only shrinks (and long runs stop early here)
                return
        ema = self.cfg.eval.ema
        tau = 1.0 / (1.0 - ema.decay)
        per_epoch = self.plan.phases[0].steps_per_epoch
        self.event("alert", "warning",
                   f"EMA is slow for this run: decay {ema.decay} averages over ~{tau:,.0f} steps "
                   f"({tau / max(per_epoch, 1):.1f} epochs of {per_epoch} steps) but the run has {total} steps; "
                   f"at its end {share:.0%} of the EMA would still be the weights of its first {first_quarter} steps"
                   f"{'' if ema.warmup else ' (eval.ema.warmup is off)'}. Evaluation "
                   f"{'also evaluates the raw weights and follows the better' if ema.evaluate_raw else 'follows the EMA only (eval.ema.evaluate_raw: false)'}; "
                   "consider eval.ema.warmup: true or a smaller eval.ema.decay",
                   what="ema_slow", decay=ema.decay, time_constant_steps=tau, total_steps=total,
                   steps_per_epoch=per_epoch, first_quarter_share=share, warmup=ema.warmup)

    def _write_plan(self) -> None:
        if self.rank != 0:
            return
        body = {"plan": self.plan.to_dict(), "config": self.config_summary()}
        atomic_write_json(self.run_dir / "plan.json", body)  # fsync'd with its directory: offline readers need it whole
        send_plan = getattr(self.publisher, "plan", None)
        if send_plan is not None:
            send_plan(body)

    def config_summary(self) -> dict:
        return {**self.cfg.summary(), "classes": list(self.classes), "n_train": len(self.data.train),
                "n_val": len(self.data.val)}

    # ------------------------------------------------------------------ resume
    def _resume(self) -> bool:
        loaded = self.store.load_latest()
        for path, reason in self.store.rejected:
            self.event("alert", "warning", f"rejected checkpoint {path}: {reason}", what="bad_checkpoint", path=str(path))
        if loaded is None:
            self._start_over()
            return False
        ckpt, meta = loaded
        self._check_config_hash(meta)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.state = LoopState(**ckpt["loop"])
        self.eta.load_state_dict(self.state.eta)
        self.smoother.value = ckpt.get("train_loss_smooth")
        set_rng_state(ckpt["rng"])
        if ckpt.get("threads") != self.cfg.threads:
            self.event("alert", "warning", f"checkpoint was written with {ckpt.get('threads')} threads, running with "
                       f"{self.cfg.threads}: results will not be bit-identical", what="threads")
        offset = ckpt["history_offset"]
        if self.history is not None:
            offset = self._cut_history(offset)
            self.history.reopen()
        self.saved_at = (self.state.step, offset)
        self.event("resume", "info", f"resumed from step {self.state.step} ({meta.get('path', '')})",
                   step=self.state.step, epoch=self.state.epoch)
        return True

    def _check_config_hash(self, meta: dict) -> None:
        """Refuse to train on top of a checkpoint written under another config (an emptied or
        edited config.yaml would silently train another plan). Older checkpoints have no hash."""
        written_with = meta.get("config_sha256")
        if written_with is not None and written_with != self.config_hash:
            raise CheckpointError(
                f"config.yaml does not match the checkpoint: {self.run_dir / 'config.yaml'} (sha256 "
                f"{self.config_hash[:12]}) is not the config that checkpoint {meta.get('path', '')} step "
                f"{meta.get('step')} was written with (sha256 {written_with[:12]}); restore the run's "
                "config.yaml, or start a new run for the new config")

    def _start_over(self) -> None:
        """No valid checkpoint: training starts at step 0. If the run had progress (a history,
        rejected checkpoints) say so loudly and keep the old history aside, never truncate it."""
        if self.history is None:
            return
        path = self.run_dir / "history.msgpack"
        size = path.stat().st_size if path.exists() else 0
        rejected = self.store.rejected
        if size == 0 and not rejected:
            return  # a new run
        why = (f"all {len(rejected)} checkpoint(s) were rejected: "
               + "; ".join(f"{p.name}: {r}" for p, r in rejected)) if rejected else "no checkpoint was found"
        kept = ""
        if size:
            aside = self.run_dir / f"history.before-restart-{int(time.time())}.msgpack"
            self.history.close()
            os.replace(path, aside)
            fsync_dir(self.run_dir)
            self.history.reopen()
            kept = f"; the old history ({size} bytes) was kept as {aside.name}"
        self.event("alert", "error", f"starting over from step 0: {why}{kept}", what="starting_over",
                   reason="all_rejected" if rejected else "no_checkpoint", history_bytes=size,
                   rejected=[[str(p), r] for p, r in rejected])

    def _cut_history(self, offset: int) -> int:
        """Cut history.msgpack back to the checkpoint's `offset`; return where it ends now.

        If the file is shorter than `offset` or a record before it is torn or undecodable
        (damage on disk, a power cut), it is cut after its last whole record instead and an
        alert names what was lost: training goes on, the rows between are gone."""
        path = self.run_dir / "history.msgpack"
        reader = read_history(path)
        last_step = None
        try:
            for record in reader:
                if reader.valid_length > offset:
                    break
                last_step = record["step"]
        except Exception as exc:  # e.g. the file is missing although the checkpoint recorded bytes
            reader.valid_length, reader.problem = 0, str(exc)
        good = min(reader.valid_length, offset)
        if good == offset:
            return truncate_history(path, offset)
        size = path.stat().st_size if path.exists() else 0
        if path.exists():
            truncate_history(path, good)
        first_lost = (last_step or 0) + 1
        problem = f"it has {size} bytes" if size < offset else f"{reader.problem or 'a damaged record'}"
        self.event("alert", "warning",
                   f"history gap: {path.name} should hold {offset} bytes up to the checkpoint at step "
                   f"{self.state.step}, but {problem}; whole records end at byte {good}. The rows of "
                   f"steps {first_lost}-{self.state.step} are lost (the file is cut there); training goes on",
                   what="history_gap", path=str(path), expected_bytes=offset, file_bytes=size,
                   valid_bytes=good, lost_steps=[first_lost, self.state.step])
        return good

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        """Set up (resuming if a checkpoint exists), then train. Returns "finished", "stopped",
        or "failed" when the plan ended without any best checkpoint (see _fail_without_best)."""
        self.setup()
        return self.train()

    def train(self) -> str:
        """Train until the plan (or max_steps) is done, early stopping triggers, or a stop
        request arrives."""
        self.event("state", "info", "running", state="running")
        self.tick = time.monotonic()
        while True:
            self._train_until_stop()
            result = self.finish()
            if result is not None:
                return result  # else a stop was refused (its checkpoint failed): go on

    def _train_until_stop(self) -> None:
        """Train until the plan is done or a stop request arrives; wait while paused (by a
        request, or for disk space)."""
        batches = self._epoch_batches()
        while True:
            self._watch_disk()
            if self.should_continue() or self.disk_full is not None:
                self.handle_controls()
            if self.stop_requested is not None or not self.should_continue():
                return
            try:
                batch_group = next(batches)
            except StopIteration:  # defensive: the sampler length matches steps_per_epoch
                batches = self._epoch_batches()
                continue
            self.train_step(batch_group)
            if self.state.epoch_step == self.plan.phase_at(self.state.step - 1).steps_per_epoch:
                self.end_epoch()
                batches = self._epoch_batches()
            self.maybe_checkpoint()
            self.publish_progress()

    def should_continue(self) -> bool:
        return self.state.step < self.plan.total_steps and not self.state.stopped_early

    def _epoch_batches(self):
        """Iterator over the rest of the current epoch, one list of micro-batches per step."""
        phase = self.plan.phase_at(self.state.step)
        per_step = phase.samples_per_step
        sampler = EpochSampler(n=len(self.data.train), seed=self.cfg.seed, epoch=self.state.epoch,
                               start=self.state.epoch_step * per_step,
                               length=phase.steps_per_epoch * per_step)
        loader = make_loader(self.data.train, phase.batch_size, sampler=sampler,
                             num_workers=self.cfg.data.num_workers)
        with torch.random.fork_rng(devices=[]):  # starting a loader draws from the global RNG
            micro = iter(loader)
        while True:
            group = []
            for _ in range(phase.accum_steps):
                t0 = time.perf_counter()
                try:
                    x, y = next(micro)
                except StopIteration:
                    return
                group.append((x, y, time.perf_counter() - t0))
            yield group

    def train_step(self, group: list) -> None:
        """One optimizer step over `accum_steps` micro-batches."""
        cfg, state = self.cfg, self.state
        phase = self.plan.phase_at(state.step)
        lr = self.plan.lr_at(state.step) * state.plateau_scale
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        start = time.perf_counter()
        data_time = sum(t for _, _, t in group)
        total_loss = 0.0
        for i, (x, y, _) in enumerate(group):
            x, y_soft = mixup_batch(x, y, len(self.classes), cfg.augment.mixup, cfg.seed, state.epoch,
                                    state.step * phase.accum_steps + i)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.optim.bf16):
                logits = (self.step_fn or self.model)(x)
            loss = self.loss(logits.float(), y_soft)
            (loss / phase.accum_steps).backward()
            total_loss += loss.item() / phase.accum_steps
        self._fence_checkpoint()  # the optimizer step and EMA update below modify stable tensors
        trainable = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm)) if trainable else 0.0
        if math.isfinite(total_loss):
            self.optimizer.step()
        else:
            self.event("alert", "error", f"non-finite loss {total_loss} at step {state.step}: update skipped",
                       what="nan_loss", step=state.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            # timm counts updates from 1 (its train script passes the count after the step)
            self.ema.update(self.model, step=state.step + 1)
        now = time.perf_counter()
        step_seconds = (now - start) + data_time
        state.step += 1
        state.epoch_step += 1
        self._account_time(phase.index)
        self._log_step(phase, total_loss, lr, grad_norm, phase.samples_per_step / max(step_seconds, 1e-9),
                       data_time / max(step_seconds, 1e-9))

    def _account_time(self, phase_index: int) -> None:
        now = time.monotonic()
        seconds = now - self.tick
        self.tick = now
        self.state.elapsed += seconds
        self.eta.observe(phase_index, seconds)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg.loss
        if cfg.name == "focal":
            return focal_loss(logits, target, cfg.focal_gamma, self.loss_weight, cfg.label_smoothing)
        return F.cross_entropy(logits, target, weight=self.loss_weight, label_smoothing=cfg.label_smoothing)

    def _log_step(self, phase, loss: float, lr: float, grad_norm: float, samples_per_s: float,
                  data_share: float) -> None:
        self.last_metrics = {"train_loss": loss, "train_loss_smooth": self.smoother.update(loss), "lr": lr,
                             "samples_per_s": samples_per_s, "grad_norm": grad_norm, "data_share": data_share}
        if self.state.step % self.cfg.log_every == 0 or self.state.step == self.plan.total_steps:
            record = {"kind": "train", "step": self.state.step, "epoch": self.state.epoch,
                      "phase": phase.index, "time": time.time(), "train_loss": loss, "lr": lr,
                      "grad_norm": grad_norm, "samples_per_s": samples_per_s, "data_share": data_share}
            self.write_record(record)

    def write_record(self, record: dict) -> None:
        """Append to history.msgpack. On a full disk the record is kept (with any after it) and
        written when space is back: no gap, no duplicate; the run pauses meanwhile."""
        if self.history is not None:
            self.unwritten.append(record)
            try:
                self._flush_unwritten()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._pause_for_disk(DiskFullError(f"appending to {self.history.path} failed: {exc}",
                                                   free=self._free_bytes()))
        self.publisher.record(record)

    def _flush_unwritten(self) -> None:
        while self.unwritten:
            self.history.append(self.unwritten[0])
            self.unwritten.pop(0)

    # ------------------------------------------------------------------ epochs and phases
    def end_epoch(self) -> None:
        """Evaluate when due, update early stopping, move to the next epoch (and phase)."""
        state = self.state
        finished_phase = self.plan.phase_at(state.step - 1)
        phase_end = state.step == finished_phase.end_step
        epoch_in_phase = state.epoch - finished_phase.start_epoch + 1
        if phase_end or epoch_in_phase % self.cfg.eval.every_epochs == 0 or state.step >= self.plan.total_steps:
            self.evaluate()
        state.epoch += 1
        state.epoch_step = 0
        if phase_end and state.step < self.plan.total_steps:
            self._apply_phase(self.plan.phase_at(state.step), announce=True)
        self.checkpoint(reason="phase_end" if phase_end else "epoch_end", phase_end=phase_end)

    def _train_mode(self) -> None:
        """Training mode; frozen batch-norm keeps its statistics only if they are pretrained."""
        models.set_train_mode(self.model, keep_frozen_stats=bool(self.cfg.model.pretrained))

    def _apply_phase(self, phase, announce: bool) -> None:
        trainable, total = models.apply_trainable(self.model, phase.trainable)
        self._train_mode()
        if announce:
            self.event("phase", "info", f"phase {phase.index + 1}/{len(self.plan.phases)} {phase.name}: "
                       f"{trainable:,}/{total:,} parameters train, LR x{phase.lr_mult}",
                       index=phase.index, name=phase.name, trainable_params=trainable, total_params=total)

    def evaluate(self) -> dict:
        """Evaluate on the validation set, write the eval record and apply its consequences.

        With EMA on, both the EMA and (eval.ema.evaluate_raw) the raw weights are evaluated and
        the better eval.monitor value is followed (a tie or a missing value goes to the EMA):
        its metrics are the record's val_* keys, `eval_weights` names it, val_ema_* and
        val_raw_* keep both sets' scalars (val_ema_accuracy, val_raw_loss, ...)."""
        if self.ema is None:
            metrics, chosen, extra = self._evaluate_model(self.model), "raw", {}
        else:
            sets = {"ema": self._evaluate_model(self.ema.module)}
            if self.cfg.eval.ema.evaluate_raw:
                sets["raw"] = self._evaluate_model(self.model)
            chosen = self._pick_weights(sets)
            metrics = sets[chosen]
            # val_ema_* / val_raw_*: inside the val_ namespace history series and export use
            extra = {f"val_{name}_{k.removeprefix('val_')}": v for name, m in sets.items() for k, v in m.items()
                     if k.startswith("val_") and isinstance(v, (int, float))}
            extra["eval_weights"] = chosen
        record = {"kind": "eval", "step": self.state.step, "epoch": self.state.epoch,
                  "phase": self.plan.phase_at(self.state.step - 1).index, "time": time.time(), **metrics, **extra}
        self.last_confusion = metrics.get("confusion")
        self.write_record(record)
        self._after_eval(metrics, chosen if self.ema is not None else None)
        return metrics

    def _pick_weights(self, sets: dict) -> str:
        """"raw" when its monitor value is strictly better than the EMA's, else "ema"."""
        ema, raw = (sets.get(name, {}).get(self.cfg.eval.monitor) for name in ("ema", "raw"))
        return "raw" if self.cfg.eval.monitor_rule.exact().better(raw, ema) else "ema"

    @torch.no_grad()
    def _evaluate_model(self, model: torch.nn.Module) -> dict:
        model.eval()
        loader = make_loader(self.data.val, self.cfg.eval.batch_size or 2 * self.cfg.optim.batch_size,
                             sampler=None, num_workers=self.cfg.data.num_workers)
        probs, labels, loss_sum = [], [], 0.0
        with torch.random.fork_rng(devices=[]):  # starting a loader draws from the global RNG
            batches = iter(loader)
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            probs.append(logits.softmax(dim=1).numpy())
            labels.append(y.numpy())
        self._train_mode()
        y_true = np.concatenate(labels)
        metrics = classification_metrics(y_true, np.concatenate(probs), list(self.classes),
                                          loss=loss_sum / max(len(y_true), 1))
        if self.cfg.eval.monitor == TRAIN_MONITOR:
            metrics[TRAIN_MONITOR] = self.smoother.value
        return metrics

    def _after_eval(self, metrics: dict, weights: Optional[str] = None) -> None:
        state, ev = self.state, self.cfg.eval
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        state.last_eval = dict(scalars, step=state.step, epoch=state.epoch)
        if weights is not None:
            state.last_eval["eval_weights"] = weights
        value = metrics.get(ev.monitor)
        improved = self.cfg.eval.monitor_rule.better(value, state.best_metric)
        counts = self._phase_can_improve()
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
            state.best_eval = dict(state.last_eval)
            self._save_best()
        else:
            state.evals_since_best += counts
        self._update_plateau(value if counts else None)
        summary = ", ".join(f"{k.removeprefix('val_')} {scalars[k]:.4f}" for k in
                            ("val_loss", "val_accuracy", "val_f1_macro", "val_auc_roc") if scalars.get(k) is not None)
        which = f" ({weights} weights)" if weights is not None else ""
        self.event("eval", "info", f"epoch {state.epoch + 1} eval{which}: {summary}" + (" (best)" if improved else ""),
                   step=state.step, epoch=state.epoch, metrics=scalars, improved=improved,
                   **({"eval_weights": weights} if weights is not None else {}))
        patience = ev.early_stopping.patience
        if patience is not None and not improved and counts:
            left = patience - state.evals_since_best
            self.event("early_stopping", "warning" if left <= 1 else "info",
                       f"no improvement of {ev.monitor} for {state.evals_since_best} evals ({max(left, 0)} left)",
                       patience_left=max(left, 0), best=state.best_metric)
            if left <= 0:
                state.stopped_early = True

    def _phase_can_improve(self) -> bool:
        """False in a phase that trains only the classifier on a backbone that is frozen and was
        never trained (trainable 0 without model.pretrained; config_warnings names it): its
        evaluations use up neither early-stopping nor plateau patience."""
        return self.plan.phase_at(self.state.step - 1).trainable > 0.0 or bool(self.cfg.model.pretrained)

    def _update_plateau(self, value: Optional[float]) -> None:
        if self.cfg.schedule.name != "plateau" or value is None:
            return
        s, p = self.state, self.cfg.schedule.plateau
        if self.cfg.eval.monitor_rule.better(value, s.plateau_best):
            s.plateau_best, s.plateau_bad = value, 0
            return
        s.plateau_bad += 1
        if s.plateau_bad > p.patience:
            s.plateau_scale *= p.factor
            s.plateau_bad = 0
            self.event("lr", "info", f"plateau: LR scaled to x{s.plateau_scale:.4g}", scale=s.plateau_scale)

    def _save_best(self) -> None:
        try:
            self._save_weights("best.pt")
            self.best_unsaved = False
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            if not (is_disk_full(exc) or self._free_bytes() < self._space_needed()):
                raise
            self.best_unsaved = True  # written again when space is back (nothing trains meanwhile)
            self._pause_for_disk(DiskFullError(f"writing best.pt failed: {exc}", free=self._free_bytes()))

    def _save_weights(self, name: str) -> None:
        if self.rank != 0:
            return
        best_from = (self.state.best_eval or {}).get("eval_weights", "ema")  # the weights best.pt holds
        model = self.ema.module if self.ema is not None and best_from == "ema" else self.model
        self._write_weights(model.state_dict(), self.state.step, name)

    def _write_weights(self, weights: dict, step: int, name: str) -> None:
        atomic_torch_save({"model": weights, "classes": list(self.classes), "config": resolved_dict(self.cfg),
                           "step": step}, self.run_dir / name)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict:
        self.state.eta = self.eta.state_dict()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "loop": asdict(self.state), "rng": rng_state(), "threads": self.cfg.threads,
                "train_loss_smooth": self.smoother.value,
                "history_offset": self._history_offset()}

    def _history_offset(self) -> int:
        return self.history.tell() if self.history is not None else 0

    def stable_tensors(self) -> list[torch.Tensor]:
        """Tensors only the optimizer step and the EMA update after it modify: a checkpoint's
        writer copies them while the next step's forward and backward run (CheckpointStore.fence).
        Not the model's buffers: batch norm updates its running statistics in the forward pass."""
        tensors = list(self.model.parameters())
        tensors += [v for per_param in self.optimizer.state.values() for v in per_param.values()
                    if isinstance(v, torch.Tensor)]
        if self.ema is not None:
            tensors += list(self.ema.module.parameters()) + list(self.ema.module.buffers())
        return tensors

    def checkpoint(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        """Snapshot the state in memory and hand it to the background writer. False if the
        write could not even start (reported as checkpoint_failed; a full disk pauses the run)."""
        if self.rank != 0:
            return True
        started = time.perf_counter()
        self.wait_for_checkpoint()  # a failure of the previous write was reported by its writer
        self.last_checkpoint_time = time.monotonic()
        step = self.state.step
        try:
            self._flush_unwritten()  # the offset stored below must follow every logged record
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            error = DiskFullError(f"checkpoint at step {step}: appending to {self.history.path} failed: {exc}",
                                  free=self._free_bytes())
            self._checkpoint_failed(step, self._history_offset(), error, reason, phase_end)
            return False
        state = self.checkpoint_state()
        self.ckpt_estimate = estimate_bytes(state)
        free, needed = self._free_bytes(), self._space_needed()
        if free < needed:  # the store checks too, in its thread: this pauses the run at once
            error = DiskFullError(f"no space left for checkpoint step {step} in {self.store.ckpt_dir} "
                                  f"(needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free)",
                                  free=free, needed=needed)
            self._checkpoint_failed(step, state["history_offset"], error, reason, phase_end)
            return False
        meta = {"step": step, "history_offset": state["history_offset"], "epoch": self.state.epoch,
                "phase": self.plan.phase_at(max(step - 1, 0)).index, "reason": reason,
                "phase_end": phase_end, "time": time.time(), "mode": self.cfg.eval.mode,
                "min_delta": self.cfg.eval.early_stopping.min_delta,
                "metric": (self.state.last_eval or {}).get(self.cfg.eval.monitor),
                "request_id": request_id, "config_sha256": self.config_hash}
        try:
            self.store.save_async(state, meta, stable=self.stable_tensors(),
                                  before_commit=self._history_durable, after_commit=self._write_last_weights)
        except CheckpointError as exc:
            self._checkpoint_failed(step, state["history_offset"], exc, reason, phase_end)
            return False
        finally:
            self.pending_stall = time.perf_counter() - started
        return True

    def write_checkpoint(self, reason: str, phase_end: bool = False, request_id: Optional[int] = None) -> bool:
        """Checkpoint and wait for the write; True if it is on disk."""
        return self.checkpoint(reason, phase_end, request_id) and self.wait_for_checkpoint()

    def _checkpoint_failed(self, step: int, offset: Optional[int], error: BaseException, reason: str,
                           phase_end: bool, **data: Any) -> None:
        """Report a failed checkpoint once: a retry of the same state (same step and history
        offset, e.g. a stop right after a failed interval checkpoint) that fails again is only
        logged. A full disk is handed to the loop (see _watch_disk), which pauses."""
        repeat = self.failed_at == (step, offset)
        self.failed_at, self.last_failure = (step, offset), error
        if is_disk_full(error):
            self.disk_error = (error, step, reason, phase_end)
        if repeat:
            log.error("checkpoint at step %s failed again: %s", step, error)
            return
        self.event("checkpoint_failed", "error", f"checkpoint at step {step} failed: {error}",
                   **{"step": step, "error": str(error), "reason": reason, "disk_full": is_disk_full(error), **data})

    def _fence_checkpoint(self) -> None:
        waited = self.store.fence()
        if waited and self.pending_stall is not None:
            self.pending_stall += waited

    def _history_durable(self) -> None:
        """Runs in the checkpoint writer: the history up to the checkpoint's offset must be on
        disk before the checkpoint that points there is."""
        if self.history is not None:
            self.history.fsync()

    def _write_last_weights(self, snap: dict, result) -> None:
        """last.pt from the checkpoint just written; runs in the checkpoint writer thread."""
        try:
            self._write_weights(eval_weights(snap), result.step, "last.pt")
        except Exception as exc:  # the checkpoint itself is safe; last.pt is a convenience copy
            self.event("alert", "warning", f"could not write last.pt: {exc}", what="last_weights", error=str(exc))

    def _checkpoint_done(self, result) -> None:
        """Called by the checkpoint store's writer thread."""
        info = result if isinstance(result, dict) else vars(result)
        if info.get("error"):
            meta = info.get("meta") or {}
            extra = {k: v for k, v in _plain(info).items() if k not in ("step", "error")}
            self._checkpoint_failed(info.get("step"), meta.get("history_offset"), info["error"],
                                    meta.get("reason", ""), bool(meta.get("phase_end")), **extra)
            return
        self.saved_at = (info.get("step"), (info.get("meta") or {}).get("history_offset"))
        stall = self.pending_stall
        self.event("checkpoint", "info", f"checkpoint step {info.get('step')}: stall {1000 * (stall or 0):.0f} ms, "
                   f"write {info.get('write_s', 0):.2f} s", stall_s=stall, **_plain(info))

    def wait_for_checkpoint(self) -> bool:
        """Block until the write in flight is done. A failed write was already reported as a
        checkpoint_failed event and the previous checkpoint is intact, so training goes on."""
        try:
            self.store.wait()
            return True
        except CheckpointError:
            return False

    def maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint_time >= self.cfg.checkpoint.interval_seconds:
            self.checkpoint(reason="interval")

    # ------------------------------------------------------------------ disk space
    def _free_bytes(self) -> int:
        return shutil.disk_usage(self.run_dir).free

    def _space_needed(self) -> int:
        """Free bytes the run needs: the next checkpoint plus checkpoint.min_free_mb (room left
        for state.json, events and logs)."""
        return self.store.space_needed(self.ckpt_estimate)

    def _watch_disk(self) -> None:
        """Pause on a full disk: one the checkpoint writer met, or (one statvfs every
        DISK_CHECK_SECONDS) free space below what the next checkpoint needs."""
        if self.rank != 0:
            return
        if self.disk_error is not None:
            error, step, reason, phase_end = self.disk_error
            self.disk_error = None
            # redo it when space is back; the phase-end mark only if it is still that state
            same = step == self.state.step
            self.retry_checkpoint = {"reason": reason if same else "retry", "phase_end": phase_end and same}
            self._pause_for_disk(error)
        now = time.monotonic()
        if self.disk_full is None and now - self.last_disk_check >= DISK_CHECK_SECONDS:
            self.last_disk_check = now
            free, needed = self._free_bytes(), self._space_needed()
            if free < needed:
                self._pause_for_disk(DiskFullError(f"free space in {self.run_dir} is below what the next "
                                                   "checkpoint needs", free=free, needed=needed))

    def _pause_for_disk(self, error: DiskFullError) -> None:
        free = getattr(error, "free", None)
        free = self._free_bytes() if free is None else free
        needed = getattr(error, "needed", None) or self._space_needed()
        first = self.disk_full is None
        self.disk_full = {"free_bytes": free, "needed_bytes": needed, "path": str(self.run_dir), "cause": str(error)}
        if not first:
            return
        if not self.paused:
            self._account_time(self.plan.phase_at(min(self.state.step, self.plan.total_steps - 1)).index)
        numbers = f"{free / 2**20:.1f} MiB free, the run needs {needed / 2**20:.1f} MiB"
        self.event("state", "error", f"paused: disk full ({numbers})", state="paused", reason="disk_full",
                   free_bytes=free, needed_bytes=needed)
        self.event("alert", "error", f"disk full: {self.run_dir} has {numbers} (next checkpoint about "
                   f"{self.ckpt_estimate / 2**20:.1f} MiB + checkpoint.min_free_mb); training is paused at step "
                   f"{self.state.step} and goes on by itself when space is freed ({error})",
                   what="disk_full", path=str(self.run_dir), free_bytes=free, needed_bytes=needed,
                   step=self.state.step)

    def _try_disk_back(self, request_id: Optional[int] = None) -> bool:
        """While paused for disk space: if there is room again, write what the full disk refused
        (history records, best.pt, the failed checkpoint) and go on. False while still full."""
        free, needed = self._free_bytes(), self._space_needed()
        if free < needed:
            self.disk_full.update(free_bytes=free, needed_bytes=needed)
            return False
        try:
            self._flush_unwritten()
            if self.best_unsaved:
                self._save_best()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.disk_full.update(free_bytes=self._free_bytes(), cause=str(exc))
            return False
        if self.best_unsaved:
            return False
        if self.retry_checkpoint is not None:
            if not self.write_checkpoint(**self.retry_checkpoint) and self.disk_error is not None:
                error = self.disk_error[0]
                self.disk_error = None
                self.disk_full.update(free_bytes=self._free_bytes(), cause=str(error))
                return False
            self.retry_checkpoint = None  # written, or failed for another reason (reported)
        self.disk_full = None
        self.last_disk_check = time.monotonic()
        message = f"disk space is back ({free / 2**20:.1f} MiB free): training goes on at step {self.state.step}"
        self.event("alert", "info", message, what="disk_space_back", free_bytes=free, needed_bytes=needed)
        if not self.paused:
            self.tick = time.monotonic()  # the wait was not training time
            extra = {"request_id": request_id} if request_id is not None else {}
            self.event("state", "info", "running", state="running", reason="disk_space_back", **extra)
        return True

    # ------------------------------------------------------------------ controls
    def handle_controls(self) -> None:
        """Apply pending pause/resume/checkpoint/stop requests (at a step boundary). While
        paused, wait for requests; while paused for disk space, also look at the free space
        every DISK_POLL_SECONDS. Returns as soon as a stop is requested."""
        while self.stop_requested is None:
            try:
                if self.disk_full is not None:
                    request_id, action = self.controls.get(timeout=DISK_POLL_SECONDS)
                elif self.paused:
                    request_id, action = self.controls.get()
                else:
                    request_id, action = self.controls.get_nowait()
            except queue.Empty:
                if self.disk_full is None:
                    return
                self._try_disk_back()
                continue
            self._control(request_id, action)
            if not self.paused and self.disk_full is None and self.controls.empty():
                return

    def _control(self, request_id: int, action: str) -> None:
        if action == "pause" and not self.paused:
            self.paused = True
            if self.disk_full is None:  # else the time stopped counting when the disk filled up
                self._account_time(self.plan.phase_at(self.state.step).index)
            self.event("state", "info", "paused", state="paused", request_id=request_id)
        elif action == "resume" and (self.paused or self.disk_full is not None):
            self.paused = False
            if self.disk_full is None:
                self.tick = time.monotonic()  # paused time is not training time
                self.event("state", "info", "running", state="running", request_id=request_id)
            elif not self._try_disk_back(request_id):
                full = self.disk_full
                self.event("request", "error", f"resume refused: the disk is still full: {full['path']} has "
                           f"{full['free_bytes'] / 2**20:.1f} MiB free, the run needs {full['needed_bytes'] / 2**20:.1f} "
                           "MiB; free space and the run goes on by itself", id=request_id, action=action,
                           outcome="failed", free_bytes=full["free_bytes"], needed_bytes=full["needed_bytes"])
        elif action == "checkpoint":
            self._checkpoint_request(request_id)
        elif action == "stop":
            self.stop_requested = request_id
        else:
            self.event("request", "info", f"{action}: nothing to do", id=request_id, action=action, outcome="noop")

    def _checkpoint_request(self, request_id: int) -> None:
        """Write a checkpoint for a request, unless the newest one already holds this very state
        (the same step and history offset): then that one answers it. So requests queued
        together cost one write, not one each."""
        self.wait_for_checkpoint()  # a write in flight may be of this state
        if self.saved_at == (self.state.step, self._history_offset()) and not self.unwritten:
            self.event("request", "info", f"checkpoint at step {self.state.step} is written",
                       id=request_id, action="checkpoint", outcome="done")
        elif self.write_checkpoint(reason="request", request_id=request_id):
            self.event("request", "info", f"checkpoint written at step {self.state.step}",
                       id=request_id, action="checkpoint", outcome="done")
        else:
            self.event("request", "error", f"checkpoint at step {self.state.step} failed: {self.last_failure}",
                       id=request_id, action="checkpoint", outcome="failed")

    # ------------------------------------------------------------------ publishing
    def progress_body(self) -> dict:
        state, phase = self.state, self.plan.phase_at(min(self.state.step, self.plan.total_steps - 1))
        phase_etas = self.eta.phase_etas(state.step)
        return {"step": state.step, "total_steps": self.plan.total_steps, "epoch": state.epoch,
                "total_epochs": self.plan.total_epochs, "phase": phase.index, "phase_name": phase.name,
                "epoch_step": state.epoch_step, "steps_per_epoch": phase.steps_per_epoch,
                "elapsed": state.elapsed, "eta": phase_etas[-1], "phase_etas": phase_etas,
                "metrics": self.last_metrics, "time": time.time(),
                "last_eval": state.last_eval, "best_eval": state.best_eval}

    def publish_progress(self) -> None:
        self.publisher.progress(self.progress_body())

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        log.log(logging.WARNING if level != "info" else logging.INFO, "%s", message)
        self.publisher.event(kind, level, message, **data)

    # ------------------------------------------------------------------ the end
    def finish(self) -> Optional[str]:
        """End the run with a last checkpoint; "finished", "stopped" or "failed" (no best), or None to go on: a
        user's stop whose checkpoint failed is refused, and a full disk is waited for."""
        stopped = self.stop_requested is not None
        if self.state.stopped_early and not self.early_stop_announced:
            self.early_stop_announced = True
            self.event("early_stopping", "warning", f"early stopping at step {self.state.step}: best "
                       f"{self.cfg.eval.monitor} {self.state.best_metric}", patience_left=0,
                       best=self.state.best_metric)
        last_eval_step = (self.state.last_eval or {}).get("step")
        if not stopped and self.state.step > 0 and last_eval_step != self.state.step:
            self.evaluate()  # max_steps cut the run mid-epoch: still report where it got to
        saved = self.wait_for_checkpoint()
        if self.best_unsaved:
            self._save_best()
        if self.saved_at != (self.state.step, self._history_offset()) or self.unwritten:
            # else the run ends right after an epoch-end (or requested) checkpoint: rewriting the
            # same state would cost a full write and drop that checkpoint's phase_end mark
            saved = self.write_checkpoint(reason="stop" if stopped else "final")
        saved = saved and not self.best_unsaved
        if not saved and not self._end_anyway(stopped):
            return None
        self.store.close()
        self.publish_progress()
        if self.history is not None:
            self.history.close()
        if stopped:
            if saved:
                self.event("request", "info", f"stopped at step {self.state.step}", id=self.stop_requested,
                           action="stop", outcome="done")
            self.event("state", "info", "stopped", state="stopped")
            return "stopped"
        if self.state.best_step is None:
            return self._fail_without_best()
        last = self.state.last_eval
        self.event("finished", "info", f"finished at step {self.state.step}", best=self.state.best_eval,
                   last=last, classes=list(self.classes), confusion=self.last_confusion)
        self.event("state", "info", "finished", state="finished")
        return "finished"

    def _fail_without_best(self) -> str:
        """The plan ran to its end but eval.monitor never had a value: there is no best.pt and
        early stopping and plateau never acted. That is a failed run (exit code 1), not a
        plain "finished": its last checkpoint and last.pt are kept."""
        monitor = self.cfg.eval.monitor
        seen = sorted(k for k, v in (self.state.last_eval or {}).items() if k.startswith("val_") and v is not None)
        message = (f"no best checkpoint: eval.monitor {monitor!r} never had a value in any evaluation up to step "
                   f"{self.state.step}, so no best.pt was written and early stopping and plateau never acted; "
                   f"the last evaluation had {', '.join(seen) or 'no metrics'}. The run ends failed; "
                   f"the final checkpoint and last.pt are in {self.run_dir}")
        self.event("alert", "error", message, what="no_best", monitor=monitor, step=self.state.step)
        self.event("state", "error", f"failed: {message}", state="failed", reason="no_best")
        return "failed"

    def _end_anyway(self, stopped: bool) -> bool:
        """The last checkpoint failed: may the run end all the same?

        A user's stop: no. It is refused (a `request` event with outcome "failed" and an alert
        naming the cause) and training goes on, or stays paused on a full disk; its state stays
        recoverable and the stop can be sent again. A stop the process must obey (daemon gone,
        SIGTERM): yes, with the failure as its last events. The natural end of the plan: waits
        for disk space like any checkpoint; other failures were reported and the run ends."""
        cause = self.last_failure
        disk = cause is not None and is_disk_full(cause)
        if stopped and must_exit(self.stop_requested):
            self.event("request", "error", f"stopping without a final checkpoint: checkpoint at step "
                       f"{self.state.step} failed: {cause}; a resume goes on from the last checkpoint written",
                       id=self.stop_requested, action="stop", outcome="failed")
            return True
        if stopped:
            advice = "free space and stop again" if disk else "stop again to retry"
            message = (f"stop refused: checkpoint at step {self.state.step} failed: {cause}; "
                       f"the run goes on, {advice}")
            self.event("request", "error", message, id=self.stop_requested, action="stop", outcome="failed",
                       step=self.state.step, error=str(cause))
            self.event("alert", "error", message, what="stop_refused", step=self.state.step, error=str(cause))
            self.stop_requested = None
            self._watch_disk()  # a full disk pauses now
            # tell the daemon (which shows "stopping") what the run does instead
            if self.disk_full is not None:
                self.event("state", "error", "paused: disk full", state="paused", reason="disk_full",
                           free_bytes=self.disk_full["free_bytes"], needed_bytes=self.disk_full["needed_bytes"])
            else:
                state = "paused" if self.paused else "running"
                self.event("state", "info", state, state=state, reason="stop_refused")
            return False
        if disk or self.best_unsaved:
            self._watch_disk()  # the loop waits for space, then finish() runs again
            return False
        return True


def _plain(info: dict) -> dict:
    """Checkpoint results as msgpack-friendly values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()
            if isinstance(v, (str, int, float, bool, type(None), Path))}
