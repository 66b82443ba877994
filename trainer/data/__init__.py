"""The data layer: sources, features, augmentation, deterministic sampling, data reports.

    bundle = build_datasets(cfg)                 # DataError (message = full report) on bad data
    sampler = EpochSampler(len(bundle.train), cfg.seed, epoch, start, length)
    loader = make_loader(bundle.train, batch_size, sampler, cfg.data.num_workers)
    x, y_soft = mixup_batch(x, y, len(bundle.classes), cfg.augment.mixup, cfg.seed, epoch, step)
    print(check_data(cfg).to_text())
    with DECODING.watch(show):                   # show(done, total) after each file decoded
        report = check_data(cfg)

Module map: sources (find and label examples per source), decode (one example -> waveform or
image), synthetic (generated sounds), features (mel / MFCC / waveform / image), augment (gain,
flip, SpecAugment, Mixup), sampler (epoch order, loaders), datasets (build_datasets,
check_data), report (DataReport, DataError), seeds (every random draw has an address).
"""
from .augment import mixup_batch
from .datasets import DataBundle, EvalDataset, TrainDataset, build_datasets, check_data
from .report import DECODING, DataError, DataReport
from .sampler import EpochSampler, epoch_permutation, make_loader

__all__ = [
    "DECODING", "DataBundle", "DataError", "DataReport", "EpochSampler", "EvalDataset", "TrainDataset",
    "build_datasets", "check_data", "epoch_permutation", "make_loader", "mixup_batch",
]
