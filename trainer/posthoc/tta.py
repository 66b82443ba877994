"""Test-time augmentation (TTA): each example classified as it is and under a few transforms, the
(calibrated) probabilities averaged.

The transforms act on the base example the classifier feeds (`Classifier.windows`: a uint8
(C, H, W) image or a float32 waveform window of the run's clip length) and return one of the same
shape and dtype, so that everything after them (features, normalisation, the model) is exactly the
run's evaluation path, and each transform can be checked on its own:

    original              the example unchanged
    hflip / vflip         mirrored left-right / top-bottom
    rotate+D / rotate-D   rotated D degrees about the centre (+: counter-clockwise), bilinear; the
                          corners that come in from outside repeat the nearest border pixel
    brightness+P%         every pixel value times 1 + P/100 (rounded, clipped to 0..255)
    contrast+P%           every pixel's distance from the image's mean grey level times 1 + P/100
    shift+P% / shift-P%   audio: the window moved later / earlier by P% of its length over the
                          recording; the part it leaves the recording takes silence (zeros), as
                          training pads a short clip

The list is the run's `tta.transforms` (null: `TTA_IMAGE_DEFAULT` or `TTA_AUDIO_DEFAULT` from
trainer/config.py, by the run's features.kind). Used by `longhaul evaluate --tta`, `longhaul
predict --tta` and `Classifier.predict_batch(..., tta=True)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from trainer.config import TTA_AUDIO_DEFAULT, TTA_AUDIO_OPS, TTA_IMAGE_DEFAULT, TTA_IMAGE_OPS, parse_tta
from trainer.data.augment import rotate_image, scale_brightness, scale_contrast

Transform = Callable[[np.ndarray], np.ndarray]


def transform_names(cfg) -> list[str]:
    """The run's TTA list: `tta.transforms`, or the defaults of its kind of input."""
    if cfg.tta.transforms is not None:
        return list(cfg.tta.transforms)
    return list(TTA_IMAGE_DEFAULT if cfg.features.kind == "image" else TTA_AUDIO_DEFAULT)


def transform(name: str, image: bool) -> Transform:
    """The function of one transform name, for images (`image`) or audio windows. ValueError for
    an unknown name or one of the other kind (a flip of audio)."""
    op, amount = parse_tta(name)
    if op in (TTA_AUDIO_OPS if image else TTA_IMAGE_OPS):
        raise ValueError(f"transform {name!r} does not apply to {'images' if image else 'audio'}")
    table: dict[str, Transform] = {
        "original": lambda x: x,
        "hflip": hflip,
        "vflip": vflip,
        "rotate": lambda x: rotate(x, amount),
        "brightness": lambda x: brightness(x, amount),
        "contrast": lambda x: contrast(x, amount),
        "shift": lambda x: shift(x, amount),
    }
    return table[op]


# ----------------------------------------------------------------------------- images (C, H, W) uint8
def hflip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def vflip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1, :])


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """`img` rotated `degrees` counter-clockwise about its centre (bilinear, borders replicated)."""
    if degrees == 0:
        return img.copy()
    return _to_uint8(rotate_image(_pixels(img), degrees, padding="border").numpy())


def brightness(img: np.ndarray, amount: float) -> np.ndarray:
    """Pixel values times 1 + amount (0.05: 5% brighter)."""
    return _to_uint8(scale_brightness(_pixels(img), 1.0 + amount).numpy())


def contrast(img: np.ndarray, amount: float) -> np.ndarray:
    """Distance from the mean grey level times 1 + amount; the mean level itself stays."""
    return _to_uint8(scale_contrast(_pixels(img), 1.0 + amount).numpy())


def _pixels(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- audio (T,) float32
def shift(wave: np.ndarray, fraction: float) -> np.ndarray:
    """The window moved by `fraction` of its length: later (> 0; the content moves earlier and the
    end takes silence) or earlier (< 0; the content moves later and the start takes silence)."""
    size = len(wave)
    step = int(round(fraction * size))
    out = np.zeros_like(wave)
    if step >= 0:
        out[:size - step] = wave[step:]
    else:
        out[-step:] = wave[:size + step]
    return out


# ----------------------------------------------------------------------------- probabilities
def tta_probabilities(clf, bases: Sequence[np.ndarray], batch_size: int = 32, calibrated: bool = True,
                      names: Sequence[str] | None = None) -> torch.Tensor:
    """(N, C): the mean over the run's transforms (or `names`) of the (calibrated) softmax of
    `clf` (a Classifier) on each base example transformed."""
    names = transform_names(clf.cfg) if names is None else list(names)
    functions = [transform(name, clf.image) for name in names]
    total = torch.zeros(len(bases), len(clf.classes), dtype=torch.float64)
    for start in range(0, len(bases), batch_size):
        chunk = bases[start:start + batch_size]
        for fn in functions:
            batch = torch.stack([clf.inputs(fn(base)) for base in chunk])
            total[start:start + len(chunk)] += clf.probabilities(clf.logits(batch), calibrated).double()
    return (total / len(functions)).float()
