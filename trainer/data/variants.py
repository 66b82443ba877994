"""Pre-augmented variants: waveform-domain augmentations too slow to run online (pitch shift, time
stretch, background noise, gain), made once per training example when the feature store is prepared.

    noise = NoiseBank.from_config(cfg)          # None without data.variants.noise_dir
    noise.check()                               # once, before the workers start: a bad file named early
    waves = make_variants(wave, rate, cfg.data.variants, noise, name, count)

Variant v (1..count; 0 is the example itself) is a pure function of (variants.seed, name, v): its
random numbers come from seeds.numpy_rng(VARIANT_MAKE, seed, sha256(name), v), so a re-prepare, a
different worker count or a different shard boundary makes the same waveforms. All six numbers are
drawn for every variant whatever is switched on, so that turning one augmentation on does not change
what the others drew.

Pitch shift and time stretch are one phase-vocoder pass (torchaudio.functional.phase_vocoder over an
STFT) followed by one resampling: a tempo factor f and a pitch ratio p stretch by f / p and then
resample by p. torchaudio.functional.pitch_shift does the same in two steps, but resamples from
int(rate / p) Hz to rate Hz: the truncation detunes it and the ratio of two large coprime rates
makes a resampling kernel of millions of taps. Here p is rounded to a fraction with a denominator of
at most 64 (an error below half a cent), which keeps the kernel small.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from . import seeds
from .decode import BadItem, Decoder, read_samples
from .store.layout import NOISE_SUFFIXES, noise_listing

# Decoded noise kept per process; a noise folder of hours would otherwise sit in every worker's RAM.
NOISE_CACHE_BYTES = 256 << 20
# Largest denominator of the pitch ratio's fraction (see the module docstring).
PITCH_DENOMINATOR = 64


class NoiseError(ValueError):
    """The noise folder cannot be used; the message names the folder or the file and why."""


# ----------------------------------------------------------------------------- the noise folder
@dataclass
class NoiseBank:
    """The background recordings of data.variants.noise_dir, mono at the run's rate, each decoded
    on first use and then kept (up to NOISE_CACHE_BYTES) for the life of the process."""

    folder: Path
    files: list[Path]
    rate: int
    _waves: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def from_config(cls, cfg) -> Optional["NoiseBank"]:
        """The run's noise bank (None when data.variants.noise_dir is null); NoiseError when the
        folder is missing or holds no audio file. One bank per folder and rate per process."""
        folder = cfg.resolve_path(cfg.data.variants.noise_dir)
        if folder is None:
            return None
        folder = folder.resolve()
        if not folder.is_dir():
            raise NoiseError(f"data.variants.noise_dir: folder not found: {folder}")
        # The listing is part of the key: a folder changed since the last call gets a new bank.
        return _bank(folder, int(cfg.data.sample_rate), tuple(noise_listing(folder)))

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        # A bank sent to a worker process carries the list, not the decoded audio.
        return {"folder": self.folder, "files": self.files, "rate": self.rate, "_waves": OrderedDict()}

    def check(self) -> None:
        """Read every file's header: NoiseError naming the first one that is not audio. Cheap
        (no decoding), so prepare can refuse a bad folder before it starts."""
        for path in self.files:
            try:
                info = soundfile.info(str(path))
            except (RuntimeError, OSError, ValueError, TypeError) as exc:
                raise NoiseError(f"data.variants.noise_dir: {path}: cannot read audio: "
                                 f"{getattr(exc, 'error_string', None) or exc}") from None
            if info.frames == 0:
                raise NoiseError(f"data.variants.noise_dir: {path}: no audio samples")

    def wave(self, index: int) -> np.ndarray:
        """Noise file `index`, mono float32 at the bank's rate (decoded once, then cached)."""
        cached = self._waves.get(index)
        if cached is not None:
            self._waves.move_to_end(index)
            return cached
        wave = self._decode(self.files[index])
        self._waves[index] = wave
        while len(self._waves) > 1 and sum(w.nbytes for w in self._waves.values()) > NOISE_CACHE_BYTES:
            self._waves.popitem(last=False)
        return wave

    def _decode(self, path: Path) -> np.ndarray:
        try:
            samples, rate = read_samples(path)
            wave = Decoder(sample_rate=self.rate, n_samples=0, image_size=0, image_channels=1).mono(samples, rate)
        except BadItem as exc:
            raise NoiseError(f"data.variants.noise_dir: {path}: {exc}") from None
        if not np.any(wave):
            raise NoiseError(f"data.variants.noise_dir: {path}: silent (every sample is 0)")
        return wave


@lru_cache(maxsize=4)
def _bank(folder: Path, rate: int, listing: tuple[tuple[str, int, int], ...]) -> NoiseBank:
    if not listing:
        raise NoiseError(f"data.variants.noise_dir: no {'/'.join(s[1:] for s in NOISE_SUFFIXES)} files in {folder}")
    return NoiseBank(folder, [folder / name for name, _, _ in listing], rate)


