"""Training-time augmentation: gain, time shift, frequency warp, image flips, rotation, brightness
and contrast, SpecAugment (per example) and Mixup (per batch).

Every draw comes from a generator addressed by (seed, epoch, index) or (seed, epoch, step); none
touches torch's or numpy's global random state. That is why SpecAugment is implemented here
rather than with torchaudio.transforms.FrequencyMasking/TimeMasking: those draw from the global
torch RNG, which would have to be forked around every example and would race with any other
thread using it. The masks follow torchaudio's `mask_along_axis` rule: width uniform in
[0, mask_param), start uniform in [0, size - width).

The image functions (rotate_image, scale_brightness, scale_contrast) act on (C, H, W) pixel values
0..255 of any float dtype; the test-time transforms (trainer/posthoc/tta.py) are these same functions
rounded back to uint8.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import seeds
from .features import SPECTRAL, FeatureExtractor


def _uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def augment_example(raw: torch.Tensor, extractor: FeatureExtractor, augment, gen: torch.Generator) -> torch.Tensor:
    """Raw (cached) features of one training example -> augmented, normalised features.

    `augment` is the run's AugmentConfig. `raw` is never modified (it may be the cache).
    """
    x = raw.to(torch.float32, copy=True)
    if augment.gain_db > 0 and extractor.kind != "image":
        x = extractor.apply_gain(x, (2.0 * _uniform(gen) - 1.0) * augment.gain_db)
    if augment.time_shift > 0 and extractor.kind != "image":
        x = time_shift(x, augment.time_shift, extractor.silence_frame(x), gen)
    if augment.freq_warp > 0 and extractor.kind in SPECTRAL:
        x = freq_warp(x, 1.0 + (2.0 * _uniform(gen) - 1.0) * augment.freq_warp)
    if extractor.kind == "image":
        x = augment_image(x, augment, gen)
    x = extractor.finish(x)
    if extractor.kind in SPECTRAL:
        x = spec_augment(x, augment.spec_augment, gen)
    return x


def augment_image(x: torch.Tensor, augment, gen: torch.Generator) -> torch.Tensor:
    """Flips, rotation, brightness and contrast of a (C, H, W) float image of 0..255 values.

    The draws come in this fixed order, one per setting that is on and none for a setting that is
    off, so a config without the newer settings draws exactly what it drew before they existed."""
    if augment.hflip and _uniform(gen) < 0.5:
        x = torch.flip(x, dims=(-1,))
    if augment.vflip and _uniform(gen) < 0.5:
        x = torch.flip(x, dims=(-2,))
    if augment.rotate_deg > 0:
        x = rotate_image(x, (2.0 * _uniform(gen) - 1.0) * augment.rotate_deg, padding="mean")
    if augment.brightness > 0:
        x = scale_brightness(x, 1.0 + (2.0 * _uniform(gen) - 1.0) * augment.brightness)
    if augment.contrast > 0:
        x = scale_contrast(x, 1.0 + (2.0 * _uniform(gen) - 1.0) * augment.contrast)
    return x


def rotate_image(x: torch.Tensor, degrees: float, padding: str = "mean") -> torch.Tensor:
    """(C, H, W) float `x` rotated `degrees` counter-clockwise about its centre, bilinear.

    The corners that come in from outside take each channel's mean (`padding="mean"`, training: black
    corners would be a strong edge that no real image has, and would pull the image's level and
    contrast down before normalisation, as a zero-filled SpecAugment mask would) or repeat the
    nearest border pixel (`"border"`, the test-time transform)."""
    theta = np.deg2rad(degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    height, width = x.shape[-2:]
    # affine_grid maps each output pixel to where it is read in the input, in [-1, 1] coordinates
    # (x right, y down); scaled by the aspect ratio so that a non-square image turns rigidly.
    aspect = width / height
    matrix = torch.tensor([[cos, -sin / aspect, 0.0], [sin * aspect, cos, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(matrix[None], [1, *x.shape], align_corners=False)
    if padding == "border":
        return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    turned = F.grid_sample((x - mean)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return turned + mean


def scale_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Pixel values times `factor` (1.05: 5% brighter), saturating at 0 and 255."""
    return torch.clamp(x * factor, 0.0, 255.0)


