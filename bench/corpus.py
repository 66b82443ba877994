"""A large on-disk corpus for bench/data_scale.py: short WAV files and PNG images, made here.

    python bench/corpus.py audio ROOT [--files 50000] [--classes 50] [--seed 0] [--workers 2] [--rate 16000]
    python bench/corpus.py images ROOT [--images 5000] [--classes 10] [--seed 0] [--workers 2]

audio writes ROOT/{train,val,test}/<class>/<n>.wav: mono PCM16 clips of 0.5-1.5 s (16 kHz, --rate). A class
is a sound family (tone, rising or falling chirp, band noise, resonant clicks, AM, FM, harmonic
stack, pulse train, two tones) in one of five frequency bands, with random frequencies, timing,
level and background noise: 10 x 5 = 50 classes a small model tells apart from a log-mel.
images writes ROOT/{train,val,test}/<class>/<n>.png: sizes 300-600 px a side, one pattern family
per class (stripes at a class angle, rings, checks, dots, blobs, ...) with random colours, scale,
phase and shading.

Every file is a pure function of (seed, split, class, n), written to a temp name and renamed, so
an interrupted run goes on where it stopped. ROOT/corpus.json, written last, records the
parameters: a run that finds the same parameters there does nothing. Splits: 90/5/5 per class.
Importable: `make_audio(root, files, ...)`, `make_images(root, images, ...)` -> the marker dict.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

RATE = 16000
SECONDS = (0.5, 1.5)
SNR_DB = (6.0, 20.0)
SHAPES = ("tone", "chirp_up", "chirp_down", "band_noise", "clicks", "am", "fm", "harmonic", "pulses", "two_tone")
BANDS = 5
BAND_EDGES = np.geomspace(150.0, 6000.0, BANDS + 1)  # Hz; each class stays inside one band
PATTERNS = ("stripes_0", "stripes_45", "stripes_90", "stripes_135", "rings", "checks", "dots", "blobs",
            "radial", "gradient")
IMAGE_SIDES = (300, 600)
SPLIT_SHARE = {"val": 0.05, "test": 0.05}  # the rest trains
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
FORMAT = 1
MARKER = "corpus.json"
PARAMS = ".corpus-params.json"  # written first: a half-made corpus of other parameters is refused
TASK_FILES = 200  # files per worker task: small enough for a steady progress line


class CorpusError(RuntimeError):
    """ROOT holds a corpus made with other parameters."""


def split_counts(per_class: int) -> dict[str, int]:
    """Files per class of each split: val and test 5% each (at least 1), train the rest."""
    if per_class < 3:
        raise ValueError(f"a corpus needs at least 3 files per class (one per split), found {per_class}")
    held = {split: max(1, round(share * per_class)) for split, share in SPLIT_SHARE.items()}
    return {"train": per_class - sum(held.values()), **held}


def class_names(kind: str, classes: int) -> list[str]:
    """Folder names in label order: audio 'shape_b<band>', images the pattern names."""
    if kind == "audio":
        names = [f"{shape}_b{band}" for band in range(BANDS) for shape in SHAPES]
    else:
        names = list(PATTERNS)
    if not 2 <= classes <= len(names):
        raise ValueError(f"{kind} corpus has 2..{len(names)} classes, asked for {classes}")
    return names[:classes]


# ----------------------------------------------------------------------------- audio
def audio_clip(seed: int, split: str, label: int, n: int, rate: int = RATE) -> np.ndarray:
    """The float32 waveform of file `n` of class `label` in `split` (0.5-1.5 s at `rate`)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], label, n])
    length = int(rng.uniform(*SECONDS) * rate)
    shape, band = SHAPES[label % len(SHAPES)], label // len(SHAPES)
    lo, hi = BAND_EDGES[band], BAND_EDGES[band + 1]
    event_len = int(rng.uniform(0.5, 0.9) * length)
    start = int(rng.integers(0, length - event_len + 1))
    t = np.arange(event_len) / rate
    event = _SOUNDS[shape](rng, t, lo, hi, rate)
    ramp = min(event_len // 2, int(0.01 * rate))
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    event[:ramp] *= edge
    event[event_len - ramp:] *= edge[::-1]
    event *= rng.uniform(0.1, 0.7) / max(np.abs(event).max(), 1e-9)
    power = np.mean(event ** 2)
    wave = rng.standard_normal(length) * np.sqrt(power / 10.0 ** (rng.uniform(*SNR_DB) / 10.0))
    wave[start:start + event_len] += event
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _freq(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _sweep(rng, t, lo, hi, rising):
    f0, f1 = lo * rng.uniform(1.0, 1.15), hi * rng.uniform(0.87, 1.0)
    if not rising:
        f0, f1 = f1, f0
    span = max(t[-1], 1e-9)
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * span)))


