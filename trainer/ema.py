"""The exponential moving average of the weights (timm's ModelEmaV3): built from cfg.eval.ema,
and the start-of-run check that it is not too slow for the run's length."""
from __future__ import annotations

from typing import Optional


def make_ema(cfg, model):
    """The EMA of `model`, or None when cfg.eval.ema is off."""
    ema = cfg.eval.ema
    if not ema.enabled:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=ema.decay, use_warmup=ema.warmup, warmup_power=ema.warmup_power)


def slow_ema_alert(cfg, ema, plan) -> Optional[tuple[str, dict]]:
    """(message, data) of an alert when the EMA is slow for this run, else None: at the last step
    more than 10% of its weight would still come from the run's first quarter (the random start
    included). For a constant decay that is a time constant 1/(1 - decay) over about a third of
    the run; with warmup it happens only for very short runs or warmup_power 1 (a plain mean)."""
    if ema is None:
        return None
    total = plan.total_steps
    first_quarter = total // 4
    share = 1.0
    for k in range(first_quarter, total):
        share *= ema.get_decay(k + 1)  # the update after optimizer step k (timm counts from 1)
        if share <= 0.1:  # factors are <= 1: it only shrinks (and long runs stop early here)
            return None
    spec = cfg.eval.ema
    tau = 1.0 / (1.0 - spec.decay)
    per_epoch = plan.phases[0].steps_per_epoch
    message = (f"EMA is slow for this run: decay {spec.decay} averages over ~{tau:,.0f} steps "
               f"({tau / max(per_epoch, 1):.1f} epochs of {per_epoch} steps) but the run has {total} steps; "
               f"at its end {share:.0%} of the EMA would still be the weights of its first {first_quarter} steps"
               f"{'' if spec.warmup else ' (eval.ema.warmup is off)'}. Evaluation "
               f"{'also evaluates the raw weights and follows the better' if spec.evaluate_raw else 'follows the EMA only (eval.ema.evaluate_raw: false)'}; "
               "consider eval.ema.warmup: true or a smaller eval.ema.decay")
    data = dict(what="ema_slow", decay=spec.decay, time_constant_steps=tau, total_steps=total,
                steps_per_epoch=per_epoch, first_quarter_share=share, warmup=spec.warmup)
    return message, data
