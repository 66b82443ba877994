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
import importlib

# Where each re-exported name lives. Loaded on first use (PEP 562) so that the torch-free parts
# of the data layer (trainer.data.store: the feature store's format and reader) import without torch.
_EXPORTS = {
    "mixup_batch": "augment", "DataBundle": "datasets", "EvalDataset": "datasets", "TrainDataset": "datasets",
    "build_datasets": "datasets", "check_data": "datasets", "DECODING": "report", "DataError": "report",
    "DataReport": "report", "EpochSampler": "sampler", "epoch_permutation": "sampler", "make_loader": "sampler",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