def _band_noise(rng, t, lo, hi, rate):
    spectrum = np.fft.rfft(rng.standard_normal(len(t)))
    freqs = np.fft.rfftfreq(len(t), 1.0 / rate)
    spectrum[(freqs < lo) | (freqs > hi)] = 0.0
    return np.fft.irfft(spectrum, n=len(t))


def _clicks(rng, t, lo, hi, rate):
    out = np.zeros(len(t))
    for _ in range(int(rng.integers(4, 10))):
        f, tau = _freq(rng, lo, hi), rng.uniform(0.003, 0.01) * rate
        size = min(int(5 * tau), len(t))
        at = int(rng.integers(0, len(t) - size + 1))
        k = np.arange(size)
        out[at:at + size] += np.sin(2 * np.pi * f * k / rate) * np.exp(-k / tau)
    return out


def _pulses(rng, t, lo, hi, rate):
    rate = rng.uniform(6.0, 16.0)
    gate = (np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)) > 0.3).astype(float)
    return gate * np.sin(2 * np.pi * _freq(rng, lo, hi) * t)


def _fm(rng, t, lo, hi, rate):
    """Vibrato around the band's centre, the deviation a share of the band."""
    rate, deviation = rng.uniform(4.0, 8.0), rng.uniform(0.15, 0.35) * (hi - lo)
    return np.sin(2 * np.pi * np.sqrt(lo * hi) * t + deviation / rate * np.sin(2 * np.pi * rate * t))


def _two_tone(rng, t, lo, hi, rate):
    f = _freq(rng, lo, hi / 1.5)
    return np.sin(2 * np.pi * f * t) + np.sin(2 * np.pi * 1.5 * f * t)


def _harmonic(rng, t, lo, hi, rate):
    f0 = _freq(rng, lo, hi)
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))


