"""Evaluation and what follows from it: which weights (raw or EMA) the run follows, the best
evaluation, early stopping and the plateau LR cut.

With data.windows, the validation split is one item per (recording, window): the metrics are
those of the recordings (their windows' probabilities averaged), the per-window ones beside them
as val_window_* (trainer.data.windows.windowed_metrics).

Its state (best metric and step, patience used, plateau scale) lives in the trainer's
`LoopState`, so it is checkpointed with everything else; "better" is `cfg.eval.monitor_rule`
(trainer/monitor.py), the one definition the rest of the project uses too.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from torch.utils.data import Subset

from trainer import device
from trainer.data import make_loader
from trainer.distributed import World
from trainer.data.windows import evaluation_view, is_windowed, windowed_metrics
from trainer.metrics import TRAIN_MONITOR, classification_metrics

KEEP_ALIVE = 10.0
"""Seconds between the progress frames of a validation pass (see `Evaluation._keep_alive`)."""


class Evaluation:
    """Evaluates the model (and its EMA) on the validation set and applies the consequences to
    `state`: best evaluation (then `on_best()`, which writes best.pt), early stopping, plateau."""

    def __init__(self, cfg, data, plan, state, model: torch.nn.Module, ema, channels_last: bool,
                 smoother, event: Callable[..., None], train_mode: Callable[[], None],
                 on_best: Callable[[], None], publish_progress: Callable[[], None] = lambda: None,
                 world: Optional[World] = None):
        self.cfg, self.data, self.plan, self.state = cfg, data, plan, state
        # data.windows: one item per (recording, window), built once (it reads every length)
        self.val = evaluation_view(data.val, cfg, getattr(data, "data_config", None))
        self.model, self.ema, self.channels_last = model, ema, channels_last
        self.smoother = smoother  # the train-loss monitor reads its smoothed value
        self.event, self.train_mode, self.on_best = event, train_mode, on_best
        self.publish_progress = publish_progress
        self.world = world or World()  # a data-parallel run: each rank evaluates a share (_predict)
        self._alive_at = time.monotonic()

    def evaluate(self) -> tuple[dict, dict]:
        """(metrics, history record) of an evaluation at the current step.

        With EMA on, both the EMA and (eval.ema.evaluate_raw) the raw weights are evaluated and
        the better eval.monitor value is followed (a tie or a missing value goes to the EMA):
        its metrics are the record's val_* keys, `eval_weights` names it, val_ema_* and
        val_raw_* keep both sets' scalars (val_ema_accuracy, val_raw_loss, ...)."""
        if self.ema is None:
            metrics, extra = self._evaluate_model(self.model), {}
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
        state = self.state
        record = {"kind": "eval", "step": state.step, "epoch": state.epoch,
                  "phase": self.plan.phase_at(state.step - 1).index, "time": time.time(), **metrics, **extra}
        return metrics, record

    def _keep_alive(self) -> None:
        """Progress (the same step) every KEEP_ALIVE seconds of a validation pass: to the daemon's
        stall watchdog (trainer/watchdog.py) a long pass is work, not a stall."""
        if time.monotonic() - self._alive_at >= KEEP_ALIVE:
            self._alive_at = time.monotonic()
            self.publish_progress()

    def _pick_weights(self, sets: dict) -> str:
        """"raw" when its monitor value is strictly better than the EMA's, else "ema"."""
        ema, raw = (sets.get(name, {}).get(self.cfg.eval.monitor) for name in ("ema", "raw"))
        return "raw" if self.cfg.eval.monitor_rule.exact().better(raw, ema) else "ema"

    @torch.no_grad()
    def _evaluate_model(self, model: torch.nn.Module) -> dict:
        cfg = self.cfg
        probs, y_true, loss_sum = self._predict(model)
        self.train_mode()
        if is_windowed(self.val):  # per recording as the headline, per window beside it
            metrics = windowed_metrics(probs, loss_sum / max(len(y_true), 1), self.val, list(self.data.classes))
        else:
            metrics = classification_metrics(y_true, probs, list(self.data.classes),
                                              loss=loss_sum / max(len(y_true), 1))
        if cfg.eval.monitor == TRAIN_MONITOR:
            metrics[TRAIN_MONITOR] = self.smoother.value
        return metrics

    def _predict(self, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, float]:
        """(probabilities, labels, summed loss) of the whole validation split, in its order. In a
        data-parallel run each rank predicts every world-size-th example and all gather the rest,
        so every rank computes the same metrics as a single process."""
        model.eval()
        cfg, world = self.cfg, self.world
        val = Subset(self.val, world.share_of(len(self.val))) if world.enabled else self.val
        where = device.device_of(model)  # the run's device (trainer/device.py)
        loader = make_loader(val, cfg.eval.batch_size or 2 * cfg.optim.batch_size,
                             sampler=None, num_workers=cfg.data.num_workers, pin_memory=where.type == "cuda")
        probs, labels, loss_sum = [], [], 0.0
        with torch.random.fork_rng(devices=[]):  # starting a loader draws from the global RNG
            batches = iter(loader)
        for x, y in batches:
            x = device.move(x, where)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, device.move(y, where), reduction="sum").item()
            probs.append(logits.softmax(dim=1).cpu().numpy())
            labels.append(y.numpy())
            self._keep_alive()
        classes = len(self.data.classes)
        probs_np = np.concatenate(probs) if probs else np.zeros((0, classes), np.float32)
        labels_np = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if not world.enabled:
            return probs_np, labels_np, loss_sum
        parts = world.gather((probs_np, labels_np, loss_sum))
        all_probs = np.zeros((len(self.val), classes), np.float32)
        all_labels = np.zeros(len(self.val), np.int64)
        for rank, (p, y, _) in enumerate(parts):
            all_probs[rank::world.size], all_labels[rank::world.size] = p, y
        return all_probs, all_labels, sum(part[2] for part in parts)

    def judge(self, metrics: dict, weights: Optional[str] = None) -> None:
        """Apply an evaluation: last/best evaluation, best.pt, plateau, early stopping; `weights`
        is the set it followed ("ema"/"raw"), None without EMA."""
        state, ev = self.state, self.cfg.eval
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        state.last_eval = dict(scalars, step=state.step, epoch=state.epoch)
        if weights is not None:
            state.last_eval["eval_weights"] = weights
        value = metrics.get(ev.monitor)
        improved = ev.monitor_rule.better(value, state.best_metric)
        counts = self._phase_can_improve()
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
            state.best_eval = dict(state.last_eval)
            self.on_best()
        else:
            state.evals_since_best += counts
        self._update_plateau(value if counts else None)
        self._announce(scalars, weights, improved)
        if ev.early_stopping.patience is not None and not improved and counts:
            self._count_patience()

    def _announce(self, scalars: dict, weights: Optional[str], improved: bool) -> None:
        state = self.state
        summary = ", ".join(f"{k.removeprefix('val_')} {scalars[k]:.4f}" for k in
                            ("val_loss", "val_accuracy", "val_f1_macro", "val_auc_roc") if scalars.get(k) is not None)
        which = f" ({weights} weights)" if weights is not None else ""
        extra: dict[str, Any] = {"eval_weights": weights} if weights is not None else {}
        self.event("eval", "info", f"epoch {state.epoch + 1} eval{which}: {summary}" + (" (best)" if improved else ""),
                   step=state.step, epoch=state.epoch, metrics=scalars, improved=improved, **extra)

    def _count_patience(self) -> None:
        state, ev = self.state, self.cfg.eval
        left = ev.early_stopping.patience - state.evals_since_best
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
