"""A finished run as a classifier: its model and weights, its exact preprocessing (the decoder and
feature pipeline of its config, with the `auto` values the run kept), its classes and the
calibration temperature. What evaluate, predict, export and the Python API share.

    clf = load_classifier("checkpoints/birds")          # best.pt; "last" for last.pt
    clf.predict("recording.wav").label                  # a path, a waveform or an image array
    clf.predict_batch(["a.wav", "b.wav"])
    clf.predict("scan.png", tta=True)                   # averaged over the run's TTA transforms

An image is one example. A recording is cut into consecutive windows of the run's clip length
(`data.duration`; the last one padded with silence, as training pads short clips); each window is
classified and the recording's probabilities are the mean of its windows'. A recording no longer
than one window is exactly the example training and evaluation saw. A run with data.windows cuts
the windows its evaluation takes (trainer.data.windows: every data.windows.eval_hop seconds, the
last one ending at the end of the recording), over the whole recording (the store keeps only
the first data.windows.max_seconds); each window's features are computed from its own samples,
which differs from the store's window of the whole recording's spectrogram only in the frames
within n_fft/2 of its edges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from trainer import models
from trainer.config import RunConfig, load_config
from trainer.data.auto import apply_frozen
from trainer.data.decode import Decoder, read_samples
from trainer.data.features import FeatureExtractor
from trainer.data.sources import AUDIO_EXTS, IMAGE_EXTS
from trainer.data.windows import Windows, sample_starts
from trainer.posthoc import calibration
from trainer.posthoc import tta as tta_module
from trainer.run.rundir import RunDir

WEIGHTS = ("best", "last")
Source = Union[str, Path, np.ndarray]


class ClassifierError(Exception):
    """A run that cannot be used as a classifier (no weights yet, damaged files): said to the user."""


@dataclass
class Prediction:
    source: str
    """The file path, or `<array>` for an array."""
    label: str
    prob: float
    """The (calibrated) probability of `label`."""
    probs: dict[str, float]
    """Every class's probability, in the run's class order."""
    windows: list[dict[str, float]] = field(default_factory=list)
    """Per-window probabilities of a recording longer than one window (empty otherwise)."""
    window_seconds: float = 0.0
    """Length of one window of a recording (window i covers i * window_seconds onwards, unless
    `window_starts` says otherwise)."""
    window_starts: list[float] = field(default_factory=list)
    """Where each window starts (seconds) when the windows are not side by side (data.windows)."""

    def to_dict(self, top_k: Optional[int] = None) -> dict:
        """The JSON line of `longhaul predict --json`: path, label, prob, the top-k probs and, for
        a recording of several windows, each window's start and end (seconds), label, prob, probs."""
        out = {"path": self.source, "label": self.label, "prob": self.prob, "probs": _top(self.probs, top_k)}
        if self.windows:
            out["windows"] = [self.window(i, top_k) for i in range(len(self.windows))]
        return out

    def window(self, index: int, top_k: Optional[int] = None) -> dict:
        """Window `index` of a recording: start, end (seconds), label, prob, top-k probs."""
        probs = self.windows[index]
        label = max(probs, key=probs.get)
        start = self.window_starts[index] if self.window_starts else index * self.window_seconds
        return {"start": round(start, 6), "end": round(start + self.window_seconds, 6), "label": label,
                "prob": probs[label], "probs": _top(probs, top_k)}


def _top(probs: dict[str, float], top_k: Optional[int]) -> dict[str, float]:
    return dict(sorted(probs.items(), key=lambda kv: -kv[1])[:top_k])