_SOUNDS: dict[str, Callable] = {
    "tone": lambda rng, t, lo, hi, rate: np.sin(2 * np.pi * _freq(rng, lo, hi) * t),
    "chirp_up": lambda rng, t, lo, hi, rate: _sweep(rng, t, lo, hi, True),
    "chirp_down": lambda rng, t, lo, hi, rate: _sweep(rng, t, lo, hi, False),
    "band_noise": _band_noise,
    "clicks": _clicks,
    "am": lambda rng, t, lo, hi, rate: (1 + 0.9 * np.sin(2 * np.pi * rng.uniform(3, 12) * t))
    * np.sin(2 * np.pi * _freq(rng, lo, hi) * t),
    "fm": _fm,
    "harmonic": _harmonic,
    "pulses": _pulses,
    "two_tone": _two_tone,
}


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    import soundfile

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    soundfile.write(str(tmp), wave, rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- images
def image_pixels(seed: int, split: str, label: int, n: int) -> np.ndarray:
    """The (H, W, 3) uint8 image of file `n` of class `label` in `split`."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], label, n, 1])
    h, w = (int(v) for v in rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, size=2))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    period = rng.uniform(0.04, 0.12)
    pattern = PATTERNS[label]
    if pattern.startswith("stripes"):
        angle = np.deg2rad(float(pattern.split("_")[1]) + rng.uniform(-8, 8))
        v = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 6.3))
    elif pattern == "rings":
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        v = np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / period)
    elif pattern == "checks":
        v = np.sign(np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))
    elif pattern == "dots":
        v = (np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period) > 0.6) * 2.0 - 1
    elif pattern == "blobs":
        v = -np.ones_like(x)
        for cy, cx, r in rng.uniform((0, 0, 0.05), (1, 1, 0.15), size=(6, 3)):
            v = np.maximum(v, 1 - 2 * ((x - cx) ** 2 + (y - cy) ** 2) / r ** 2)
    elif pattern == "radial":
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        v = np.sin(np.arctan2(y - cy, x - cx) * int(rng.integers(4, 12)))
    else:
        angle = rng.uniform(0, 2 * np.pi)
        v = 2 * ((x * np.cos(angle) + y * np.sin(angle)) % 1.0) - 1
    bg = rng.uniform(0, 255, size=3)
    fg = (bg + rng.uniform(80, 176, size=3)) % 256  # the pattern always stands out of its ground
    mix = (np.clip(v, -1, 1)[..., None] + 1) / 2
    shade = 0.75 + 0.25 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))[..., None]
    return np.clip((mix * fg + (1 - mix) * bg) * shade, 0, 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the corpus
def _make_files(task: tuple) -> int:
    """One worker task: files `ns` of one (split, class); files already there are kept."""
    kind, root, seed, rate, split, label, name, ns = task
    folder = Path(root) / split / name
    for n in ns:
        path = folder / (f"{n:06d}.wav" if kind == "audio" else f"{n:06d}.png")
        if path.exists():
            continue
        if kind == "audio":
            _write_wav(path, audio_clip(seed, split, label, n, rate), rate)
        else:
            _write_png(path, image_pixels(seed, split, label, n))
    return len(ns)


def _tasks(kind: str, root: Path, total: int, classes: int, seed: int, rate: int) -> list[tuple]:
    names = class_names(kind, classes)
    tasks = []
    for split, count in split_counts(total // classes).items():
        for label, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for first in range(0, count, TASK_FILES):
                tasks.append((kind, str(root), seed, rate, split, label, name, range(first, min(count, first + TASK_FILES))))
    return tasks


def make(kind: str, root: Path, total: int, classes: int, seed: int = 0, workers: int = 2,
         progress: Optional[Callable[[int, int], None]] = None, rate: int = RATE) -> dict:
    """Make (or finish, or find made) a corpus of `total` files; returns the marker's content."""
    root = Path(root)
    params = {"format": FORMAT, "kind": kind, "files": total, "classes": classes, "seed": seed,
              "per_split": split_counts(total // classes)}
    if kind == "audio":
        params.update(rate=rate, clip_seconds=list(SECONDS))
    else:
        params.update(sides=list(IMAGE_SIDES))
    marker = root / MARKER
    if marker.exists():
        found = json.loads(marker.read_text())
        if {k: found.get(k) for k in params} == params:
            return found
        raise CorpusError(f"{root} holds another corpus ({marker}: {found}); use another folder or delete it")
    root.mkdir(parents=True, exist_ok=True)
    started = _check_params(root / PARAMS, params)
    tasks = _tasks(kind, root, total, classes, seed, rate)
    n_files = sum(len(t[-1]) for t in tasks)
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for count in pool.map(_make_files, tasks):
            done += count
            if progress:
                progress(done, n_files)
    result = {**params, "files_written": n_files, "made_in_s": round(time.monotonic() - started, 1)}
    tmp = marker.with_name(f".{MARKER}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, marker)
    return result


def _check_params(path: Path, params: dict) -> float:
    if path.exists() and json.loads(path.read_text()) != params:
        raise CorpusError(f"{path.parent} holds a half-made corpus of other parameters ({path}); "
                          "use another folder or delete it")
    path.write_text(json.dumps(params))
    return time.monotonic()


def make_audio(root: Path, files: int = 50000, classes: int = 50, seed: int = 0, workers: int = 2,
               progress=None, rate: int = RATE) -> dict:
    return make("audio", root, files, classes, seed, workers, progress, rate)


def make_images(root: Path, images: int = 5000, classes: int = 10, seed: int = 0, workers: int = 2,
                progress=None) -> dict:
    return make("images", root, images, classes, seed, workers, progress)


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback that rewrites one stderr line (files, rate, ETA)."""
    t0 = time.monotonic()
    shown = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - shown[0] < 0.5:
            return
        shown[0] = now
        rate = done / max(now - t0, 1e-9)
        eta = (total - done) / rate if rate else 0.0
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total} files, {rate:.0f}/s, ETA {eta:.0f} s   ", end=end, file=sys.stderr,
              flush=True)
    return show


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["audio", "images"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--files", "--images", dest="files", type=int, default=None,
                        help="files in all (default: 50000 audio, 5000 images)")
    parser.add_argument("--classes", type=int, default=None, help="default: 50 audio, 10 images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=RATE, help="audio sample rate (Hz)")
    args = parser.parse_args(argv)
    audio = args.kind == "audio"
    files = args.files or (50000 if audio else 5000)
    classes = args.classes or (50 if audio else 10)
    result = make(args.kind, args.root, files, classes, args.seed, args.workers, stderr_progress(args.kind), args.rate)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
