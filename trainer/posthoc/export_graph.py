"""The exported graph: one base example -> calibrated probabilities, preprocessing included.

Where the feature pipeline lives: **inside the graph**. The exported model takes what every
longhaul run shares before features, its *base example* (see trainer/data/decode.py):
- audio: `waveform` (N, n_samples) float32, mono at the run's sample rate, one window of the run's
  clip length (shorter audio padded with zeros at the end);
- images: `image` (N, C, S, S) float32 pixel values 0..255 (decoded, converted to L/RGB and
  resized to S x S with bilinear filtering, as PIL does).
Everything after that (STFT, mel filterbank, dB with top_db, MFCC DCT, per-example
standardisation, image scaling and mean/std) is in the graph, so another system reproduces the
run's features exactly by running the file; it cannot get a detail of the mel filterbank or the
dB floor wrong. Reading files, mono mixing, resampling and cutting into windows stay outside (they
depend on file formats): `run_onnx.py` does them with numpy, soundfile and PIL.

The STFT is a strided 1-D convolution with a windowed DFT basis (cos and -sin rows), which is
exactly what torch.stft computes (reflect padding of n_fft/2 on both sides, periodic Hann window,
onesided) but exports to every ONNX opset and to TorchScript without complex tensors.
Outputs: `probs` (softmax of logits / temperature) and `logits`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.features import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, SPECTRAL, STD_FLOOR


class LogMel(nn.Module):
    """torchaudio's MelSpectrogram(power=2) + AmplitudeToDB("power", top_db), batched:
    (N, T) waveform -> (N, 1, n_mels, frames)."""

    def __init__(self, extractor):
        super().__init__()
        spec, to_db = extractor.mel.spectrogram, extractor.to_db
        if spec.power != 2.0 or spec.normalized or spec.pad or not spec.onesided:
            raise ValueError("only power spectrograms without normalisation or extra padding can be exported")
        n_fft, win_length = spec.n_fft, spec.win_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win_length) // 2  # torch.stft centres a shorter window
        window[left:left + win_length] = spec.window.to(torch.float64)
        freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * freqs * torch.arange(n_fft, dtype=torch.float64)[None, :] / n_fft
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2F, n_fft)
        self.register_buffer("basis", basis.to(torch.float32).unsqueeze(1))
        self.register_buffer("fb", extractor.mel.mel_scale.fb.to(torch.float32).clone())
        self.n_fft, self.hop = n_fft, spec.hop_length
        self.center, self.pad_mode = spec.center, spec.pad_mode
        self.n_freqs = n_fft // 2 + 1
        self.multiplier, self.amin = float(to_db.multiplier), float(to_db.amin)
        self.db_offset = float(to_db.multiplier * to_db.db_multiplier)
        self.top_db = None if to_db.top_db is None else float(to_db.top_db)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(1)  # (N, 1, T)
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        y = F.conv1d(x, self.basis, stride=self.hop)  # (N, 2F, frames)
        re, im = y[:, :self.n_freqs], y[:, self.n_freqs:]
        power = re * re + im * im
        mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)  # (N, n_mels, frames)
        db = self.multiplier * torch.log10(torch.clamp(mel, min=self.amin)) - self.db_offset
        if self.top_db is not None:
            db = torch.maximum(db, torch.amax(db, dim=(1, 2), keepdim=True) - self.top_db)
        return db.unsqueeze(1)


class Preprocess(nn.Module):
    """Base examples -> the model's input, as FeatureExtractor.finish(raw(base)) does one at a time."""

    def __init__(self, extractor):
        super().__init__()
        self.kind, self.normalize = extractor.kind, bool(extractor.normalize)
        self.logmel = LogMel(extractor) if self.kind in SPECTRAL else None
        dct = extractor.dct.to(torch.float32).clone() if self.kind == "mfcc" else torch.zeros(0)
        self.register_buffer("dct", dct)
        gray = extractor.image_channels == 1
        mean, std = (GRAY_MEAN, GRAY_STD) if gray else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            x = x / 255.0
            return (x - self.mean) / self.std if self.normalize else x
        x = self.logmel(x) if self.logmel is not None else x.unsqueeze(1)
        if self.kind == "mfcc":
            x = torch.matmul(x.transpose(-1, -2), self.dct).transpose(-1, -2)
        if not self.normalize:
            return x
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        std = torch.sqrt((centred * centred).mean(dim=dims, keepdim=True))
        return centred / torch.clamp(std, min=STD_FLOOR)


class Exported(nn.Module):
    """Preprocessing + the run's model + temperature: base examples -> (probs, logits)."""

    def __init__(self, clf):
        super().__init__()
        self.preprocess = Preprocess(clf.extractor)
        self.model = clf.model.eval()
        self.temperature = float(clf.temperature)
        self.channels_last = bool(clf.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.preprocess(x)
        if self.channels_last:  # the layout of the weights, as the Classifier runs them (ONNX ignores it)
            features = features.contiguous(memory_format=torch.channels_last)
        logits = self.model(features).float()
        return torch.softmax(logits / self.temperature, dim=-1), logits


def input_name(clf) -> str:
    return "image" if clf.image else "waveform"


def example_batch(clf, bases: list[np.ndarray]) -> torch.Tensor:
    """Base examples as the graph's input: float32 (N, T) waveforms or (N, C, S, S) pixel values."""
    return torch.from_numpy(np.stack(bases).astype(np.float32))


def reference_probs(clf, bases: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """The Classifier's own (calibrated) probabilities of base examples: what parity compares with."""
    return clf.base_probabilities(bases, batch_size).numpy()


def describe_graph(extractor) -> dict:
    """Every preprocessing step the graph holds, with its parameters (preprocessing.json)."""
    steps: dict = {"kind": extractor.kind, "normalize": bool(extractor.normalize)}
    if extractor.kind == "image":
        gray = extractor.image_channels == 1
        steps.update(scale=1 / 255, mean=list(GRAY_MEAN if gray else IMAGENET_MEAN),
                     std=list(GRAY_STD if gray else IMAGENET_STD),
                     formula="x / 255, then (x - mean) / std per channel when normalize")
        return steps
    if extractor.kind in SPECTRAL:
        spec, mel, to_db = extractor.mel.spectrogram, extractor.mel.mel_scale, extractor.to_db
        steps["stft"] = {"n_fft": spec.n_fft, "win_length": spec.win_length, "hop_length": spec.hop_length,
                         "window": "hann (periodic)", "center": spec.center, "pad_mode": spec.pad_mode,
                         "onesided": True, "power": 2.0}
        steps["mel"] = {"n_mels": mel.n_mels, "f_min": mel.f_min, "f_max": mel.f_max, "scale": mel.mel_scale,
                        "norm": mel.norm, "sample_rate": mel.sample_rate}
        steps["db"] = {"formula": "multiplier * log10(max(x, amin)), then max(x, max over the example - top_db)",
                       "multiplier": float(to_db.multiplier), "amin": float(to_db.amin),
                       "top_db": None if to_db.top_db is None else float(to_db.top_db)}
    if extractor.kind == "mfcc":
        steps["mfcc"] = {"n_mfcc": int(extractor.dct.shape[1]), "dct": "type II, ortho, over the mel axis"}
    steps["normalization"] = ("per example: (x - mean) / max(std, 1e-6) over all its values (population std)"
                              if extractor.normalize else None)
    steps["shape_into_model"] = list(extractor.output_shape)
    return steps
