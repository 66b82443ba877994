"""Image augmentations (trainer/data/augment.py): vertical flip, rotation, brightness and contrast
drawn after the horizontal flip, an unchanged result for configs without them, and their warnings
on audio features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.run_configs import RESNET_TINY, run_config
from trainer.data import seeds
from trainer.data.augment import (augment_example, augment_image, no_effect_warnings, rotate_image, scale_brightness,
                                  scale_contrast)
from trainer.data.features import FeatureExtractor

SIZE = 16


def image_config(channels: int = 3, **augment):
    return run_config(RESNET_TINY, features={"kind": "image"},
                      **{"data.source": "image_folder", "data.root": "/nowhere", "data.image_size": SIZE,
                         "data.image_channels": channels, "augment": {**augment}})


def raw_image(seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A uint8 (C, H, W) image as the store or the cache holds it: a smooth ramp plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(30, 220, SIZE)[None, None, :] + np.linspace(0, 20, SIZE)[None, :, None]
    pixels = ramp + rng.normal(0, 10, (channels, SIZE, SIZE))
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))


def gen(index: int) -> torch.Generator:
    return seeds.torch_generator(seeds.AUGMENT, 7, 0, index)


def uniforms(index: int, count: int) -> list[float]:
    """The first `count` draws of example `index`'s generator, as augment.py draws them."""
    g = gen(index)
    return [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(count)]


