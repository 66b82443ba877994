"""Epoch order, loaders, augmentation and Mixup: deterministic by address, blind to workers."""
import numpy as np
import pytest
import torch

from trainer.config import MixupConfig, RunConfig, SpecAugmentConfig
from trainer.data import EpochSampler, build_datasets, make_loader, mixup_batch
from trainer.data.augment import spec_augment


def cfg_with(**sections):
    raw = {"seed": 3, "data": {"synthetic": {"classes": 4, "train_per_class": 6, "val_per_class": 2}}}
    raw.update(sections)
    return RunConfig.model_validate(raw)


@pytest.fixture(scope="module")
def augmented():
    cfg = cfg_with(augment={"spec_augment": {"freq_mask": 8, "time_mask": 10, "num_masks": 2}})
    return cfg, build_datasets(cfg)


# ----------------------------------------------------------------------------- sampler
def test_epoch_order_depends_only_on_seed_and_epoch():
    order = list(EpochSampler(50, seed=1, epoch=2))
    assert order == list(EpochSampler(50, seed=1, epoch=2))
    assert sorted(i for _, i in order) == list(range(50)) and {e for e, _ in order} == {2}
    assert order != list(EpochSampler(50, seed=1, epoch=3))
    assert order != list(EpochSampler(50, seed=2, epoch=2))


def test_start_and_length_resume_mid_epoch():
    full = list(EpochSampler(50, seed=1, epoch=0, length=48))
    assert len(full) == 48 and len(EpochSampler(50, seed=1, epoch=0, length=48)) == 48
    resumed = EpochSampler(50, seed=1, epoch=0, start=16, length=48)
    assert list(resumed) == full[16:] and len(resumed) == 32
    assert full == list(EpochSampler(50, seed=1, epoch=0))[:48]
    with pytest.raises(ValueError):
        EpochSampler(50, seed=1, epoch=0, length=51)
    with pytest.raises(ValueError):
        EpochSampler(50, seed=1, epoch=0, start=49, length=48)


def test_training_items_need_an_epoch(augmented):
    _, bundle = augmented
    with pytest.raises(TypeError, match=r"\(epoch, index\)"):
        bundle.train[3]
    with pytest.raises(TypeError, match="EpochSampler"):
        make_loader(bundle.train, 4)


# ----------------------------------------------------------------------------- loaders
def _batches(dataset, sampler, workers):
    return [(x.clone(), y.clone()) for x, y in make_loader(dataset, 5, sampler, num_workers=workers)]


@pytest.mark.parametrize("cache", [True, False])
def test_batches_identical_for_any_worker_count(cache):
    cfg = cfg_with(augment={"spec_augment": {"freq_mask": 8, "time_mask": 10}, "gain_db": 6.0},
                   features={"normalize": False})
    cfg.data.cache = cache
    bundle = build_datasets(cfg)
    sampler = EpochSampler(len(bundle.train), cfg.seed, epoch=1, start=5, length=20)
    serial = _batches(bundle.train, sampler, 0)
    parallel = _batches(bundle.train, sampler, 2)
    assert len(serial) == 3
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    val_serial, val_parallel = _batches(bundle.val, None, 0), _batches(bundle.val, None, 2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val_serial, val_parallel))


def test_loaders_leave_the_global_rng_alone(augmented):
    cfg, bundle = augmented
    torch.manual_seed(123)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    build_datasets(cfg)
    for _ in make_loader(bundle.train, 4, EpochSampler(len(bundle.train), cfg.seed, 0)):
        pass
    for _ in make_loader(bundle.val, 4):
        pass
    mixup_batch(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), 4, MixupConfig(alpha=0.4), 0, 0, 0)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


# ----------------------------------------------------------------------------- augmentation
def test_augmentation_is_addressed_by_seed_epoch_index(augmented):
    cfg, bundle = augmented
    a, label = bundle.train[(0, 4)]
    b, _ = bundle.train[(0, 4)]
    assert torch.equal(a, b) and label == bundle.train.labels[4]
    assert not torch.equal(a, bundle.train[(1, 4)][0])  # new masks next epoch
    assert not torch.equal(a, bundle.val[0][0])
    clean = bundle.train.examples.extractor.finish(bundle.train.examples.raw(4).clone())
    masked = a != clean
    # masks fill with the example's mean, which is ~0 after standardisation
    fill = a[masked]
    assert masked.any() and torch.all(fill == fill[0]) and abs(float(fill[0])) < 1e-5
    # the cache itself is never modified by augmentation
    assert torch.equal(bundle.train.examples.extractor.finish(bundle.train.examples.raw(4).clone()), clean)
    other = build_datasets(cfg_with(seed=4, augment={"spec_augment": {"freq_mask": 8, "time_mask": 10}}))
    assert not torch.equal(a, other.train[(0, 4)][0])


