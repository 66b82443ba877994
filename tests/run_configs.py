"""Run configs of the tests: tiny real runs that train in seconds on synthetic data, and
`changed()` to vary one. A test states what it changes, so the base runs are defined once."""
from __future__ import annotations

import copy


def changed(raw: dict, **changes) -> dict:
    """A deep copy of `raw` with `changes`: a key names a top-level section (replaced whole) or,
    with dots, a key inside one ("checkpoint.interval_seconds"; missing sections are created)."""
    raw = copy.deepcopy(raw)
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return raw


def run_config(raw: dict, **changes):
    """`changed(raw, **changes)` validated into a RunConfig."""
    from trainer.config import RunConfig

    return RunConfig.model_validate(changed(raw, **changes))


# The engine's run: 4 classes as mel spectrograms into a ResNet-18 with SpecAugment and mixup,
# a frozen-head phase then a full one, EMA, a checkpoint every 0.3 s. 48 train clips / 16 per
# optimizer step = 3 steps per epoch, 12 steps in all.
RESNET_TINY = {
    "name": "tiny",
    "seed": 7,
    "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 4, "train_per_class": 12, "val_per_class": 4}},
    "features": {"kind": "mel", "n_fft": 256, "hop_length": 128, "n_mels": 32},
    "augment": {"spec_augment": {"freq_mask": 4, "time_mask": 4}, "mixup": {"alpha": 0.4, "prob": 0.5}},
    "model": {"name": "resnet18", "drop_rate": 0.3},
    "optim": {"batch_size": 8, "accum_steps": 2, "lr": 0.003, "grad_clip": 5.0},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "phases": [{"name": "head", "epochs": 2, "trainable": 0.0},
               {"name": "full", "epochs": 2, "trainable": 1.0, "lr_mult": 0.5}],
    "eval": {"ema": {"enabled": True, "decay": 0.9}},
    "checkpoint": {"interval_seconds": 0.3, "keep_last": 2, "min_free_mb": 1},
}

# Sections that put an MLP on MFCCs in place of RESNET_TINY's ResNet (several times faster):
# `changed(RESNET_TINY, **MFCC_MLP)`.
MFCC_MLP = {"model": {"name": "mfcc_mlp", "drop_rate": 0.3},
            "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 20}}

# The CLI's run: 3 classes into an MFCC MLP, one phase of 2 epochs. 48 train clips / 8 per step
# = 6 steps per epoch, 12 steps in all.
MFCC_TINY = {
    "name": "clitiny", "seed": 1, "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 3, "train_per_class": 16, "val_per_class": 4}},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13},
    "model": {"name": "mfcc_mlp"},
    "optim": {"batch_size": 8},
    "phases": [{"name": "only", "epochs": 2}],
}

# A run under a real daemon, cut and resumed: an MFCC MLP with mixup, EMA, two phases (set their
# length for the test: `changed(POWERCUT, phases=...)`), a checkpoint every 0.2 s, quick restarts.
POWERCUT = {
    "name": "powercut", "seed": 11, "threads": 1,
    "data": {"source": "synthetic", "duration": 0.5, "sample_rate": 8000,
             "synthetic": {"classes": 3, "train_per_class": 48, "val_per_class": 8}},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 16},
    "augment": {"gain_db": 3.0, "mixup": {"alpha": 0.3, "prob": 0.5}},
    "model": {"name": "mfcc_mlp", "drop_rate": 0.3},
    "optim": {"batch_size": 8, "accum_steps": 2},
    "phases": [{"name": "a", "epochs": 6}, {"name": "b", "epochs": 6, "lr_mult": 0.5}],
    "eval": {"ema": {"enabled": True, "decay": 0.9}},
    "checkpoint": {"interval_seconds": 0.2, "keep_last": 2, "min_free_mb": 1},
    "daemon": {"backoff_seconds": 0.2},
}

# The smallest run a real daemon trains end to end: 2 classes of quarter-second clips into a
# 16-unit MFCC MLP, 32 train clips / 8 per step = 4 steps per epoch; no timed checkpoints.
DAEMON_TINY = {
    "name": "tiny", "seed": 0, "threads": 1,
    "data": {"source": "synthetic", "sample_rate": 8000, "duration": 0.25,
             "synthetic": {"classes": 2, "train_per_class": 16, "val_per_class": 4}},
    "features": {"kind": "mfcc", "n_mfcc": 13, "n_mels": 20, "n_fft": 256, "hop_length": 128},
    "model": {"name": "mfcc_mlp", "options": {"hidden": [16]}},
    "optim": {"batch_size": 8},
    "phases": [{"name": "train", "epochs": 2}],
    "checkpoint": {"interval_seconds": 3600},
    "daemon": {"system_interval": 0.5, "backoff_seconds": 0.5},
}
