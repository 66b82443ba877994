"""Training from the feature store (data.store): the examples of a split read from disk.

    cfg, auto_values = resolve_auto(cfg, frozen)     # no scan when the run kept its `auto` values
    bundle = build_from_store(cfg, auto_values)      # StoreError when the store does not fit cfg

Nothing is decoded here and nothing per example is kept in memory but the labels array: the
rows of an example are read from its shard when a DataLoader worker asks for it (the store's reader
reads with pread, so the pages stay in the page cache, outside the process's RSS). Names are
read from the store only when someone asks for them (evaluation reports).

Which variant (data.variants) and which window (data.windows) training reads for item i of
epoch e is drawn from (seed, e, i) alone, with its own seeds tag, so a resumed run reads the
same rows whatever the worker count. Evaluation always reads variant 0 from the start.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import torch

from . import auto, seeds
from .features import FeatureExtractor
from .report import DataError, DataReport, Problem
from .store.plan import store_dir


class StoredExamples:
    """One split of the store with the interface of datasets.Examples: `labels`, `raw(index)`,
    `names`, `extractor`. `window`: rows of one data.duration window (windows mode), else None;
    outside training the first window is read (per-window evaluation is windows.py's)."""

    def __init__(self, split, extractor: FeatureExtractor, seed: int, window: Optional[int] = None):
        self.split = split
        self.extractor = extractor
        self.seed = seed
        self.window = window
        self.labels = split.labels  # int32, shared with the split: datasets cast one label at a time
        self.variants = int(split.variants)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        """Where each example comes from: read from the store each time (never kept)."""
        return self.split.names()

    def variant(self, index: int, epoch: Optional[int]) -> int:
        """The variant training reads for `index` in `epoch`: uniform over the original and the
        V variants (0 outside training, and always 0 without variants)."""
        if epoch is None or self.variants == 0:
            return 0
        return int(seeds.numpy_rng(seeds.VARIANT, self.seed, epoch, index).integers(0, self.variants + 1))

    def raw(self, index: int, epoch: Optional[int] = None) -> torch.Tensor:
        """Un-augmented, un-normalised features of example `index` (float32; images uint8).
        `epoch` is given by training only: it picks the variant and the window."""
        variant = self.variant(index, epoch)
        if self.window is not None:
            from . import windows  # only windows mode needs it

            start = 0 if epoch is None else windows.train_start(
                self.split.length(index, variant), self.window, self.seed, epoch, index)
            return windows.read_window(self.split, index, variant, start, self.window, self.extractor.kind,
                                       self.extractor.top_db)  # each window floored at its own maximum
        rows = self.split.raw(index, variant)
        tensor = torch.from_numpy(np.ascontiguousarray(rows))
        return tensor if tensor.dtype == torch.uint8 else tensor.to(torch.float32)


# ----------------------------------------------------------------------------- building
def resolve_auto(cfg, frozen):
    """(cfg with `auto` replaced, AutoValues or None). A run that kept its values in `frozen`
    (RunDir.data_auto) reads them back without scanning the data folder: a resume of a run on
    50,000 files must not list them. Otherwise the training files' headers are read, as without
    a store."""
    if not auto.wanted(cfg):
        return cfg, None
    if frozen is not None:
        try:
            auto.apply_frozen(cfg, frozen)
        except ValueError:
            pass  # missing or damaged: measure (and keep) below
        else:
            return auto.resolve(cfg, [], frozen)
    from .datasets import _resolve_auto  # the in-RAM path's measuring scan, the same rule

    cfg, values, _ = _resolve_auto(cfg, frozen)
    return cfg, values


def open_store(cfg):
    """The store of `cfg` (concrete `auto` values), refusing one prepared for other settings:
    StoreError "store was prepared for other settings: ..." (the engine prepares it again)."""
    from .store import FeatureStore, StoreError, layout, recipe_changes

    store = FeatureStore.open(store_dir(cfg))
    wanted = layout.recipe(cfg)
    if layout.recipe_id(store.recipe) != layout.recipe_id(wanted):  # canonical JSON: a tuple equals a list
        wanted = json.loads(json.dumps(wanted))
        raise StoreError(f"{store_dir(cfg)}: store was prepared for other settings: "
                         + "; ".join(recipe_changes(store.recipe, wanted)))
    return store


def store_report(cfg, store, auto_values=None) -> DataReport:
    """The data report of a store: classes, counts and bad files from its manifest alone."""
    manifest = store.manifest
    report = DataReport(source=cfg.data.source, location=f"feature store {store_dir(cfg)}",
                        classes=list(store.classes), skip_bad_files=cfg.data.skip_bad_files,
                        target=f"stored {store.kind} rows {tuple(store.row_shape)} {store.dtype}",
                        derived=auto_values.lines if auto_values else [],
                        balanced_sampler=cfg.data.balanced_sampler)
    for split, entry in manifest["splits"].items():
        report.counts[split] = [int(c) for c in entry["counts"]]
        report.problems += [Problem(str(path), str(reason)) for path, reason in entry.get("bad", [])]
        if sum(report.counts[split]) == 0:
            report.problems.append(Problem(str(store_dir(cfg)), f"no usable {split} examples in the store",
                                           skippable=False))
    if "train" in report.counts and "val" not in report.counts:
        report.problems.append(Problem(str(store_dir(cfg)), "no validation examples", skippable=False))
    return report


def build_from_store(cfg, auto_values=None, store=None):
    """The run's DataBundle read from its store (cfg with concrete `auto` values; `store`: the
    one open_store(cfg) gave, else opened here). DataError under the same rules as the decode
    pass (bad files vs data.skip_bad_files)."""
    from .datasets import DataBundle, EvalDataset, TrainDataset

    store = store if store is not None else open_store(cfg)
    report = store_report(cfg, store, auto_values)
    if not report.usable:
        raise DataError(report)
    extractor = FeatureExtractor(cfg)
    window = _train_window(cfg)
    examples = {name: StoredExamples(store.split(name), extractor, cfg.seed, window) for name in report.counts}
    shape = extractor.output_shape
    return DataBundle(
        train=TrainDataset(examples["train"], cfg.augment, cfg.seed),
        val=EvalDataset(examples["val"]),
        test=EvalDataset(examples["test"]) if "test" in examples else None,
        classes=list(report.classes), in_chans=shape[0], input_shape=shape,
        class_counts={split: list(counts) for split, counts in report.counts.items()},
        skipped=report.skipped, report=report, data_config=cfg.data, auto=auto_values)


def _train_window(cfg) -> Optional[int]:
    if not cfg.data.windows.enabled:
        return None
    from . import windows

    return windows.window_rows(cfg)
