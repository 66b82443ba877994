"""Procedurally generated sound classes: a real (if small) task with nothing stored on disk.

Example `index` of split `split` is drawn from its own generator seeded by
(synthetic.seed, split, index), so any example can be regenerated on its own, in any process, and
changing the number of examples per class does not change the examples that already exist.
Labels are `index % classes`, so every split is exactly balanced.

Every class shares the same random ranges of frequency, onset, duration and amplitude, and every
example has white background noise at `snr_db` (measured over the event), so no single one of
those tells the classes apart: a model has to learn the shape of the event in time and frequency.
Frequencies scale with the sample rate (200 Hz .. 4 kHz at 16 kHz).
"""
from __future__ import annotations

import numpy as np

from . import seeds

CLASS_NAMES = ("tone", "chirp", "noise_burst", "clicks", "am", "fm", "harmonic_stack", "pulse_train")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def class_names(n_classes: int) -> list[str]:
    """Names of the first `n_classes` synthetic classes, in label order."""
    if not 2 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"synthetic data has 2..{len(CLASS_NAMES)} classes, asked for {n_classes}")
    return list(CLASS_NAMES[:n_classes])


def label_of(index: int, n_classes: int) -> int:
    """Label of example `index`: classes are interleaved so every prefix is nearly balanced."""
    return index % n_classes


def generate(split: str, index: int, *, seed: int, n_classes: int, sample_rate: int,
             duration: float, snr_db: float) -> np.ndarray:
    """The float32 waveform of example `index` of `split` (length round(duration * sample_rate))."""
    rng = seeds.numpy_rng(seeds.SYNTHETIC, seed, SPLIT_IDS[split], index)
    n = int(round(duration * sample_rate))
    label = label_of(index, n_classes)
    event, start, stop = _event(CLASS_NAMES[label], rng, n, sample_rate)
    event *= rng.uniform(0.1, 0.8) / max(np.abs(event).max(), 1e-12)
    power = np.mean(event[start:stop] ** 2)
    noise = rng.standard_normal(n) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    wave = event + noise
    peak = np.abs(wave).max()
    if peak > 1.0:  # keep the clip a valid audio signal whatever snr_db asks for
        wave /= peak
    return wave.astype(np.float32)


# ----------------------------------------------------------------------------- event shapes
def _event(kind: str, rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, int, int]:
    """(signal of length n, start, stop) for one event of class `kind` at a random time."""
    length = int(rng.uniform(0.4, 0.7) * n)
    start = int(rng.uniform(0.0, 1.0) * (n - length))
    stop = start + length
    t = np.arange(length) / sr
    lo, hi = 0.0125 * sr, 0.25 * sr  # 200 Hz .. 4 kHz at 16 kHz
    body = _SHAPES[kind](rng, t, sr, lo, hi)
    if kind != "clicks":  # clicks are their own envelope; the others fade in and out
        body *= _fade(length, int(rng.uniform(0.005, 0.03) * sr))
    signal = np.zeros(n)
    signal[start:stop] = body
    return signal, start, stop


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _fade(length: int, ramp: int) -> np.ndarray:
    """Raised-cosine fade-in and fade-out of `ramp` samples each."""
    env = np.ones(length)
    ramp = max(1, min(ramp, length // 2))
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp] = edge
    env[length - ramp:] = edge[::-1]
    return env


def _tone(rng, t, sr, lo, hi):
    f = _log_uniform(rng, lo, hi)
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))


def _chirp(rng, t, sr, lo, hi):
    ratio = rng.uniform(2.0, 4.0)
    f_low = _log_uniform(rng, lo, hi / ratio)
    f0, f1 = (f_low, f_low * ratio) if rng.random() < 0.5 else (f_low * ratio, f_low)
    span = max(t[-1], 1e-9)
    if rng.random() < 0.5:  # linear sweep
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * span))
    else:  # exponential sweep
        k = np.log(f1 / f0) / span
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    return np.sin(phase)


def _noise_burst(rng, t, sr, lo, hi):
    """Band-limited noise, 0.6 .. 2 octaves wide around a random centre."""
    centre = _log_uniform(rng, lo, hi)
    half_width = np.sqrt(rng.uniform(1.5, 4.0))
    spectrum = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1.0 / sr)
    spectrum[(freqs < centre / half_width) | (freqs > centre * half_width)] = 0.0
    return np.fft.irfft(spectrum, n=len(t))


def _clicks(rng, t, sr, lo, hi):
    """3..8 broadband decaying impulses at irregular times."""
    out = np.zeros(len(t))
    for _ in range(int(rng.integers(3, 9))):
        tau = rng.uniform(0.001, 0.004) * sr
        size = min(int(5 * tau), len(t))
        at = int(rng.integers(0, len(t) - size + 1))
        out[at:at + size] += rng.uniform(0.5, 1.0) * rng.standard_normal(size) * np.exp(-np.arange(size) / tau)
    return out


def _am(rng, t, sr, lo, hi):
    """A tone whose loudness swings smoothly 3..6 times a second by 20 dB or more."""
    f = _log_uniform(rng, lo, hi)
    rate, depth = rng.uniform(3.0, 6.0), rng.uniform(0.85, 1.0)
    envelope = 1.0 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return envelope * np.sin(2 * np.pi * f * t)


def _fm(rng, t, sr, lo, hi):
    """A tone whose pitch wobbles 3..6 times a second (at least 1.2 cycles) by 15..30 %."""
    f = _log_uniform(rng, lo, hi / 1.3)
    rate, deviation = rng.uniform(3.0, 6.0), rng.uniform(0.15, 0.30) * f
    phase = 2 * np.pi * f * t + (deviation / rate) * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return np.sin(phase)


def _harmonic_stack(rng, t, sr, lo, hi):
    """A fundamental with 3..8 harmonics of decaying strength."""
    f0 = _log_uniform(rng, lo * 0.5, hi / 3.0)
    rolloff = rng.uniform(0.3, 1.2)
    out = np.zeros(len(t))
    for k in range(1, int(rng.integers(4, 10))):
        if k * f0 >= 0.45 * sr:
            break
        out += k ** -rolloff * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return out


def _pulse_train(rng, t, sr, lo, hi):
    """Short regular tone bursts, 4..8 per second, silent between bursts (at least two per event)."""
    f = _log_uniform(rng, lo, hi)
    rate, duty = rng.uniform(4.0, 8.0), rng.uniform(0.10, 0.25)
    period, width = int(sr / rate), max(int(sr * duty / rate), 4)
    gate = np.zeros(len(t))
    pulse = _fade(width, int(0.003 * sr))
    for at in range(int(rng.integers(0, period // 2)), len(t), period):
        end = min(at + width, len(t))
        gate[at:end] = pulse[:end - at]
    return gate * np.sin(2 * np.pi * f * t)


_SHAPES = {
    "tone": _tone, "chirp": _chirp, "noise_burst": _noise_burst, "clicks": _clicks,
    "am": _am, "fm": _fm, "harmonic_stack": _harmonic_stack, "pulse_train": _pulse_train,
}
