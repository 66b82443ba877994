"""One shard computed in a prepare worker: decode, variants, raw features, rows, written to disk.

A bad item (zero bytes, truncated, not audio) becomes an outcome with its reason and the shard
goes on; only a shard that cannot be written (full disk) fails, with layout's StoreError.
Features are computed several examples at a time (FeatureExtractor.raw_batch) while their
lengths agree: far fewer parallel regions than one call per example. A batch holds at most
BATCH clips' worth of samples, so that whole recordings (data.windows) do not make a batch of
64 minute-long spectrograms at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..decode import BadItem, Decoder, read_samples
from ..features import FeatureExtractor
from . import layout

# At most this many clips of data.duration (or images) go into one raw_batch call.
BATCH = 64


class ShardMaker:
    """What a worker keeps from shard to shard: the run's decoder, features and noise bank."""

    def __init__(self, cfg, store_dir: str):
        self.cfg = cfg
        self.paths = layout.StorePaths(store_dir)
        self.decoder = Decoder.from_config(cfg)
        self.extractor = FeatureExtractor(cfg)
        self.kind = cfg.features.kind
        self.dtype = np.dtype(np.uint8 if self.kind == "image" else cfg.data.store_dtype)
        self.windows = cfg.data.windows if cfg.data.windows.enabled else None
        self.batch_size = BATCH * (1 if self.kind == "image" else self.decoder.n_samples)
        self._noise = None  # NoiseBank, loaded with the first variant made in this process

    def make(self, task, step: Callable[[], None]) -> list[dict]:
        """Compute and write one shard; returns each item's outcome (the shard's sidecar items)."""
        outcomes: list[dict] = []
        blocks: list[np.ndarray] = []
        pending: list[np.ndarray] = []  # bases of consecutive ok items, waiting for raw_batch
        for item, key in zip(task.items, task.keys):
            outcome = {"path": key.path, "size": key.size, "mtime_ns": key.mtime_ns}
            try:
                bases, facts = self._bases(item, key, task.variants)
            except BadItem as exc:
                outcome.update(ok=False, problem=str(exc))
            else:
                if pending and not self._fits(pending, bases):
                    blocks += self._rows(pending)
                pending += bases
                outcome.update(ok=True, **facts)
            outcomes.append(outcome)
            step()
        blocks += self._rows(pending)
        sidecar = layout.write_shard(self.paths, task.key, task.split, task.variants, blocks, outcomes, self.dtype)
        return sidecar["items"]  # with each ok item's rows per variant

    def _fits(self, pending: list[np.ndarray], bases: list[np.ndarray]) -> bool:
        """Whether `bases` can join the pending batch: same shape, and not too big together."""
        size = sum(1 if self.kind == "image" else len(b) for b in pending + bases)
        return pending[0].shape == bases[0].shape and size <= self.batch_size

    # ------------------------------------------------------------------------- one item
    def _bases(self, item, key, variants: int) -> tuple[list[np.ndarray], dict]:
        """The item's base waveform (or image) and its variants; facts for the sidecar. Variants
        are drawn from the path of the item's key, never from its name: a CSV row number in the
        name changes when a row is inserted above it, the shard key (and the store's fingerprint)
        does not, and a shard's content must be a function of its key."""
        try:
            if self.windows is not None and self.kind != "image":
                base, facts = self._recording(item)
            else:
                decoded = item.load(self.decoder)
                base = decoded.base
                facts = {"duration": decoded.duration, "rate": decoded.rate,
                         "wh": list(decoded.size) if decoded.size else None}
        except BadItem:
            raise
        except Exception as exc:  # a file no decoder expected (e.g. a header soundfile misreads)
            raise BadItem(f"cannot decode: {type(exc).__name__}: {exc}") from None
        bases = [base]
        if variants:
            from .. import variants as made  # imported only by stores with variants

            try:
                if self._noise is None:
                    self._noise = made.NoiseBank.from_config(self.cfg)
                bases += made.make_variants(base, self.decoder.sample_rate, self.cfg.data.variants,
                                            self._noise, key.path, variants)
            except made.NoiseError as exc:  # a noise file that passed the header check but does not decode
                raise layout.StoreError(f"data.variants.noise_dir: {exc}") from None
        return bases, facts

    def _recording(self, item) -> tuple[np.ndarray, dict]:
        """Windows mode: the whole recording, cut to windows.max_seconds by windows.store_wave."""
        from .. import windows  # imported only by stores of long recordings

        if hasattr(item, "samples"):
            samples, rate = item.samples, item.rate
        else:
            samples, rate = read_samples(Path(item.where))
        mono = self.decoder.mono(samples, rate)
        wave = windows.store_wave(mono, self.decoder, self.windows)
        return wave, {"duration": len(samples) / rate, "rate": rate, "wh": None}

    # ------------------------------------------------------------------------- features
    def _rows(self, pending: list[np.ndarray]) -> list[np.ndarray]:
        """Rows of each pending base, in the store's dtype; empties `pending`."""
        if not pending:
            return []
        if self.windows is not None:  # whole recordings: the top_db floor is each window's, at reading
            from .. import windows

            raws = windows.store_features(self.extractor, pending).numpy()
        else:
            raws = self.extractor.raw_batch(pending).numpy()
        pending.clear()
        return [np.ascontiguousarray(layout.to_rows(raw, self.kind), dtype=self.dtype) for raw in raws]
