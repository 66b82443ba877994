"""Base examples -> what the model sees.

Two stages, so that the expensive one can be cached and the cheap one can follow augmentation:
- `raw(base)`: log-mel (dB) / waveform / uint8 image, un-normalised (cached when data.cache is
  on); MFCC features are cached as their log-mel too, so that gain, time shift and frequency
  warping work on the same mel axis for both;
- `finish(x)`: the DCT to MFCC, then per-example standardisation (audio) or ImageNet mean/std
  (images).

Statistics for normalisation are computed with numpy in float64 on one thread, so a feature is
bit-identical whichever process (main or DataLoader worker, with any torch thread count) makes it.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

SPECTRAL = ("mel", "mfcc")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grayscale images: the mean of the RGB statistics (what timm does for 1-channel inputs).
GRAY_MEAN = (sum(IMAGENET_MEAN) / 3,)
GRAY_STD = (sum(IMAGENET_STD) / 3,)
STD_FLOOR = 1e-6  # silent examples: avoid dividing by zero, leave them all zeros


class FeatureExtractor:
    """Feature pipeline of one run (features.kind and the data's rate/size)."""

    def __init__(self, cfg):
        feats, data = cfg.features, cfg.data
        self.kind = feats.kind
        self.normalize = feats.normalize
        self.top_db = feats.top_db
        self.n_samples = int(round(data.duration * data.sample_rate))
        self.image_channels = data.image_channels
        self.image_size = data.image_size
        if self.kind in SPECTRAL:
            self.mel = T.MelSpectrogram(sample_rate=data.sample_rate, n_fft=feats.n_fft,
                                        hop_length=feats.hop_length, n_mels=feats.n_mels,
                                        f_min=feats.f_min, f_max=feats.f_max, power=2.0)
            self.to_db = T.AmplitudeToDB("power", top_db=feats.top_db)
        if self.kind == "mfcc":
            # The composition torchaudio's MFCC uses, built here so that top_db is honoured
            # (torchaudio.transforms.MFCC fixes it at 80 dB).
            self.dct = AF.create_dct(feats.n_mfcc, feats.n_mels, "ortho")  # (n_mels, n_mfcc)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one example as the model sees it: (C, H, W) or (C, T)."""
        if self.kind == "image":
            return (self.image_channels, self.image_size, self.image_size)
        return tuple(self.finish(self.raw(np.zeros(self.n_samples, np.float32))).shape)

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.output_shape)
        return {"mel": "log-mel spectrogram", "mfcc": "MFCC", "waveform": "waveform",
                "image": "image"}[self.kind] + f" of shape {shape}"

    # ------------------------------------------------------------------------- stage 1
    @torch.no_grad()
    def raw(self, base: np.ndarray) -> torch.Tensor:
        """Un-normalised features of one base example (float32; uint8 for images)."""
        if self.kind == "image":
            return torch.from_numpy(np.ascontiguousarray(base))
        wave = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32)).unsqueeze(0)  # (1, T)
        if self.kind == "waveform":
            return wave
        return self.to_db(self.mel(wave)).contiguous()  # (1, n_mels, frames); top_db: relative to its max

    @torch.no_grad()
    def raw_batch(self, bases: list[np.ndarray]) -> torch.Tensor:
        """raw() of several base examples at once, stacked: (N, ...).

        Much faster than one at a time when other processes compete for the cores (fewer
        parallel regions). Each example is still treated on its own: the mel input is
        (N, 1, T), so AmplitudeToDB's top_db is relative to each example's own maximum.
        """
        if self.kind == "image":
            return torch.from_numpy(np.stack(bases))
        waves = torch.from_numpy(np.stack(bases).astype(np.float32, copy=False)).unsqueeze(1)  # (N, 1, T)
        if self.kind == "waveform":
            return waves
        return self.to_db(self.mel(waves)).contiguous()  # (N, 1, n_mels, frames)

    # ------------------------------------------------------------------------- gain
    def apply_gain(self, x: torch.Tensor, gain_db: float) -> torch.Tensor:
        """Features of the same example played `gain_db` louder (x: float raw features).

        Spectral features (log-mel, also for MFCC) get the equivalent shift in the dB domain, which
        is exact up to the -100 dB floor of the dB conversion and saves recomputing the spectrogram.
        """
        if self.kind == "waveform":
            return x * (10.0 ** (gain_db / 20.0))
        if self.kind in SPECTRAL:
            return x + gain_db
        return x

    def silence_frame(self, x: torch.Tensor) -> torch.Tensor:
        """The quietest time step of raw audio features x, shape (..., 1): zero for waveforms, the
        log-mel frame of least mean energy for spectra. Padding and pauses look like it."""
        if self.kind == "waveform":
            return torch.zeros(x.shape[:-1] + (1,), dtype=x.dtype)
        energy = x.mean(dim=-2)  # (C, T)
        quietest = int(torch.argmin(energy.reshape(-1, x.shape[-1]).sum(dim=0)))
        return x[..., quietest:quietest + 1]

    # ------------------------------------------------------------------------- stage 2
    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise float features (images: x holds 0..255 values).

        MFCC: the DCT of the log-mel. Audio with features.normalize: per-example standardisation.
        Images are scaled to [0, 1] and, with features.normalize, standardised with the ImageNet
        mean/std (its grey average for 1 channel), the convention timm models expect.
        """
        if self.kind == "image":
            x = x / 255.0
            if self.normalize:
                mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.image_channels == 3 else (GRAY_MEAN, GRAY_STD)
                x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
            return x.contiguous()
        if self.kind == "mfcc":
            x = torch.matmul(x.transpose(-1, -2), self.dct).transpose(-1, -2)
        if self.normalize:
            values = x.numpy()
            mean = float(values.mean(dtype=np.float64))
            std = max(float(values.std(dtype=np.float64)), STD_FLOOR)
            x = (x - mean) / std
        return x.contiguous()
