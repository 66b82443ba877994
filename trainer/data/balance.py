"""Class balance: `data.max_per_class` (a deterministic subset) and the class-balanced epoch order.

    kept = cap_per_class(names, labels, k, seed)       # indices kept, in their original order
    order = balanced_order(labels, n, seed, epoch)      # n example indices for one epoch

The cap ranks every example of a class by a hash of (seed, its name) and keeps the k lowest. So
the subset depends only on the seed and the names of that class's examples: not on the order of
the scan, not on the other classes; a file added to a class displaces at most one kept example.

The balanced order makes each class equally likely: the epoch's class sequence is made of blocks
that hold every class once in a random order (so every class gets n/classes draws, give or take
one), and each class's draws walk through a fresh permutation of its examples, cycling when a
small class runs out (without replacement as far as possible). It is a pure function of (seed,
epoch), like the plain permutation, so a resumed epoch continues with exactly the same order.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from . import seeds

_MASK64 = (1 << 64) - 1


def cap_per_class(items: Sequence[str], labels: Sequence[int], k: int, seed: int) -> list[int]:
    """Indices of at most `k` items per label, in their original order.

    `items` are the examples' stable names (file paths): they, not positions, pick the subset.
    """
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    salt = (int(seed) & _MASK64).to_bytes(8, "little")
    by_class: dict[int, list[tuple[bytes, int]]] = {}
    for index, (name, label) in enumerate(zip(items, labels)):
        rank = hashlib.blake2b(str(name).encode("utf-8", "surrogateescape"), digest_size=8,
                               salt=salt, person=b"max_per_class").digest()
        by_class.setdefault(int(label), []).append((rank, index))
    kept: list[int] = []
    for ranked in by_class.values():
        kept += [index for _, index in (sorted(ranked)[:k] if len(ranked) > k else ranked)]
    return sorted(kept)


def balanced_order(labels: Sequence[int], n: int, seed: int, epoch: int) -> np.ndarray:
    """`n` indices into `labels` for one epoch, each class (among those present) equally likely."""
    labels = np.asarray(labels, dtype=np.int64)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0 or labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = seeds.numpy_rng(seeds.BALANCE, seed, epoch)
    by_label = np.argsort(labels, kind="stable")  # members of each class, grouped, in index order
    present, first, sizes = np.unique(labels[by_label], return_index=True, return_counts=True)
    n_classes = len(present)
    blocks = -(-n // n_classes)
    sequence = np.argsort(rng.random((blocks, n_classes)), axis=1).ravel()[:n]  # class slot per draw
    slots = np.argsort(sequence, kind="stable")  # draw positions grouped by class, in draw order
    draws = np.bincount(sequence, minlength=n_classes)
    order = np.empty(n, dtype=np.int64)
    at = 0
    for c in range(n_classes):
        members = by_label[first[c]:first[c] + sizes[c]]
        cycles = -(-int(draws[c]) // int(sizes[c]))
        picks = np.concatenate([members[rng.permutation(sizes[c])] for _ in range(cycles)]) if cycles else members[:0]
        order[slots[at:at + draws[c]]] = picks[:draws[c]]
        at += draws[c]
    return order


def expected_draws(counts: Sequence[int], n: int) -> list[float]:
    """Draws per class in one balanced epoch of `n` (what check-data shows): n / classes present."""
    present = sum(1 for c in counts if c > 0)
    return [n / present if c > 0 else 0.0 for c in counts] if present else [0.0 for _ in counts]
