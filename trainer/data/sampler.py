"""Epoch order and DataLoaders that make a resumed run see exactly the batches it would have seen."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import seeds
from .balance import balanced_order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the `n` training examples in `epoch`: a function of (seed, epoch) only."""
    return seeds.numpy_rng(seeds.ORDER, seed, epoch).permutation(n)


def epoch_order(n: int, seed: int, epoch: int, labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """The epoch's order: the plain permutation, or with `labels` (data.balanced_sampler) n
    class-balanced draws. Either is a function of (seed, epoch) only."""
    if labels is None:
        return epoch_permutation(n, seed, epoch)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} examples")
    return balanced_order(labels, n, seed, epoch)


class EpochSampler(Sampler):
    """Yields (epoch, index) for positions start .. length-1 of the epoch's permutation.

    `length` (default n) is where the epoch ends: the engine passes steps_per_epoch * batch_size *
    accum_steps so the incomplete last step is dropped. `start` is how many of those were already
    consumed before a resume (k * batch_size after k micro-batches), so the resumed epoch goes on
    with exactly the items that were next. `labels` (the training labels, data.balanced_sampler)
    makes the order class-balanced (epoch_order).

    In a data-parallel run (`share`: (rank, world size, global micro-batch)), positions are still
    those of the whole epoch, and each run of `batch` positions is one global micro-batch, of
    which rank r takes its r-th equal part: the ranks' parts of one step together are exactly the
    batch a single process would train on.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, length: Optional[int] = None,
                 labels: Optional[Sequence[int]] = None, share: Optional[tuple[int, int, int]] = None):
        length = n if length is None else length
        if not 0 <= length <= n:
            raise ValueError(f"epoch length must be in 0..{n} (the dataset size), got {length}")
        if not 0 <= start <= length:
            raise ValueError(f"start must be in 0..{length} (the epoch length), got {start}")
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} examples")
        self.n, self.seed, self.epoch, self.start, self.length = n, seed, epoch, start, length
        self.labels = labels
        self.share = share
        if share is not None:
            rank, world, batch = share
            if batch % world or not 0 <= rank < world or start % batch:
                raise ValueError(f"rank {rank} of {world} cannot take an equal part of batches of {batch} "
                                 f"from position {start}")

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.seed, self.epoch, self.labels)[self.start:self.length]
        if self.share is not None:
            rank, world, batch = self.share
            part = batch // world
            full = len(order) - len(order) % batch  # an incomplete last batch is split nowhere
            order = order[:full].reshape(-1, world, part)[:, rank].reshape(-1)
        for index in order:
            yield (self.epoch, int(index))

    def __len__(self) -> int:
        if self.share is None:
            return self.length - self.start
        rank, world, batch = self.share
        return (self.length - self.start) // batch * (batch // world)


def make_loader(dataset: Dataset, batch_size: int, sampler: Optional[Sampler] = None,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that adds no randomness of its own and keeps the batches in sampler order.

    Items are deterministic per index (see TrainDataset), so the batches are bit-identical for any
    `num_workers`. The loader gets a private generator because DataLoader otherwise draws its
    worker base seed from torch's global RNG on every iteration, which would shift the training
    loop's random stream (dropout) depending on when loaders are created, and break exact resume.
    `pin_memory`: batches in page-locked memory, copied to a GPU while it computes (a run on
    CUDA, trainer/device.py).
    """
    if sampler is None and getattr(dataset, "needs_epoch_sampler", False):
        raise TypeError("training datasets are addressed by (epoch, index): pass an EpochSampler")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, drop_last=False,
                      generator=torch.Generator().manual_seed(0),
                      persistent_workers=False, pin_memory=pin_memory)