def next_draw(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


# ----------------------------------------------------------------------------- off: as before
def reference_before_issue12(raw, extractor, hflip, g):
    """augment_example of an image as it was before vflip/rotation/brightness/contrast existed."""
    x = raw.to(torch.float32, copy=True)
    if hflip and next_draw(g) < 0.5:
        x = torch.flip(x, dims=(-1,))
    return extractor.finish(x)


@pytest.mark.parametrize("hflip", [False, True])
def test_configs_without_the_new_settings_give_bit_identical_examples(hflip):
    cfg = image_config(hflip=hflip)
    extractor = FeatureExtractor(cfg)
    for index in range(12):
        ours, theirs = gen(index), gen(index)
        got = augment_example(raw_image(index), extractor, cfg.augment, ours)
        want = reference_before_issue12(raw_image(index), extractor, hflip, theirs)
        assert got.dtype == want.dtype and torch.equal(got, want)
        assert next_draw(ours) == next_draw(theirs), "the same number of draws"


def test_the_raw_image_is_never_modified():
    cfg = image_config(hflip=True, vflip=True, rotate_deg=10, brightness=0.2, contrast=0.2)
    raw = raw_image()
    before = raw.clone()
    augment_example(raw, FeatureExtractor(cfg), cfg.augment, gen(0))
    assert torch.equal(raw, before)


# ----------------------------------------------------------------------------- each setting
def test_vflip_is_an_exact_flip_half_of_the_time():
    cfg = image_config(vflip=True)
    x = raw_image().float()
    flipped = 0
    for index in range(40):
        out = augment_image(x, cfg.augment, gen(index))
        if uniforms(index, 1)[0] < 0.5:
            assert torch.equal(out, torch.flip(x, dims=(-2,)))
            flipped += 1
        else:
            assert torch.equal(out, x)
    assert 10 < flipped < 30


def test_rotation_turns_by_the_drawn_angle():
    cfg = image_config(rotate_deg=20)
    x = raw_image().float()
    for index in range(5):
        angle = (2 * uniforms(index, 1)[0] - 1) * 20
        assert -20 <= angle <= 20
        assert torch.equal(augment_image(x, cfg.augment, gen(index)), rotate_image(x, angle, padding="mean"))


def test_rotation_is_exact_on_quarter_turns_and_fills_corners_with_the_mean():
    x = raw_image().double()
    assert torch.allclose(rotate_image(x, 90), torch.rot90(x, 1, dims=(1, 2)), atol=1e-9)
    turned = rotate_image(x, 45)
    mean = x.mean(dim=(1, 2))
    assert torch.allclose(turned[:, 0, 0], mean) and torch.allclose(turned[:, -1, -1], mean)
    flat = torch.full((1, SIZE, SIZE), 77.0)
    assert torch.allclose(rotate_image(flat, 30), flat), "a flat image stays flat: no black corners"
    small = rotate_image(x, 3)
    assert (small[:, 4:-4, 4:-4] - x[:, 4:-4, 4:-4]).abs().mean() < 10, "a small turn moves little"


def test_brightness_scales_by_the_drawn_factor():
    cfg = image_config(brightness=0.3)
    x = raw_image().float()
    for index in range(5):
        factor = 1 + (2 * uniforms(index, 1)[0] - 1) * 0.3
        assert 0.7 <= factor <= 1.3
        assert torch.equal(augment_image(x, cfg.augment, gen(index)), torch.clamp(x * factor, 0, 255))
    assert scale_brightness(torch.tensor([[[100.0, 250.0]]]), 1.1).tolist() == [[[110.0, 255.0]]]


@pytest.mark.parametrize("channels", [1, 3])
def test_contrast_scales_around_the_mean_grey_level(channels):
    cfg = image_config(channels, contrast=0.4)
    x = raw_image(channels=channels).float() * 0.5 + 60  # room on both sides: nothing saturates
    grey = (x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114) if channels == 3 else x[0]
    mean = float(grey.double().mean())
    for index in range(5):
        factor = 1 + (2 * uniforms(index, 1)[0] - 1) * 0.4
        out = augment_image(x, cfg.augment, gen(index))
        assert torch.allclose(out, mean + (x - mean) * factor, atol=1e-3)
        assert torch.allclose(out.std(), x.std() * abs(factor), rtol=1e-3)
    assert scale_contrast(torch.tensor([[[0.0, 100.0, 200.0]]]), 3.0).tolist() == [[[0.0, 100.0, 255.0]]]


def test_all_settings_draw_in_a_fixed_order():
    cfg = image_config(hflip=True, vflip=True, rotate_deg=10, brightness=0.2, contrast=0.3)
    x = raw_image().float()
    for index in range(6):
        u = uniforms(index, 5)
        want = torch.flip(x, dims=(-1,)) if u[0] < 0.5 else x
        want = torch.flip(want, dims=(-2,)) if u[1] < 0.5 else want
        want = rotate_image(want, (2 * u[2] - 1) * 10, padding="mean")
        want = scale_brightness(want, 1 + (2 * u[3] - 1) * 0.2)
        want = scale_contrast(want, 1 + (2 * u[4] - 1) * 0.3)
        assert torch.equal(augment_image(x, cfg.augment, gen(index)), want)


def test_augmented_examples_stay_images_of_the_run():
    cfg = image_config(vflip=True, rotate_deg=30, brightness=0.5, contrast=0.5)
    extractor = FeatureExtractor(cfg)
    out = augment_example(raw_image(), extractor, cfg.augment, gen(3))
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- warnings
def test_image_settings_on_audio_say_they_have_no_effect():
    audio = run_config(RESNET_TINY, **{"augment.vflip": True, "augment.rotate_deg": 5, "augment.brightness": 0.1,
                                       "augment.contrast": 0.1})
    warnings = no_effect_warnings(audio)
    for key in ("vflip", "rotate_deg", "brightness", "contrast"):
        assert any(w.startswith(f"augment.{key} has no effect") for w in warnings), key
    image = image_config(vflip=True, rotate_deg=5, brightness=0.1, contrast=0.1)
    assert not [w for w in no_effect_warnings(image) if "vflip" in w or "rotate" in w]


def test_variants_of_images_say_they_have_no_effect():
    image = run_config(RESNET_TINY, features={"kind": "image"},
                       **{"data.source": "image_folder", "data.root": "/nowhere", "data.store": "/s",
                          "data.variants.count": 2})
    assert any(w.startswith("data.variants.count has no effect on images") for w in no_effect_warnings(image))
