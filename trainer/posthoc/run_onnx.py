#!/usr/bin/env python3
"""Classify files with a model exported by `longhaul export-model`, outside longhaul.

    python run_onnx.py FILE... [--top-k K] [--json]

Needs numpy and onnxruntime (model.onnx) or torch (model.pt, TorchScript); soundfile for audio,
Pillow for images. The exported graph takes the run's *base example* and does every feature step
itself (STFT, mel, dB, normalisation; image scaling and mean/std): see preprocessing.json.
This script only does what comes before, exactly as longhaul does it:
- audio: samples as float32, channels averaged to mono, resampled to the run's rate with
  torchaudio's windowed-sinc resampler (ported below), cut into consecutive windows of the run's
  clip length, the last one padded with zeros (a run on long recordings: the windows its
  evaluation takes, preprocessing.json's audio.window_starts); the file's probabilities are the
  mean of its windows';
- images: 16-bit grey scaled down to 8 bits, converted to L or RGB, resized with PIL bilinear,
  as float32 (1, C, S, S) pixel values 0..255.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def resample(wave, orig, new, width_zeros=6, rolloff=0.99):
    """torchaudio.functional.resample (sinc_interp_hann) in float32 numpy."""
    if orig == new:
        return wave
    gcd = math.gcd(orig, new)
    orig, new = orig // gcd, new // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float32) / orig
    t = (np.arange(0, -new, -1, dtype=np.float32)[:, None] / new + idx) * np.float32(base)
    t = np.clip(t, -width_zeros, width_zeros)
    window = np.cos(t * np.float32(math.pi / width_zeros / 2)) ** 2
    t = t * np.float32(math.pi)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, np.float32(1.0), np.sin(t) / t) * window * np.float32(base / orig)
    padded = np.pad(wave, (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    out = (frames @ kernel.T.astype(np.float32)).reshape(-1)
    return out[:math.ceil(new * len(wave) / orig)].astype(np.float32)


def audio_windows(path, spec):
    import soundfile
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32)
    wave = resample(wave, rate, spec["sample_rate"])
    size = spec["window_samples"]
    if "window_starts" in spec:  # a run on long recordings (data.windows): its evaluation's windows
        starts = window_starts(len(wave), **spec["window_starts"])
    else:
        starts = [i * size for i in range(max(1, math.ceil(len(wave) / size)))]
    out = np.zeros((len(starts), size), dtype=np.float32)
    for i, start in enumerate(starts):
        part = wave[start:start + size]
        out[i, :len(part)] = part
    return out


def window_starts(n, row_samples, window_rows, hop_rows):
    """Sample starts of the windows of n samples (trainer.data.windows.sample_starts)."""
    rows = n // row_samples + 1 if row_samples > 1 else n
    if rows <= window_rows:
        return [0]
    starts = list(range(0, rows - window_rows + 1, hop_rows))
    if starts[-1] != rows - window_rows:
        starts.append(rows - window_rows)
    return [s * row_samples for s in starts]


def image_input(path, spec):
    from PIL import Image
    with Image.open(path) as img:
        img.load()
        if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max() > 255):
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8), "L")
        elif img.mode == "F":
            img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
        img = img.convert("L" if spec["channels"] == 1 else "RGB")
        img = img.resize((spec["size"], spec["size"]), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return chw[None].astype(np.float32)


def load_model(spec):
    """A function: batch (float32 array) -> probabilities (N, C)."""
    if spec["format"] == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(HERE / spec["model_file"]), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["probs"], {spec["input"]["name"]: x})[0]
    import torch
    module = torch.jit.load(str(HERE / spec["model_file"]), map_location="cpu").eval()
    return lambda x: module(torch.from_numpy(x))[0].detach().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    spec = json.loads((HERE / "preprocessing.json").read_text())
    run, classes, failed = load_model(spec), spec["classes"], 0
    for path in args.files:
        try:
            x = image_input(path, spec["image"]) if spec["kind"] == "image" else audio_windows(path, spec["audio"])
            probs = np.concatenate([run(x[i:i + 32]) for i in range(0, len(x), 32)]).mean(axis=0)
        except Exception as exc:  # one unreadable file does not stop the others
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        top = np.argsort(-probs)[:args.top_k]
        if args.json:
            print(json.dumps({"path": str(path), "label": classes[top[0]], "prob": float(probs[top[0]]),
                              "probs": {classes[i]: float(probs[i]) for i in top}}))
        else:
            print(f"{path}: " + ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in top))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
