"""Seeds derived from tuples of integers, so every random draw in the data layer has an address.

Exact resume depends on this: the order of epoch `e` is drawn from (seed, e), sample `i` of
epoch `e` is augmented from (seed, e, i), Mixup of step `s` from (seed, e, s). Nothing here reads
or advances a global random state, so the training loop's own RNG (dropout, init) is never
disturbed and the result does not depend on which process or worker does the drawing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_MASK64 = (1 << 64) - 1

# One tag per purpose, so that e.g. the permutation of epoch 3 and the augmentation of sample 3
# of epoch 0 never share a stream even though their integer tuples could coincide.
ORDER = 1
AUGMENT = 2
MIXUP = 3
VAL_SPLIT = 4
SYNTHETIC = 5
VARIANT = 6   # which pre-augmented variant of an example an epoch reads (data.variants)
WINDOW = 7    # where the training window of a long recording starts (data.windows)
BALANCE = 8  # the class-balanced epoch order (balance.balanced_order)
VARIANT_MAKE = 9  # the draws of a pre-augmented variant, made when the store is prepared
FOLDS = 10  # the shuffle of the cross-validation folds (data.folds, trainer/data/folds.py)
STEP_RNG = 11  # a data-parallel rank's reseed of torch's RNG at each step (trainer/distributed.py)


def seed_sequence(tag: int, *parts: int) -> np.random.SeedSequence:
    """SeedSequence of (tag, *parts). Negative integers are taken modulo 2**64."""
    return np.random.SeedSequence([tag] + [int(p) & _MASK64 for p in parts])


def numpy_rng(tag: int, *parts: int) -> np.random.Generator:
    """A fresh numpy Generator addressed by (tag, *parts)."""
    return np.random.default_rng(seed_sequence(tag, *parts))


def torch_generator(tag: int, *parts: int) -> torch.Generator:
    """A fresh CPU torch.Generator addressed by (tag, *parts)."""
    import torch  # here, not above: balance.py and report.py draw with numpy alone and stay torch-free

    state = seed_sequence(tag, *parts).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
