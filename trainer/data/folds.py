"""Cross-validation folds of the training pool (`data.folds`): which examples validate fold I.

The pool is the training split as scanned and cut by data.max_per_class (never the test split).
It is cut into k stratified folds by scikit-learn's StratifiedKFold, shuffled from the run's seed
alone: the k runs of one `longhaul cv` (same seed, indices 0..k-1) agree on the folds, so each
example validates exactly one of them. Torch-free (numpy, scikit-learn).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import seeds


def fold_of(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every pool example, from its labels, k and the seed; the same for
    every fold's run. Every class needs at least k examples (`too_small_classes` says which lack)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    state = int(seeds.seed_sequence(seeds.FOLDS, seed).generate_state(1, dtype=np.uint32)[0])
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=state)
    for index, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[held] = index
    return folds


def too_small_classes(labels: Sequence[int], k: int) -> dict[int, int]:
    """{class: count} of the classes present with fewer than k examples (each fold needs one)."""
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if c < k}


def split_indices(labels: Sequence[int], k: int, index: int, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) positions in the pool for fold `index`, each in pool order."""
    folds = fold_of(labels, k, seed)
    return [int(i) for i in np.flatnonzero(folds != index)], [int(i) for i in np.flatnonzero(folds == index)]
