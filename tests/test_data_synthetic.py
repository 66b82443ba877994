"""The synthetic dataset: deterministic per (seed, split, index), balanced, a real task."""
import numpy as np
import pytest
import torch

from trainer.config import RunConfig
from trainer.data import build_datasets, check_data
from trainer.data import synthetic
from trainer.data.features import FeatureExtractor

ARGS = dict(n_classes=8, sample_rate=16000, duration=1.0, snr_db=10.0)


def small_cfg(**syn):
    return RunConfig.model_validate({"data": {"synthetic": {"train_per_class": 4, "val_per_class": 2, **syn}}})


def test_examples_are_deterministic_and_independent_of_dataset_size():
    a = synthetic.generate("train", 13, seed=7, **ARGS)
    assert np.array_equal(a, synthetic.generate("train", 13, seed=7, **ARGS))
    assert a.dtype == np.float32 and a.shape == (16000,) and np.abs(a).max() <= 1.0
    assert not np.array_equal(a, synthetic.generate("train", 13, seed=8, **ARGS))
    assert not np.array_equal(a, synthetic.generate("val", 13, seed=7, **ARGS))
    small = build_datasets(small_cfg(seed=7))
    large = build_datasets(small_cfg(seed=7, train_per_class=6))
    x_small, y_small = small.val[5]
    x_large, y_large = large.val[5]
    assert y_small == y_large and torch.equal(x_small, x_large)
    assert torch.equal(small.train.examples.raw(13), large.train.examples.raw(13))


def test_splits_are_balanced_and_labelled_in_class_order():
    bundle = build_datasets(small_cfg(classes=5, test_per_class=1))
    assert bundle.classes == ["tone", "chirp", "noise_burst", "clicks", "am"]
    assert bundle.class_counts == {"train": [4] * 5, "val": [2] * 5, "test": [1] * 5}
    assert bundle.input_shape == (1, 64, 63) and bundle.in_chans == 1
    assert bundle.train.labels == [i % 5 for i in range(20)]
    assert bundle.test is not None and len(bundle.test) == 5
    assert check_data(small_cfg()).ok


def test_cache_off_gives_the_same_features():
    cached = build_datasets(small_cfg())
    cfg = small_cfg()
    cfg.data.cache = False
    lazy = build_datasets(cfg)
    assert lazy.train.examples.cache is None
    for i in (0, 7, 15):
        assert torch.allclose(cached.val[i % 16][0], lazy.val[i % 16][0], atol=1e-5)
        assert torch.allclose(cached.train[(0, i)][0], lazy.train[(0, i)][0], atol=1e-5)


def _summary_features(waves: np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    """Per-example global statistics a single threshold could use."""
    mel = np.stack([extractor.raw(w)[0].numpy() for w in waves])  # (N, n_mels, frames)
    energy = mel.max(axis=1)  # loudest band per frame
    active = energy > energy.mean(axis=1, keepdims=True)
    peak_band = mel.mean(axis=2).argmax(axis=1)
    return np.stack([active.sum(axis=1), peak_band, mel.std(axis=(1, 2)), np.abs(waves).max(axis=1)], axis=1)


def test_no_single_simple_feature_separates_the_classes():
    """Onset, duration, pitch, level and spread all overlap across classes (a real task)."""
    from sklearn.tree import DecisionTreeClassifier

    cfg = RunConfig()
    extractor = FeatureExtractor(cfg)
    n = 240
    waves = np.stack([synthetic.generate("train", i, seed=1, **ARGS) for i in range(n)])
    labels = np.arange(n) % 8
    feats = _summary_features(waves, extractor)
    for j in range(feats.shape[1]):
        tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(feats[:160, j:j + 1], labels[:160])
        accuracy = tree.score(feats[160:, j:j + 1], labels[160:])
        assert accuracy < 0.6, f"summary feature {j} alone gives {accuracy:.2f}"


@pytest.mark.parametrize("sample_rate", [8000, 22050])
def test_other_rates_and_durations(sample_rate):
    wave = synthetic.generate("test", 3, seed=0, n_classes=8, sample_rate=sample_rate, duration=0.5, snr_db=0.0)
    assert wave.shape == (int(0.5 * sample_rate),) and np.isfinite(wave).all()
