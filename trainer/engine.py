"""The Trainer: one readable loop that can be killed at any instant and resumed bit-exactly.

    while the plan is not done:
        watch the disk -> apply requests (pause, resume, checkpoint, stop) -> train one optimizer
        step -> log -> at an epoch end: evaluate, early stopping, phase change, checkpoint ->
        maybe checkpoint (interval) -> publish progress

Everything the next step depends on lives in `self.state` (counters, early-stopping and plateau
state, the ETA model) plus the model/optimizer/EMA state dicts and every RNG; all of it goes into
each checkpoint (`checkpoint_state`). Data order and augmentation are functions of (seed, epoch,
index), so a resumed run rebuilds the same batches from the checkpointed position.

Around the loop: evaluation.py (raw or EMA weights, early stopping, plateau), checkpoint/policy.py
(when to checkpoint, metadata, best.pt/last.pt), controls.py (requests), disk_space.py (the
full-disk pause), resume.py (loading the newest checkpoint).
"""
from __future__ import annotations

import logging
import math
import queue
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from trainer import compiling, device, models, setup_stages
from trainer.checkpoint.capture import estimate_bytes
from trainer.checkpoint.errors import DiskFullError, is_disk_full
from trainer.checkpoint.policy import CheckpointPolicy, config_sha256
from trainer.config import ConfigError, RunConfig
from trainer.controls import Controls
from trainer.allocator import keep_step_memory
from trainer.data import make_loader, mixup_batch, EpochSampler
from trainer.disk_space import DiskSpace
from trainer.distributed import FollowerCheckpoints, FollowerHistory, World
from trainer.ema import make_ema, slow_ema_alert
from trainer.evaluation import Evaluation
from trainer.history import HistoryWriter, LossSmoother
from trainer.monitor import monitor_problem
from trainer.resume import resume_group
from trainer.run.plan import write_plan
from trainer.run.rundir import RunDir
from trainer.schedule import EtaModel, Plan
from trainer.threads import follow_load
from trainer.store_setup import PrepareStopped, run_data, stopped_while_preparing

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where the trainer reports to: the daemon link, or the console in the foreground."""

    def progress(self, body: dict) -> None: ...
    def event(self, kind: str, level: str, message: str, **data: Any) -> None: ...
    def record(self, record: dict) -> None: ...
    def plan(self, body: dict) -> None: ...
    def preparing(self, body: dict) -> None: ...


class NullPublisher:
    def progress(self, body: dict) -> None:
        pass

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        pass

    def record(self, record: dict) -> None:
        pass

    def plan(self, body: dict) -> None:
        pass

    def preparing(self, body: dict) -> None:
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
    compile_decisions: dict = field(default_factory=dict)  # phase index -> trained compiled (compiling.py)


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


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = list(model.parameters())
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            **device.cuda_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    device.set_cuda_rng_state(state)


def check_monitor(cfg: RunConfig, classes, config_path: Path) -> None:
    """eval.monitor against the data's class count, known only now for folder data: a
    metric that is never produced (val_auc_roc with 10 classes) would silently never
    improve, so no best.pt, early stopping on nothing, plateau cuts for nothing."""
    problem = monitor_problem(cfg.eval.monitor, len(classes))
    if problem:
        raise ConfigError(str(config_path), [("eval.monitor", problem)])


def make_loss(cfg, weight: Optional[torch.Tensor]):
    """The training loss of (logits, soft targets): cross-entropy or focal (`cfg`: loss section)."""
    if cfg.name == "focal":
        return lambda logits, target: focal_loss(logits, target, cfg.focal_gamma, weight, cfg.label_smoothing)
    return lambda logits, target: F.cross_entropy(logits, target, weight=weight, label_smoothing=cfg.label_smoothing)


def epoch_batches(cfg: RunConfig, train_set, plan: Plan, state: LoopState, world: Optional[World] = None):
    """Iterator over the rest of the current epoch, one list of (x, y, seconds waited) micro-batches
    per optimizer step (in a data-parallel run, this rank's part of each)."""
    phase = plan.phase_at(state.step)
    per_step = phase.samples_per_step
    world = world or World()
    share = (world.rank, world.size, phase.batch_size) if world.enabled else None
    sampler = EpochSampler(n=len(train_set), seed=cfg.seed, epoch=state.epoch, start=state.epoch_step * per_step,
                           length=phase.steps_per_epoch * per_step,
                           labels=train_set.labels if cfg.data.balanced_sampler else None, share=share)
    loader = make_loader(train_set, phase.batch_size // world.size, sampler=sampler,
                         num_workers=cfg.data.num_workers, pin_memory=device.pin_memory())
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


class Trainer:
    """Trains one run in `run_dir`, resuming from its newest valid checkpoint if there is one.
    `controls` is the queue of (request id, action) the daemon or the console puts requests in.
    `accept_data_change`: resume on a feature store other than the recorded one (store_setup)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, publisher: Optional[Publisher] = None,
                 controls: Optional[queue.SimpleQueue] = None, accept_data_change: bool = False):
        self.cfg = cfg
        self.accept_data_change = accept_data_change
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.publisher = publisher or NullPublisher()
        self.state = LoopState()
        self.smoother = LossSmoother()  # the same smoothing the TUI's series use
        self.last_metrics: dict = {}
        self.last_confusion: Optional[list] = None
        self.config_hash = config_sha256(cfg)
        self.unwritten: list[dict] = []  # history records a full disk refused, in order
        self.early_stop_announced = False
        self.world = World.from_env(cfg.distributed.timeout_seconds, cfg.distributed.bucket_cap_mb)
        self.last_world: Optional[dict] = None  # the progress body's `world` (rank 0 of a group)
        self.controls = Controls(self, controls or queue.SimpleQueue(), self.world)
        self.disk = DiskSpace(self)
        self.checkpoints = CheckpointPolicy(self, cfg, self.run_dir) if self.world.main else FollowerCheckpoints()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.cfg
        self.placement = device.Placement(cfg, str(self.files.config))  # cpu or cuda, autocast, loss scaler
        keep_step_memory()  # before the first step: activations reused from the heap, not mmapped anew
        torch.set_num_threads(cfg.threads)
        self.threads = follow_load(cfg.threads, cfg.threads_follow_load, torch.set_num_threads, self.event)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.world.start()
        with setup_stages.data_stages(self.event, in_ram=cfg.data.store is None):
            if not self.world.main:
                self.world.barrier()  # rank 0 prepares a missing feature store first
            self.data = run_data(self)  # prepares a missing store; a resume checks its fingerprint
            if self.world.main:
                self.world.barrier()
        if self.data.skipped:
            self.event("alert", "warning", f"skipped {len(self.data.skipped)} bad data files (data.skip_bad_files)",
                       what="bad_data", count=len(self.data.skipped))
        self.classes = self.data.classes
        check_monitor(cfg, self.classes, self.files.config)
        self.plan = Plan.from_config(cfg, len(self.data.train))
        self.eta = EtaModel(self.plan)
        setup_stages.announce(self.event, "model", f"building model {cfg.model.name} ({len(self.classes)} classes)")
        self.model = models.build_model(cfg, len(self.classes), self.data.in_chans, self.data.input_shape)
        self.model.to(self.placement.device)  # before the optimizer and the EMA copy are made
        self.channels_last = cfg.model.channels_last and len(self.data.input_shape) == 3
        self.optimizer = make_optimizer(cfg, self.model)
        self.ema = make_ema(cfg, self.model)
        self.loss_weight = self.placement.to(class_weights(cfg.loss.class_weights, self.data.class_counts["train"]))
        self.loss = make_loss(cfg.loss, self.loss_weight)
        self.history = HistoryWriter(self.files.history) if self.world.main else FollowerHistory()
        self.checkpoints.open_store()
        # the mode comes from the config and the data alone, so a resume chooses the same one; a measured
        # run's per-phase decisions come back with the loop state (trainer/compiling.py)
        self.training_forward = compiling.TrainingForward(
            compiling.choose(cfg.model.compile, self.plan, self.model, self.data.input_shape, self.world.enabled),
            self.model, cfg.threads, cfg.threads_follow_load, self.event, str(self.files.config))
        self.resumed = resume_group(self)
        self.evaluation = Evaluation(cfg, self.data, self.plan, self.state, self.model, self.ema, self.channels_last,
                                     self.smoother, self.event, self._train_mode, self.checkpoints.save_best,
                                     self.publish_progress, self.world)
        self._apply_phase(self.plan.phase_at(self.state.step), announce=not self.resumed)
        if self.world.local_rank == 0:  # every box's run directory: its status and dashboard show the plan
            self._write_plan()
        self.checkpoints.estimate = estimate_bytes(self.checkpoint_state())
        alert = None if self.resumed else slow_ema_alert(cfg, self.ema, self.plan)
        if alert is not None:
            message, data = alert
            self.event("alert", "warning", message, **data)

    def _write_plan(self) -> None:
        # fsync'd with its directory: offline readers need it whole
        self.publisher.plan(write_plan(self.run_dir, self.plan.to_dict(), self.config_summary()))

    def config_summary(self) -> dict:
        return {**self.cfg.summary(), "classes": list(self.classes), "n_train": len(self.data.train),
                "n_val": len(self.data.val), "compile": self.training_forward.choice.to_dict(),
                "parameters": sum(p.numel() for p in self.model.parameters()),  # for `longhaul compare`
                "world_size": self.world.size, "hosts": self.world.hosts}

    # ------------------------------------------------------------------ the loop
    def run(self) -> str:
        """Set up (resuming if a checkpoint exists), then train. Returns "finished", "stopped",
        or "failed" when the plan ended without any best checkpoint (see fail_without_best)."""
        try:
            self.setup()
        except PrepareStopped:  # a stop while the feature store was prepared: nothing trained yet
            return stopped_while_preparing(self)
        result = self.train()
        self.world.close()
        return result

    def train(self) -> str:
        """Train until the plan (or max_steps) is done, early stopping triggers, or a stop
        request arrives."""
        setup_stages.ready(self.event, self.cfg.model.name, self.model, self.state.step, self.plan.total_steps)
        self.event("state", "info", "running", state="running")
        self.training_forward.announce()
        self.tick = time.monotonic()
        self.checkpoints.last_time = self.tick  # else a set-up longer than the interval checkpoints step 1
        while True:
            self._train_until_stop()
            result = self.finish()
            if self.world.agree_stop(result is not None):
                return result or "stopped"
            # a stop was refused (its checkpoint failed): go on
            self.controls.stop_requested = None

    def _train_until_stop(self) -> None:
        """Train until the plan is done or a stop request arrives; wait while paused (by a
        request, or for disk space)."""
        batches = epoch_batches(self.cfg, self.data.train, self.plan, self.state, self.world)
        while True:
            if self.controls.stop_at_boundary():
                return
            try:
                batch_group = next(batches)
            except StopIteration:  # defensive: the sampler length matches steps_per_epoch
                batches = epoch_batches(self.cfg, self.data.train, self.plan, self.state, self.world)
                continue
            self.train_step(batch_group)
            if self.threads is not None:
                self.threads.tick()
            if self.state.epoch_step == self.plan.phase_at(self.state.step - 1).steps_per_epoch:
                self.end_epoch()
                batches = epoch_batches(self.cfg, self.data.train, self.plan, self.state, self.world)
            self.checkpoints.maybe_checkpoint()
            self.publish_progress()

    def should_continue(self) -> bool:
        return self.state.step < self.plan.total_steps and not self.state.stopped_early

    def train_step(self, group: list) -> None:
        """One optimizer step over `accum_steps` micro-batches."""
        cfg, state = self.cfg, self.state
        phase = self.plan.phase_at(state.step)
        lr = self.plan.lr_at(state.step) * state.plateau_scale
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.training_forward.begin_step(phase, state.compile_decisions)
        self.world.seed_step(cfg.seed, state.step)
        self.world.clock.reset()
        start = time.perf_counter()
        data_time = sum(t for _, _, t in group)
        total_loss = 0.0
        for i, (x, y, _) in enumerate(group):
            x, y_soft = mixup_batch(x, y, len(self.classes), cfg.augment.mixup, cfg.seed, state.epoch,
                                    state.step * phase.accum_steps + i)
            x, y_soft = self.placement.to(x, y_soft)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.world.accumulating(self.training_forward.model, last=i == len(group) - 1):
                with self.placement.autocast():
                    logits = self.training_forward(x)
                loss = self.loss(logits.float(), y_soft)
                self.placement.backward(loss / phase.accum_steps)  # fp16: scaled
            total_loss += loss.item() / phase.accum_steps
        exposed = self.world.clock.exposed(time.perf_counter())
        total_loss, self.last_world = self.world.step(total_loss, time.perf_counter() - start + data_time, data_time,
                                                      exposed)
        self.checkpoints.fence()  # the optimizer step and EMA update below modify stable tensors
        grad_norm = self.placement.clip(self.optimizer, self.model, cfg.optim.grad_clip)  # fp16: unscaled first
        if math.isfinite(total_loss):
            self.placement.step(self.optimizer)
        else:
            self.event("alert", "error", f"non-finite loss {total_loss} at step {state.step}: update skipped",
                       what="nan_loss", step=state.step)
        self.placement.end_step(self.optimizer)  # fp16's scale adapts; the gradients are dropped
        if self.ema is not None:
            # timm counts updates from 1 (its train script passes the count after the step)
            self.ema.update(self.model, step=state.step + 1)
        step_seconds = (time.perf_counter() - start) + data_time
        compiled = self.training_forward.end_step(phase, state.step, state.compile_decisions)
        state.step += 1
        state.epoch_step += 1
        self.account_time(phase.index, estimate=not compiled)
        self._log_step(phase, total_loss, lr, grad_norm, phase.samples_per_step / max(step_seconds, 1e-9),
                       data_time / max(step_seconds, 1e-9))

    def account_time(self, phase_index: Optional[int] = None, estimate: bool = True) -> None:
        """Count the time since the last tick as training time (of `phase_index`, by default the
        current phase's), and unless `estimate` is false (a step that compiled for minutes) as a
        measurement for the ETA."""
        if phase_index is None:
            phase_index = self.plan.phase_at(min(self.state.step, self.plan.total_steps - 1)).index
        now = time.monotonic()
        seconds = now - self.tick
        self.tick = now
        self.state.elapsed += seconds
        if estimate:
            self.eta.observe(phase_index, seconds)

    def _log_step(self, phase, loss: float, lr: float, grad_norm: float, samples_per_s: float,
                  data_share: float) -> None:
        self.last_metrics = {"train_loss": loss, "train_loss_smooth": self.smoother.update(loss), "lr": lr,
                             "samples_per_s": samples_per_s, "grad_norm": grad_norm, "data_share": data_share}
        if self.state.step % self.cfg.log_every == 0 or self.state.step == self.plan.total_steps:
            record = {"kind": "train", "step": self.state.step, "epoch": self.state.epoch,
                      "phase": phase.index, "time": time.time(), "elapsed": self.state.elapsed, "train_loss": loss, "lr": lr,
                      "grad_norm": grad_norm, "samples_per_s": samples_per_s, "data_share": data_share}
            self.write_record(record)

    def write_record(self, record: dict) -> None:
        """Append to history.msgpack. On a full disk the record is kept (with any after it) and
        written when space is back: no gap, no duplicate; the run pauses meanwhile."""
        self.unwritten.append(record)
        try:
            self.flush_history()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.disk.pause(DiskFullError(f"appending to {self.history.path} failed: {exc}",
                                          free=self.disk.free_bytes()))
        self.publisher.record(record)

    def flush_history(self) -> None:
        """Append the records a full disk refused; OSError if it refuses again."""
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
        self.checkpoints.checkpoint(reason="phase_end" if phase_end else "epoch_end", phase_end=phase_end)

    def evaluate(self) -> dict:
        """Evaluate, write the eval record and apply its consequences (evaluation.Evaluation)."""
        metrics, record = self.evaluation.evaluate()
        self.last_confusion = metrics.get("confusion")
        self.write_record(record)
        self.evaluation.judge(metrics, record.get("eval_weights"))
        return metrics

    def _train_mode(self) -> None:
        """Training mode; frozen batch-norm keeps its statistics only if they are pretrained."""
        models.set_train_mode(self.model, keep_frozen_stats=bool(self.cfg.model.pretrained))

    def _apply_phase(self, phase, announce: bool) -> None:
        trainable, total = models.apply_trainable(self.model, phase.trainable)
        self._train_mode()
        if self.world.enabled:
            self.training_forward.model = self.world.wrap(self.model)
        if announce:
            self.event("phase", "info", f"phase {phase.index + 1}/{len(self.plan.phases)} {phase.name}: "
                       f"{trainable:,}/{total:,} parameters train, LR x{phase.lr_mult}",
                       index=phase.index, name=phase.name, trainable_params=trainable, total_params=total)

    # ------------------------------------------------------------------ the state of a checkpoint
    def checkpoint_state(self) -> dict:
        self.state.eta = self.eta.state_dict()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "loop": asdict(self.state),
                "rng": rng_state(), "threads": self.cfg.threads, "world_size": self.world.size,
                "train_loss_smooth": self.smoother.value,
                "history_offset": self.history.tell(), **self.placement.state_dict()}  # fp16: the scaler

    def restore(self, ckpt: dict) -> None:
        """The inverse of checkpoint_state (the history offset is resume's)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.state = LoopState(**ckpt["loop"])
        self.eta.load_state_dict(self.state.eta)
        self.smoother.value = ckpt.get("train_loss_smooth")
        set_rng_state(ckpt["rng"])
        self.placement.load_state_dict(ckpt)

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

    # ------------------------------------------------------------------ publishing
    def progress_body(self) -> dict:
        state, phase = self.state, self.plan.phase_at(min(self.state.step, self.plan.total_steps - 1))
        phase_etas = self.eta.phase_etas(state.step)
        return {"step": state.step, "total_steps": self.plan.total_steps, "epoch": state.epoch,
                "total_epochs": self.plan.total_epochs, "phase": phase.index, "phase_name": phase.name,
                "epoch_step": state.epoch_step, "steps_per_epoch": phase.steps_per_epoch,
                "elapsed": state.elapsed, "eta": phase_etas[-1], "phase_etas": phase_etas,
                "metrics": self.last_metrics, "time": time.time(),
                "last_eval": state.last_eval, "best_eval": state.best_eval,
                **({"world": self.last_world} if self.last_world is not None else {})}

    def publish_progress(self) -> None:
        self.publisher.progress(self.progress_body())

    def event(self, kind: str, level: str, message: str, **data: Any) -> None:
        log.log(logging.WARNING if level != "info" else logging.INFO, "%s", message)
        self.publisher.event(kind, level, message, **data)

    # ------------------------------------------------------------------ the end
    def finish(self) -> Optional[str]:
        """End the run with a last checkpoint; "finished", "stopped" or "failed" (no best), or None to go on: a
        user's stop whose checkpoint failed is refused, and a full disk is waited for."""
        stop_id = self.controls.stop_requested
        stopped = stop_id is not None
        if self.state.stopped_early and not self.early_stop_announced:
            self.early_stop_announced = True
            self.event("early_stopping", "warning", f"early stopping at step {self.state.step}: best "
                       f"{self.cfg.eval.monitor} {self.state.best_metric}", patience_left=0,
                       best=self.state.best_metric)
        last_eval_step = (self.state.last_eval or {}).get("step")
        if not stopped and self.state.step > 0 and last_eval_step != self.state.step:
            self.evaluate()  # max_steps cut the run mid-epoch: still report where it got to
        checkpoints = self.checkpoints
        saved = checkpoints.wait()
        if checkpoints.best_unsaved:
            checkpoints.save_best()
        if not checkpoints.is_written():
            # else the run ends right after an epoch-end (or requested) checkpoint: rewriting the
            # same state would cost a full write and drop that checkpoint's phase_end mark
            saved = checkpoints.write(reason="stop" if stopped else "final")
        saved = saved and not checkpoints.best_unsaved
        if not saved and not self.controls.end_anyway():
            return None
        checkpoints.store.close()
        self.publish_progress()
        self.history.close()
        return announce_end(self, stop_id, saved)


def announce_end(trainer: Trainer, stop_id: Optional[int], saved: bool) -> str:
    """The run's last events once its last checkpoint is written: "stopped", "finished", or
    "failed" (no best)."""
    state = trainer.state
    if stop_id is not None:
        if saved:
            trainer.event("request", "info", f"stopped at step {state.step}", id=stop_id, action="stop", outcome="done")
        trainer.event("state", "info", "stopped", state="stopped")
        return "stopped"
    if state.best_step is None:
        return fail_without_best(trainer)
    trainer.event("finished", "info", f"finished at step {state.step}", best=state.best_eval, last=state.last_eval,
                  classes=list(trainer.classes), confusion=trainer.last_confusion)
    trainer.event("state", "info", "finished", state="finished")
    return "finished"


def fail_without_best(trainer: Trainer) -> str:
    """The plan ran to its end but eval.monitor never had a value: there is no best.pt and
    early stopping and plateau never acted. That is a failed run (exit code 1), not a
    plain "finished": its last checkpoint and last.pt are kept."""
    monitor = trainer.cfg.eval.monitor
    seen = sorted(k for k, v in (trainer.state.last_eval or {}).items() if k.startswith("val_") and v is not None)
    message = (f"no best checkpoint: eval.monitor {monitor!r} never had a value in any evaluation up to step "
               f"{trainer.state.step}, so no best.pt was written and early stopping and plateau never acted; "
               f"the last evaluation had {', '.join(seen) or 'no metrics'}. The run ends failed; "
               f"the final checkpoint and last.pt are in {trainer.run_dir}")
    trainer.event("alert", "error", message, what="no_best", monitor=monitor, step=trainer.state.step)
    trainer.event("state", "error", f"failed: {message}", state="failed", reason="no_best")
    return "failed"