def test_spec_augment_mask_widths():
    cfg = SpecAugmentConfig(freq_mask=5, time_mask=7, num_masks=1)
    x = torch.randn(1, 40, 50)
    x -= x.mean()
    for seed in range(20):
        out = spec_augment(x, cfg, torch.Generator().manual_seed(seed))
        rows = (out[0] != x[0]).all(dim=1).sum()
        cols = (out[0] != x[0]).all(dim=0).sum()
        assert rows < 5 and cols < 7
    assert torch.equal(spec_augment(x, SpecAugmentConfig(), torch.Generator()), x)


def test_gain_and_flip():
    cfg = cfg_with(features={"kind": "waveform", "normalize": False}, augment={"gain_db": 6.0},
                   model={"name": "cnn1d_attention"})
    bundle = build_datasets(cfg)
    clean = bundle.train.examples.raw(0)[0]
    ratios = []
    for epoch in range(6):
        x = bundle.train[(epoch, 0)][0][0]
        ratio = float(x.abs().max() / clean.abs().max())
        ratios.append(ratio)
        assert 10 ** (-6 / 20) - 1e-6 <= ratio <= 10 ** (6 / 20) + 1e-6
    assert len(set(round(r, 6) for r in ratios)) == 6


def test_hflip_on_images(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            pixels = np.zeros((8, 8, 3), np.uint8)
            pixels[:, 0] = 255  # bright left column
            Image.fromarray(pixels).save(tmp_path / split / name / "x.png")
    cfg = RunConfig.model_validate({"data": {"source": "image_folder", "root": str(tmp_path), "image_size": 8},
                                    "features": {"kind": "image", "normalize": False},
                                    "augment": {"hflip": True}})
    bundle = build_datasets(cfg)
    left = [float(bundle.train[(e, 0)][0][:, :, 0].mean()) for e in range(16)]
    assert {round(v) for v in left} == {0, 1}  # flipped in some epochs, not in others


# ----------------------------------------------------------------------------- mixup
def test_mixup_is_deterministic_and_rows_sum_to_one():
    x = torch.randn(8, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mix = MixupConfig(alpha=0.4, prob=1.0)
    xa, ya = mixup_batch(x, y, 4, mix, seed=0, epoch=1, step=7)
    xb, yb = mixup_batch(x, y, 4, mix, seed=0, epoch=1, step=7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert ya.dtype == torch.float32 and ya.shape == (8, 4)
    assert torch.allclose(ya.sum(dim=1), torch.ones(8))
    assert not torch.equal(xa, x)
    assert not torch.equal(mixup_batch(x, y, 4, mix, seed=0, epoch=1, step=8)[0], xa)
    # x and y are mixed with the same lambda and partner: mixing one-hot inputs gives y_soft
    y8 = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    x8 = torch.nn.functional.one_hot(y8, 8).float()
    xm, ym = mixup_batch(x8, y8, 8, mix, seed=0, epoch=1, step=7)
    assert torch.equal(xm, ym) and not torch.equal(ym, x8)


def test_mixup_off_returns_one_hot():
    x, y = torch.randn(4, 3), torch.tensor([2, 0, 1, 2])
    for mix in (MixupConfig(alpha=0.0), MixupConfig(alpha=1.0, prob=0.0)):
        out, soft = mixup_batch(x, y, 3, mix, seed=0, epoch=0, step=0)
        assert out is x and torch.equal(soft, torch.nn.functional.one_hot(y, 3).float())
    # with prob 0.5 some steps mix and some do not
    mixed = [mixup_batch(x, y, 3, MixupConfig(alpha=1.0, prob=0.5), 0, 0, s)[0] is not x for s in range(40)]
    assert 5 < sum(mixed) < 35