# ----------------------------------------------------------------------------- the draws
@dataclass(frozen=True)
class VariantDraw:
    """The random choices of one variant."""

    semitones: float
    tempo: float
    snr_db: float
    noise_file: float
    noise_offset: float
    gain_db: float
    """noise_file and noise_offset are uniform in [0, 1): fractions of the bank and of the file."""


def name_number(name: str) -> int:
    """A 64-bit number of an example's name (stable across processes, unlike hash()). A file
    name that is not UTF-8 comes as surrogate-escaped str: its bytes are hashed as they are."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "little")


def draw_variant(vcfg, name: str, variant: int) -> VariantDraw:
    """The choices of variant `variant` of example `name` under `vcfg` (data.variants)."""
    u = seeds.numpy_rng(seeds.VARIANT_MAKE, vcfg.seed, name_number(name), variant).random(6)
    low, high = vcfg.noise_snr_db
    return VariantDraw(semitones=(2.0 * u[0] - 1.0) * vcfg.pitch_semitones,
                       tempo=1.0 + (2.0 * u[1] - 1.0) * vcfg.time_stretch,
                       snr_db=low + u[2] * (high - low), noise_file=float(u[3]), noise_offset=float(u[4]),
                       gain_db=(2.0 * u[5] - 1.0) * vcfg.gain_db)


# ----------------------------------------------------------------------------- the variants
def make_variants(wave: np.ndarray, rate: int, vcfg, noise: Optional[NoiseBank], name: str,
                  count: int) -> list[np.ndarray]:
    """`count` variants (1..count) of the mono waveform `wave` at `rate` Hz: float32 arrays of
    exactly len(wave) samples. `vcfg` is data.variants; `noise` the bank (None: no noise)."""
    if np.ndim(wave) != 1:
        raise ValueError(f"variants are made of a mono waveform (T,), not of an array of shape {np.shape(wave)}")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    return [apply_variant(wave, rate, draw_variant(vcfg, name, v), noise) for v in range(1, count + 1)]


def apply_variant(wave: np.ndarray, rate: int, draw: VariantDraw, noise: Optional[NoiseBank]) -> np.ndarray:
    """One variant: pitch and tempo, then noise (not itself shifted), then the gain of the mixture."""
    out = stretch_and_shift(wave, rate, draw.tempo, draw.semitones)
    if noise is not None:
        segment = noise_segment(noise.wave(int(draw.noise_file * len(noise))), draw.noise_offset, len(out))
        out = mix_at_snr(out, segment, draw.snr_db)
    if draw.gain_db != 0.0:
        out = out * np.float32(10.0 ** (draw.gain_db / 20.0))
    return np.ascontiguousarray(out, dtype=np.float32)


def stretch_and_shift(wave: np.ndarray, rate: int, tempo: float, semitones: float) -> np.ndarray:
    """`wave` played `tempo` times as fast (> 1: shorter) at the same pitch, and `semitones`
    higher at the same tempo; then cut or zero-padded at the end to len(wave)."""
    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(PITCH_DENOMINATOR)
    if tempo == 1.0 and ratio == 1:
        return wave.copy()
    stretch = tempo / float(ratio)
    x = torch.from_numpy(wave)
    if stretch != 1.0:
        x = phase_vocoder_stretch(x, rate, stretch)
    if ratio != 1:
        x = AF.resample(x, ratio.numerator, ratio.denominator)
    return fit_length(x.numpy(), len(wave))


def phase_vocoder_stretch(x: torch.Tensor, rate: int, factor: float) -> torch.Tensor:
    """(T,) -> (round(T / factor),): the same sound `factor` times as fast, pitch kept."""
    n_fft = stft_size(rate)
    hop = n_fft // 4
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2])[..., None]
    stretched = AF.phase_vocoder(spec, factor, advance)
    return torch.istft(stretched, n_fft, hop, window=window, length=int(round(len(x) / factor)))


def stft_size(rate: int) -> int:
    """FFT size of about 32 ms (512 at 16 kHz, 1024 at 32 kHz): fine enough in frequency for the
    vocoder's phases, short enough in time to keep transients."""
    return 2 ** max(6, round(math.log2(rate * 0.032)))


def fit_length(wave: np.ndarray, size: int) -> np.ndarray:
    """The first `size` samples of `wave`, zero-padded at the end (as decoding pads a short clip)."""
    out = np.zeros(size, dtype=np.float32)
    keep = min(size, len(wave))
    out[:keep] = wave[:keep]
    return out


def noise_segment(noise: np.ndarray, offset: float, size: int) -> np.ndarray:
    """`size` samples of `noise` from the fraction `offset` of it on, wrapping round a file shorter
    than that."""
    start = int(offset * len(noise))
    return np.take(noise, np.arange(start, start + size), mode="wrap")


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave + noise scaled so that power(wave) / power(scaled noise) is `snr_db` dB (powers over
    the whole clip). A silent wave is returned as it is: it has no level to measure the noise by."""
    signal = float(np.mean(np.square(wave, dtype=np.float64)))
    level = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal == 0.0 or level == 0.0:
        return wave
    scale = math.sqrt(signal / (level * 10.0 ** (snr_db / 10.0)))
    return (wave + np.float32(scale) * noise).astype(np.float32)