def scale_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Each pixel's distance from the image's mean grey level (ITU-R 601 luma for RGB, as
    torchvision's adjust_contrast) times `factor`; the mean level stays; saturates at 0 and 255."""
    grey = x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114 if len(x) == 3 else x[0]
    mean = float(grey.numpy().mean(dtype=np.float64))
    return torch.clamp(mean + (x - mean) * factor, 0.0, 255.0)


def time_shift(x: torch.Tensor, fraction: float, silence: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x moved along its last (time) axis by a uniform whole shift in [-limit, limit], limit =
    fraction of the length; the cells moved in from outside take `silence` (broadcast over time)."""
    size = x.shape[-1]
    limit = int(fraction * size)
    shift = int(_uniform(gen) * (2 * limit + 1)) - limit
    if shift == 0:
        return x
    out = silence.expand_as(x).clone()
    if shift > 0:
        out[..., shift:] = x[..., :size - shift]
    else:
        out[..., :size + shift] = x[..., -shift:]
    return out


def freq_warp(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(C, F, T) log-mel stretched along F by `factor` (> 1: content moves up), linearly
    interpolated; rows that would come from beyond the top take the top bin."""
    size = x.shape[-2]
    source = torch.clamp(torch.arange(size, dtype=torch.float64) / factor, 0, size - 1)
    low = source.floor().long()
    high = torch.clamp(low + 1, max=size - 1)
    weight = (source - low).to(x.dtype).view(-1, 1)
    return x[..., low, :] * (1 - weight) + x[..., high, :] * weight


def spec_augment(x: torch.Tensor, spec_cfg, gen: torch.Generator) -> torch.Tensor:
    """`num_masks` frequency masks and `num_masks` time masks on (C, F, T) features.

    Masked cells get the example's mean (0 after standardisation), so masking does not shift the
    input's level.
    """
    if spec_cfg.freq_mask == 0 and spec_cfg.time_mask == 0:
        return x
    fill = float(x.numpy().mean(dtype="float64"))
    x = x.clone()
    for axis, param in ((-2, spec_cfg.freq_mask), (-1, spec_cfg.time_mask)):
        if param == 0:
            continue
        size = x.shape[axis]
        limit = mask_limit(param, size)
        for _ in range(spec_cfg.num_masks):
            width = min(int(_uniform(gen) * limit), size)
            start = int(_uniform(gen) * (size - width))
            x.narrow(axis, start, width).fill_(fill)
    return x


def mask_limit(param: float, size: int) -> float:
    """Upper bound of a mask's width on an axis of `size` cells: param < 1 is a fraction of the
    axis, param >= 1 a number of cells; at most half of the axis either way."""
    return min(_wanted_width(param, size), size / 2)


def _wanted_width(param: float, size: int) -> float:
    return param * size if param < 1 else param


def mask_warnings(cfg, shape: tuple[int, ...]) -> list[str]:
    """SpecAugment masks wider than half of the input (cut to half) for the data report."""
    spec = cfg.augment.spec_augment
    if cfg.features.kind not in SPECTRAL or len(shape) < 2:
        return []
    out = []
    for key, param, size, what in (("freq_mask", spec.freq_mask, shape[-2], "bins"),
                                   ("time_mask", spec.time_mask, shape[-1], "frames")):
        if param and _wanted_width(param, size) > size / 2:
            out.append(f"augment.spec_augment.{key} {param:g} is wider than half of the input's {size} {what}: "
                       f"cut to {size / 2:g} (a value below 1 is a fraction of the input, e.g. "
                       f"{key}: 0.2)")
    return out


def mixup_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup, seed: int, epoch: int,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself: (x', y_soft), y_soft float32 of shape (B, num_classes).

    `mixup` is the run's MixupConfig. The decision (prob), lambda ~ Beta(alpha, alpha) and the
    permutation are drawn from a generator addressed by (seed, epoch, step). With alpha == 0 or
    when the draw says no, `x` is returned as it is and y_soft is plain one-hot.
    """
    y_soft = F.one_hot(y.long(), num_classes).to(torch.float32)
    rng = seeds.numpy_rng(seeds.MIXUP, seed, epoch, step)
    if mixup.alpha <= 0 or rng.random() >= mixup.prob:
        return x, y_soft
    lam = float(rng.beta(mixup.alpha, mixup.alpha))
    perm = torch.from_numpy(rng.permutation(len(x)))
    return lam * x + (1.0 - lam) * x[perm], lam * y_soft + (1.0 - lam) * y_soft[perm]


def no_effect_warnings(cfg) -> list[str]:
    """Augmentation settings that the chosen features make pointless (for the data report)."""
    aug, kind = cfg.augment, cfg.features.kind
    out: list[Optional[str]] = [
        "augment.hflip has no effect: only image features are flipped" if aug.hflip and kind != "image" else None,
        "augment.vflip has no effect: only image features are flipped" if aug.vflip and kind != "image" else None,
        *(f"augment.{key} has no effect: it changes images only" for key in ("rotate_deg", "brightness", "contrast")
          if getattr(aug, key) > 0 and kind != "image"),
        "augment.gain_db has no effect on images" if aug.gain_db > 0 and kind == "image" else None,
        "data.variants.count has no effect on images: variants are made of waveforms (pitch, tempo, noise, gain)"
        if cfg.data.variants.count and kind == "image" else None,
        "augment.gain_db has (almost) no effect with features.normalize: true, which removes the level"
        if aug.gain_db > 0 and kind in ("mel", "waveform") and cfg.features.normalize else None,
        "augment.time_shift has no effect on images" if aug.time_shift > 0 and kind == "image" else None,
        "augment.freq_warp has no effect: only mel/MFCC features are warped"
        if aug.freq_warp > 0 and kind not in SPECTRAL else None,
        "augment.spec_augment has no effect: only mel/MFCC features are masked"
        if (aug.spec_augment.freq_mask or aug.spec_augment.time_mask) and kind not in SPECTRAL else None,
    ]
    return [w for w in out if w]
