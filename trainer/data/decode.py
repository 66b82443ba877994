"""Decoding one example: the Decoder (audio/image -> base form) and the Item kinds.

`Item.load(decoder)` decodes one example into its *base* form: a float32 waveform of exactly
duration*sample_rate samples (mono, resampled, padded with zeros at the end or trimmed at the
end), or a uint8 (C, S, S) image. Items are small picklable objects, so DataLoader workers can
decode them too. Audio is read with soundfile (torchaudio>=2.9 needs torchcodec/ffmpeg to load
files) and resampled with torchaudio.functional.resample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image

from . import synthetic
from .report import Problem


class BadItem(Exception):
    """An example cannot be decoded; the message says why."""


@dataclass
class Decoded:
    """One decoded example plus what it was before padding/resizing (for the report)."""

    base: np.ndarray
    duration: Optional[float] = None
    rate: Optional[int] = None
    size: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class Decoder:
    """Turns raw audio or image files into the base form every example of a run shares."""

    sample_rate: int
    n_samples: int
    image_size: int
    image_channels: int
    synthetic_seed: int = 0
    synthetic_classes: int = 0
    synthetic_snr_db: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "Decoder":
        data = cfg.data
        return cls(sample_rate=data.sample_rate, n_samples=int(round(data.duration * data.sample_rate)),
                   image_size=data.image_size, image_channels=data.image_channels,
                   synthetic_seed=data.synthetic.seed, synthetic_classes=data.synthetic.classes,
                   synthetic_snr_db=data.synthetic.snr_db)

    def describe(self, image: bool) -> str:
        if image:
            mode = "RGB" if self.image_channels == 3 else "grayscale"
            return f"{self.image_size}x{self.image_size} {mode} image"
        return f"{self.n_samples / self.sample_rate:.3f} s mono at {self.sample_rate} Hz ({self.n_samples} samples)"

    # ------------------------------------------------------------------------- audio
    def waveform(self, samples: np.ndarray, rate: int) -> Decoded:
        """(frames,) or (frames, channels) samples at `rate` -> mono, resampled, padded/trimmed."""
        return Decoded(self.fit_length(self.mono(samples, rate)), duration=len(samples) / rate, rate=rate)

    def mono(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """(frames,) or (frames, channels) samples at `rate` -> mono at the run's rate, whole
        (prediction cuts a long recording into windows of n_samples)."""
        if samples.size == 0:
            raise BadItem("no audio samples")
        finite = np.isfinite(samples)
        if not finite.all():
            first = int(np.argmin(finite.reshape(len(samples), -1).all(axis=1)))
            raise BadItem(f"contains NaN or infinite samples (first at sample {first})")
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if rate != self.sample_rate:
            mono = AF.resample(torch.from_numpy(mono), rate, self.sample_rate).numpy()
        return mono

    def fit_length(self, wave: np.ndarray) -> np.ndarray:
        """Pad with zeros at the end or cut the end so that len == n_samples."""
        out = np.zeros(self.n_samples, dtype=np.float32)
        keep = min(len(wave), self.n_samples)
        out[:keep] = wave[:keep]
        return out

    def read_audio(self, path: Path) -> Decoded:
        return self.waveform(*read_samples(path))

    # ------------------------------------------------------------------------- images
    def read_image(self, path: Path) -> Decoded:
        try:
            with Image.open(path) as img:
                img.load()
                return self.image(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise BadItem(f"cannot decode image: {exc}") from None

    def image(self, img: Image.Image) -> Decoded:
        """A loaded image -> the run's channels and size, (C, H, W) uint8."""
        size = img.size
        img = _to_mode(img, self.image_channels)
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
        chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return Decoded(np.ascontiguousarray(chw), size=size)

    # ------------------------------------------------------------------------- synthetic
    def synthesize(self, split: str, index: int) -> Decoded:
        wave = synthetic.generate(split, index, seed=self.synthetic_seed, n_classes=self.synthetic_classes,
                                  sample_rate=self.sample_rate, duration=self.n_samples / self.sample_rate,
                                  snr_db=self.synthetic_snr_db)
        return Decoded(wave, duration=len(wave) / self.sample_rate, rate=self.sample_rate)


def read_samples(path: Path) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, rate) of an audio file; BadItem when it cannot be decoded."""
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        # libsndfile's own text ("Format not recognised.") without the path we already give
        raise BadItem(f"cannot decode audio: {getattr(exc, 'error_string', None) or exc}") from None
    return samples, rate


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert to 8-bit L or RGB; 16-bit grayscale is scaled down rather than clipped."""
    if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max() > 255):
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


# ----------------------------------------------------------------------------- items
@dataclass(eq=False)
class Item:
    """One example: where it comes from and its label (an index into the class list)."""

    where: str
    """File the example lives in (the audio/image file, or the JSON file)."""
    context: str = ""
    """Where inside or why: 'item 3', 'list.csv row 5'."""
    label: int = -1

    @property
    def name(self) -> str:
        return f"{self.where} ({self.context})" if self.context else self.where

    def problem(self, reason: str, skippable: bool = True) -> Problem:
        return Problem(self.where, f"{self.context}: {reason}" if self.context else reason, skippable)

    def load(self, decoder: Decoder) -> Decoded:
        raise NotImplementedError


@dataclass(eq=False)
class AudioFile(Item):
    def load(self, decoder: Decoder) -> Decoded:
        return decoder.read_audio(Path(self.where))


@dataclass(eq=False)
class ImageFile(Item):
    def load(self, decoder: Decoder) -> Decoded:
        return decoder.read_image(Path(self.where))


@dataclass(eq=False)
class InlineWaveform(Item):
    """A waveform that came inside a JSON file, at its original rate."""

    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    rate: int = 0

    def load(self, decoder: Decoder) -> Decoded:
        return decoder.waveform(self.samples, self.rate)


@dataclass(eq=False)
class SyntheticExample(Item):
    split: str = "train"
    index: int = 0

    def load(self, decoder: Decoder) -> Decoded:
        return decoder.synthesize(self.split, self.index)
