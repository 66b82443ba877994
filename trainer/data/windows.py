"""Windows of long recordings (data.windows): what a window is, where training and evaluation
take theirs, and how evaluation turns window probabilities into one per recording.

A window is data.duration seconds, the clip every example of a run has: `window_rows(cfg)` rows of
the store (feature frames for spectra, samples for waveforms), exactly what FeatureExtractor gives
a data.duration clip. The store holds the first data.windows.max_seconds of each recording
(`store_wave`), its features computed once over the whole of it; a window is a run of consecutive
rows of those, one contiguous read.

- Training: a window per (seed, epoch, index) from anywhere in the recording (`train_start`).
- Evaluation: fixed windows (`eval_starts`: every data.windows.eval_hop seconds, the last one
  ending at the end), one dataset item per (recording, window) (`WindowedEvalDataset`); the
  recording's probabilities are the mean of its windows' (`recording_probabilities`), as predict
  does (trainer.posthoc.classifier cuts with the same `Windows`).

Features of a window cut from the whole recording's spectrogram against those of the same
stretch of waveform on its own (what predict computes: it reads files, not the store):
- the STFT of a lone clip reflects its edges, so the frames within n_fft/2 samples of a window's
  edges differ (0.5 dB on average on a 60 s recording at 22050 Hz, n_fft 1024, hop 256, 5 s
  windows: 3 of 431 frames at each edge); the rest is the same;
- AmplitudeToDB's top_db floor is relative to an example's loudest value. Floored over the whole
  recording, a window far quieter than the recording's loudest moment loses what a clip of it
  keeps: 11.6 dB mean difference inside the windows (0.18 of the normalised features' std) on a
  recording whose background lies 100 dB under its loudest burst. So the store keeps spectra
  unfloored (`store_features`) and every window read gets the floor of its own maximum
  (`window_floor`, in `read_window`): then 0.003 std, and only frames near the edges differ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

from trainer.metrics import classification_metrics

from . import seeds
from .features import SPECTRAL


# ----------------------------------------------------------------------------- what a window is
@dataclass(frozen=True)
class Windows:
    """The window geometry of a run, in store rows."""

    rows: int
    """Rows of one window (frames of a data.duration clip, or its samples)."""
    hop: int
    """Rows between the starts of evaluation windows."""
    row_samples: int
    """Waveform samples per row: features.hop_length for spectra, 1 for waveforms."""

    @classmethod
    def from_config(cls, cfg) -> "Windows":
        """The run's windows: data.duration long, evaluation hop data.windows.eval_hop (null:
        data.duration, windows side by side), rounded to whole rows."""
        data = cfg.data
        row_samples = cfg.features.hop_length if cfg.features.kind in SPECTRAL else 1
        hop_seconds = data.windows.eval_hop if data.windows.eval_hop is not None else data.duration
        hop = max(1, round(hop_seconds * data.sample_rate / row_samples))
        return cls(rows=window_rows(cfg), hop=hop, row_samples=row_samples)


def window_rows(cfg) -> int:
    """Rows of one data.duration window: the frames MelSpectrogram (center=True) gives a clip of
    n_samples (n_samples // hop_length + 1), or n_samples for waveforms. Images have no windows."""
    kind = cfg.features.kind
    if kind == "image":
        raise ValueError("images have no windows (data.windows is for recordings)")
    n_samples = int(round(cfg.data.duration * cfg.data.sample_rate))
    return n_samples // cfg.features.hop_length + 1 if kind in SPECTRAL else n_samples


def store_wave(mono: np.ndarray, decoder, wcfg) -> np.ndarray:
    """What the store keeps of a recording (mono at the run's rate): its first wcfg.max_seconds,
    zero-padded at the end to at least decoder.n_samples (one window, as training pads short clips)."""
    keep = int(round(wcfg.max_seconds * decoder.sample_rate))
    wave = np.asarray(mono[:keep], dtype=np.float32)
    if len(wave) < decoder.n_samples:
        wave = np.concatenate([wave, np.zeros(decoder.n_samples - len(wave), np.float32)])
    return np.ascontiguousarray(wave)


@torch.no_grad()
def store_features(extractor, waves: Sequence[np.ndarray]) -> torch.Tensor:
    """Raw features of whole recordings (`store_wave`s of equal length) for the store in windows
    mode: extractor.raw_batch, except that spectra are kept without the top_db floor. The floor
    is relative to an example's loudest frame; applied here it would be the whole recording's,
    and a quiet window would lose what a clip of it keeps (up to 30 dB on a recording with
    quiet stretches, see tests/test_windows.py). `window_floor` applies it to each window read."""
    if extractor.kind not in SPECTRAL:
        return extractor.raw_batch(list(waves))
    batch = torch.from_numpy(np.stack(waves).astype(np.float32, copy=False)).unsqueeze(1)  # (N, 1, T)
    to_db = extractor.to_db
    return AF.amplitude_to_DB(extractor.mel(batch), to_db.multiplier, to_db.amin, to_db.db_multiplier,
                              None).contiguous()  # (N, 1, n_mels, frames)


def window_floor(x: torch.Tensor, top_db: Optional[float]) -> torch.Tensor:
    """The top_db floor of AmplitudeToDB on one window (C, F, T) of stored spectra, relative to
    the window's own loudest value as for a clip on its own. Idempotent, so it is also right
    on features that were floored already (relative to a louder maximum)."""
    if top_db is None:
        return x
    return torch.maximum(x, x.amax() - top_db)


def read_window(split, item: int, variant: int, start: int, rows: int, kind: str,
                top_db: Optional[float]) -> torch.Tensor:
    """Raw features (float32) of the window of `rows` rows from `start` of a stored recording
    (a StoreSplit entry), as a clip of that stretch has them: spectra get the top_db floor of the
    window (`window_floor`). What training (with `train_start`) and evaluation feed `finish`."""
    raw = split.raw(item, variant, start, rows)
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    return window_floor(x, top_db) if kind in SPECTRAL else x


def train_start(length: int, window: int, seed: int, epoch: int, index: int) -> int:
    """First row of the training window of example `index` in `epoch`: uniform over
    [0, length - window], a pure function of (seed, epoch, index); 0 when length <= window."""
    if length <= window:
        return 0
    return int(seeds.numpy_rng(seeds.WINDOW, seed, epoch, index).integers(0, length - window + 1))


def eval_starts(length: int, window: int, hop: int) -> list[int]:
    """First rows of the evaluation windows of a recording of `length` rows: 0, hop, 2 hop, ...
    while the window fits, then one ending at the end when the hop does not land there, so that
    every row is in some window. [0] when length <= window."""
    if hop < 1:
        raise ValueError(f"hop must be >= 1 row, got {hop}")
    if length <= window:
        return [0]
    last = length - window
    starts = list(range(0, last + 1, hop))
    if starts[-1] != last:
        starts.append(last)
    return starts


def sample_starts(n_samples: int, windows: Windows) -> list[int]:
    """eval_starts of a waveform of `n_samples` samples, in samples: the windows evaluation takes
    from the store's rows, so that predict classifies the same stretches. For spectra a recording
    of n samples has n // hop_length + 1 frames, and frame j is centred on sample j * hop_length."""
    length = n_samples // windows.row_samples + 1 if windows.row_samples > 1 else n_samples
    return [start * windows.row_samples for start in eval_starts(length, windows.rows, windows.hop)]


# ----------------------------------------------------------------------------- evaluation
class WindowedEvalDataset(Dataset):
    """A validation or test split of long recordings from the store: one item per (recording,
    window), never augmented. `recording[k]` is the recording of item k (indices grouped, in order);
    `labels` are per item, `recording_labels` per recording."""

    def __init__(self, split, extractor, windows: Windows, top_db: Optional[float] = None):
        self.split = split  # StoreSplit (trainer.data.store.reader): rows read on demand
        self.extractor = extractor
        self.windows = windows
        self.top_db = top_db  # features.top_db, applied per window (window_floor)
        lengths = [split.length(i) for i in range(len(split))]
        starts = [eval_starts(n, windows.rows, windows.hop) for n in lengths]
        short = [i for i, n in enumerate(lengths) if n < windows.rows]
        if short:  # the store pads every recording to one window; a shorter one is not ours
            raise ValueError(f"store split has recordings shorter than one window ({windows.rows} rows): "
                             f"items {short[:5]}")
        self.recording = np.repeat(np.arange(len(lengths), dtype=np.int64), [len(s) for s in starts])
        self.start = np.asarray([s for group in starts for s in group], dtype=np.int64)
        self.recording_labels = np.asarray(split.labels, dtype=np.int64)
        self.labels = self.recording_labels[self.recording]  # an array: one int per window

    @classmethod
    def of_run(cls, split, extractor, cfg) -> "WindowedEvalDataset":
        """The evaluation windows of `split` for the run `cfg` (data.windows.enabled)."""
        return cls(split, extractor, Windows.from_config(cfg), cfg.features.top_db)

    @property
    def recordings(self) -> int:
        return len(self.recording_labels)

    @property
    def names(self) -> list[str]:
        """Where each recording comes from (one name per recording, not per window)."""
        return self.split.names()

    def __len__(self) -> int:
        return len(self.recording)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item, start = int(self.recording[index]), int(self.start[index])
        x = read_window(self.split, item, 0, start, self.windows.rows, self.extractor.kind, self.top_db)
        return self.extractor.finish(x), int(self.labels[index])


def recording_probabilities(window_probs: np.ndarray, recording: np.ndarray, recordings: int) -> np.ndarray:
    """(recordings, K) mean of the window probabilities (N, K) of each recording; `recording` (N,)
    names each window's recording. Every recording must have at least one window."""
    window_probs = np.asarray(window_probs, dtype=np.float64)
    sums = np.zeros((recordings, window_probs.shape[1]), dtype=np.float64)
    np.add.at(sums, np.asarray(recording), window_probs)
    counts = np.bincount(recording, minlength=recordings)
    if (counts == 0).any():
        raise ValueError(f"recordings without windows: {np.flatnonzero(counts == 0)[:5].tolist()}")
    return sums / counts[:, None]


def recording_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log of each recording's (averaged) probability of its true class."""
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(labels) else math.nan


WINDOW_KEYS = ("val_loss", "val_accuracy", "val_f1_macro", "val_auc_roc")
"""The per-window scalars reported beside the per-recording headline, as val_window_*."""


def windowed_metrics(window_probs: np.ndarray, window_loss: float, dataset: WindowedEvalDataset,
                     classes: Sequence[str]) -> dict:
    """The engine's evaluation of a windowed split: the per-recording metrics as the headline
    (val_loss, val_accuracy, ..., confusion: what the monitor and early stopping see), the
    per-window scalars beside them (val_window_loss, val_window_accuracy, ...) and val_windows (the
    number of windows)."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    per_window = classification_metrics(labels, window_probs, list(classes), loss=window_loss)
    probs = recording_probabilities(window_probs, dataset.recording, dataset.recordings)
    out = classification_metrics(dataset.recording_labels, probs, list(classes),
                     loss=recording_loss(probs, dataset.recording_labels))
    for key in WINDOW_KEYS:
        if key in per_window:
            out["val_window_" + key.removeprefix("val_")] = per_window[key]
    out["val_windows"] = len(labels)
    return out


def is_windowed(dataset: Optional[object]) -> bool:
    return isinstance(dataset, WindowedEvalDataset)


def evaluation_view(dataset, cfg, data_config=None):
    """What evaluation reads of a validation/test dataset: with data.windows on and a split read
    from a store (an EvalDataset over StoredExamples), its (recording, window) items; otherwise
    `dataset` itself. `data_config`: the DataConfig with `auto` values resolved (DataBundle's)."""
    if dataset is None or is_windowed(dataset) or not cfg.data.windows.enabled:
        return dataset
    examples = getattr(dataset, "examples", None)
    split = getattr(examples, "split", None)
    if split is None or examples.extractor.kind == "image":
        return dataset
    if data_config is not None:
        cfg = cfg.model_copy(update={"data": data_config})
    return WindowedEvalDataset.of_run(split, examples.extractor, cfg)
