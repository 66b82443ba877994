"""Exponential moving average of the train loss: one point at a time, or a whole array at once.

The one smoother of metric series: the engine's ``train_loss_smooth``, the history's
``train_loss_smooth`` series and the TUI's "smoothing on" view all use it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SMOOTHING = 0.98


class LossSmoother:
    """Exponential moving average of the train loss, one update per train record.

    ``value = beta * value + (1 - beta) * loss``, starting at the first loss; NaN/inf losses are
    skipped. The engine can use the same class for the ``train_loss_smooth`` of progress frames.
    """

    def __init__(self, beta: float = DEFAULT_SMOOTHING):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.value: Optional[float] = None

    def update(self, loss: float) -> Optional[float]:
        """Fold ``loss`` in and return the smoothed value (None until a finite loss was seen)."""
        if math.isfinite(loss):
            self.value = loss if self.value is None else self.beta * self.value + (1.0 - self.beta) * loss
        return self.value


def ema(values: np.ndarray, beta: float, start: float, block: int = 256) -> np.ndarray:
    """Vectorised EMA (y[i] = beta*y[i-1] + (1-beta)*x[i], y[-1] = start) of finite ``values``.

    Works block by block: inside a block the sum is a matrix product with a triangular matrix of
    powers of beta; a short Python loop carries the state from block to block. Matches
    :class:`LossSmoother` to rounding error.
    """
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block)
    padded[:n] = x
    j = np.arange(block)
    lag = j[:, None] - j[None, :]
    weights = np.where(lag >= 0, (1.0 - beta) * beta ** np.maximum(lag, 0), 0.0)
    local = padded.reshape(n_blocks, block) @ weights.T  # local[k, j]: block k's own inputs
    decay = beta ** (j + 1.0)                             # weight of the state entering the block
    carry = np.empty(n_blocks)
    state = start
    last_local = local[:, -1].tolist()
    for k in range(n_blocks):
        carry[k] = state
        state = decay[-1] * state + last_local[k]
    return (local + carry[:, None] * decay[None, :]).ravel()[:n]