class Classifier:
    """The model of a run with the run's preprocessing (see the module docstring)."""

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, classes: list[str], temperature: float = 1.0,
                 weights: str = "best", step: Optional[int] = None):
        self.cfg = cfg
        self.model = model.eval()
        self.classes = list(classes)
        self.temperature = float(temperature)
        self.weights = weights
        self.step = step
        self.decoder = Decoder.from_config(cfg)
        self.extractor = FeatureExtractor(cfg)
        self.input_shape = self.extractor.output_shape
        self.image = cfg.features.kind == "image"
        self.channels_last = cfg.model.channels_last and len(self.input_shape) == 3
        self.eval_windows = Windows.from_config(cfg) if cfg.data.windows.enabled and not self.image else None

    # ------------------------------------------------------------------ model
    def inputs(self, base: np.ndarray) -> torch.Tensor:
        """One base example (a window of audio, an image) -> the model's input, as in evaluation."""
        return self.extractor.finish(self.extractor.raw(base).to(torch.float32, copy=True))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of model inputs (float32)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """Softmax of the logits, divided by the run's temperature when `calibrated`."""
        return torch.softmax(logits / (self.temperature if calibrated else 1.0), dim=-1)

    # ------------------------------------------------------------------ sources
    def windows(self, source: Source) -> list[np.ndarray]:
        """The base examples of one source (see the module docstring). BadItem when it cannot be
        read; ValueError for a file type the run does not take."""
        if isinstance(source, np.ndarray):
            return self._array_windows(source)
        path = Path(source)
        suffix = path.suffix.lower()
        if self.image:
            if suffix not in IMAGE_EXTS:
                raise ValueError(f"{path}: not an image this run takes ({'/'.join(IMAGE_EXTS)})")
            return [self.decoder.read_image(path).base]
        if suffix not in AUDIO_EXTS:
            raise ValueError(f"{path}: not an audio file this run takes ({'/'.join(AUDIO_EXTS)})")
        samples, rate = read_samples(path)
        return self._cut(self.decoder.mono(samples, rate))

    def _array_windows(self, array: np.ndarray) -> list[np.ndarray]:
        if self.image:
            if array.ndim not in (2, 3):
                raise ValueError(f"an image array must be (H, W) or (H, W, C), got shape {array.shape}")
            return [self.decoder.image(Image.fromarray(np.asarray(array, dtype=np.uint8))).base]
        if array.ndim != 1:
            raise ValueError(f"a waveform must be 1-D samples at {self.decoder.sample_rate} Hz, got shape {array.shape}")
        return self._cut(self.decoder.mono(np.asarray(array, dtype=np.float32), self.decoder.sample_rate))

    def _cut(self, wave: np.ndarray) -> list[np.ndarray]:
        size = self.decoder.n_samples
        if self.eval_windows is not None:
            starts = sample_starts(len(wave), self.eval_windows)
            return WindowCut([self.decoder.fit_length(wave[s:s + size]) for s in starts],
                             [s / self.decoder.sample_rate for s in starts])
        count = max(1, math.ceil(len(wave) / size))
        return [self.decoder.fit_length(wave[i * size:(i + 1) * size]) for i in range(count)]

    # ------------------------------------------------------------------ prediction
    def predict(self, source: Source, tta: bool = False) -> Prediction:
        """The prediction of one file or array (BadItem / ValueError when it cannot be read);
        with `tta`, averaged over the run's test-time augmentations (trainer.posthoc.tta)."""
        return self.predict_batch([source], tta=tta)[0]

    def predict_batch(self, sources: Sequence[Source], batch_size: int = 32, tta: bool = False) -> list[Prediction]:
        """Predictions of several sources, their windows run through the model in batches."""
        return self.predict_windows(sources, [self.windows(source) for source in sources], batch_size, tta)

    def predict_windows(self, sources: Sequence[Source], windows: Sequence[list[np.ndarray]], batch_size: int = 32,
                        tta: bool = False) -> list[Prediction]:
        """Predictions of sources already cut into their windows (`windows(source)` of each)."""
        probs = self.base_probabilities([base for group in windows for base in group], batch_size, tta=tta)
        out, start = [], 0
        for source, group in zip(sources, windows):
            part = probs[start:start + len(group)]
            start += len(group)
            out.append(self._prediction(source, part, getattr(group, "starts", None)))
        return out

    def base_probabilities(self, bases: Sequence[np.ndarray], batch_size: int = 32, calibrated: bool = True,
                           tta: bool = False) -> torch.Tensor:
        """(N, C) probabilities of base examples (`windows`), in batches; with `tta`, the mean
        over the run's test-time augmentations."""
        if tta:
            return tta_module.tta_probabilities(self, bases, batch_size, calibrated)
        if not bases:
            return torch.empty(0, len(self.classes))
        return torch.cat([self.probabilities(self.logits(torch.stack([self.inputs(b) for b in bases[i:i + batch_size]])),
                                             calibrated) for i in range(0, len(bases), batch_size)])

    def _prediction(self, source: Source, window_probs: torch.Tensor, starts: Optional[list[float]] = None) -> Prediction:
        mean = window_probs.mean(dim=0)
        best = int(mean.argmax())
        name = "<array>" if isinstance(source, np.ndarray) else str(source)
        as_dict = lambda row: {c: float(p) for c, p in zip(self.classes, row.tolist())}  # noqa: E731
        windows = [as_dict(row) for row in window_probs] if len(window_probs) > 1 else []
        seconds = 0.0 if self.image else self.decoder.n_samples / self.decoder.sample_rate
        return Prediction(name, self.classes[best], float(mean[best]), as_dict(mean), windows, seconds,
                          list(starts) if starts and windows else [])


class WindowCut(list):
    """The windows of one recording (base examples) with where each starts, in seconds."""

    def __init__(self, bases: list[np.ndarray], starts: list[float]):
        super().__init__(bases)
        self.starts = starts


# ----------------------------------------------------------------------------- loading
def run_config(run_dir: str | Path) -> RunConfig:
    """The run's resolved config with the `auto` values it kept, and no pretrained file to load
    (the run's own weights replace it)."""
    files = RunDir(run_dir)
    cfg = apply_frozen(load_config(files.config, check_paths=False, check_model=False), files.data_auto)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})})


def load_classifier(run_dir: str | Path, weights: str = "best", calibrated: bool = True) -> Classifier:
    """The run in `run_dir` as a Classifier: `weights` "best" (best.pt) or "last" (last.pt); with
    `calibrated`, the temperature `longhaul evaluate` fitted for those weights (1.0 before)."""
    if weights not in WEIGHTS:
        raise ClassifierError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    files = RunDir(run_dir)
    path = files.best_weights if weights == "best" else files.last_weights
    if not path.exists():
        raise ClassifierError(f"{path} does not exist: the run has no {weights} weights yet (best.pt is written "
                              "at each evaluation that improves, last.pt with each checkpoint)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = run_config(run_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ClassifierError(f"cannot load the run in {files.path}: {exc}") from exc
    classes = list(saved["classes"])
    shape = FeatureExtractor(cfg).output_shape
    model = models.build_model(cfg, len(classes), shape[0], shape)
    model.load_state_dict(saved["model"])
    step = saved.get("step")
    temperature = saved_temperature(files, weights, step) if calibrated else 1.0
    return Classifier(cfg, model, classes, temperature, weights, step)


def saved_temperature(files: RunDir, weights: str, step: Optional[int]) -> float:
    """The temperature calibration.json holds for these weights at this step; 1.0 when there is
    none or it was fitted for other weights (a later best.pt is not calibrated by an older fit)."""
    fit = calibration.saved_fit(files, weights, step)
    return float(fit["temperature"]) if fit is not None else 1.0
