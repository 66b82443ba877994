"""build_datasets and check_data: scan the source, decode and check every example, report.

Both decode every example once up front, so that a corrupt file stops the run (or is skipped)
before training starts rather than days into it. With data.cache on, the un-augmented features
computed during that pass are kept in one tensor per split; DataLoader workers get their own copy
(shared copy-on-write after fork), so nothing is written to shared state. With data.cache off
the pass only checks, and examples are decoded again whenever they are used. Synthetic data
cannot be corrupt, so without the cache it is not generated up front.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.data import Dataset

from . import auto, seeds
from .augment import augment_example, mask_warnings, no_effect_warnings
from .features import SPECTRAL, FeatureExtractor
from .report import SHORT_CLIP_SHARE, SHORT_LISTED, DataError, DataReport, Problem, SplitStats
from .decode import BadItem, Decoder, Item
from .sources import scan
from .report import DECODING  # progress of the decode pass (check-data / train print it)

FEATURE_CHUNK = 64  # examples per feature computation while filling the cache
# Warn when data.sample_rate is more than this times the training files' most common rate, and
# when padding is more than this share of the training examples on average.
UPSAMPLE_WARN = 1.25
PADDING_WARN = 0.5


class Examples:
    """The usable examples of one split and, when cached, their raw features (N, ...)."""

    def __init__(self, items: list[Item], decoder: Decoder, extractor: FeatureExtractor,
                 cache: Optional[torch.Tensor]):
        self.items = items
        self.labels = [item.label for item in items]
        self.decoder = decoder
        self.extractor = extractor
        self.cache = cache

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    def raw(self, index: int, epoch: Optional[int] = None) -> torch.Tensor:
        """Un-augmented, un-normalised features of example `index` (do not modify in place).
        `epoch` (training passes it) matters only to a store's examples (variants, windows)."""
        if self.cache is not None:
            return self.cache[index]
        item = self.items[index]
        try:
            return self.extractor.raw(item.load(self.decoder).base)
        except BadItem as exc:  # the file changed after the check at build time
            raise DataError(f"{item.name}: {exc}") from None


class SplitDataset(Dataset):
    """What every split shares: its examples, their labels and where each comes from."""

    def __init__(self, examples: Examples):
        self.examples = examples

    @property
    def labels(self) -> list[int]:
        return self.examples.labels

    @property
    def names(self) -> list[str]:
        """Where each example comes from (file path, JSON item, synthetic index)."""
        return self.examples.names

    def __len__(self) -> int:
        return len(self.examples)


class TrainDataset(SplitDataset):
    """Training split. Items are addressed by (epoch, index) and augmented from (seed, epoch, index)."""

    needs_epoch_sampler = True  # make_loader refuses to iterate it with plain integer indices

    def __init__(self, examples: Examples, augment, seed: int):
        super().__init__(examples)
        self.augment = augment
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        try:
            epoch, index = key
        except (TypeError, ValueError):
            raise TypeError(f"training examples are addressed by (epoch, index), got {key!r}; "
                            "draw them with an EpochSampler") from None
        gen = seeds.torch_generator(seeds.AUGMENT, self.seed, epoch, index)
        x = augment_example(self.examples.raw(index, epoch), self.examples.extractor, self.augment, gen)
        return x, int(self.examples.labels[index])


class EvalDataset(SplitDataset):
    """Validation or test split: items addressed by index, never augmented."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raw = self.examples.raw(index).to(torch.float32, copy=True)
        return self.examples.extractor.finish(raw), int(self.examples.labels[index])


@dataclass
class DataBundle:
    """Everything the engine needs from the data layer."""

    train: TrainDataset
    val: EvalDataset
    test: Optional[EvalDataset]
    classes: list[str]
    in_chans: int
    input_shape: tuple[int, ...]
    """(C, H, W) for spectrograms and images, (C, T) for waveforms."""
    class_counts: dict[str, list[int]]
    """Examples per class for each split present ('train', 'val', maybe 'test')."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of the bad items left out because of data.skip_bad_files."""
    report: Optional[DataReport] = None
    data_config: object = None
    """The run's DataConfig with `auto` values replaced by what they became."""
    auto: Optional[auto.AutoValues] = None
    """What data.sample_rate/duration `auto` became and why (None: nothing was auto)."""


def build_datasets(cfg, frozen=None) -> DataBundle:
    """Datasets of the run described by `cfg` (a RunConfig); with data.store, read from the
    store (stored.build_from_store: StoreError when it is missing or made for other settings).

    Raises DataError, whose message is the full data report, when the data has problems
    (every one of them is listed), unless they are all bad items and data.skip_bad_files is on.
    `frozen`: the run directory's RunDir.data_auto, which keeps what `auto` settings became for
    every later build of the same run (written on the first).
    """
    if cfg.data.store is not None:  # read from the store: nothing is scanned or decoded
        from .stored import build_from_store, resolve_auto

        return build_from_store(*resolve_auto(cfg, frozen))
    cfg, auto_values, found = _resolve_auto(cfg, frozen)
    report, examples = _examine(cfg, keep_features=cfg.data.cache, found=found, auto_values=auto_values)
    if not report.usable:
        raise DataError(report)
    shape = examples["train"].extractor.output_shape
    return DataBundle(
        train=TrainDataset(examples["train"], cfg.augment, cfg.seed),
        val=EvalDataset(examples["val"]),
        test=EvalDataset(examples["test"]) if "test" in examples else None,
        classes=list(report.classes),
        in_chans=shape[0],
        input_shape=shape,
        class_counts={split: list(counts) for split, counts in report.counts.items()},
        skipped=report.skipped,
        report=report,
        data_config=cfg.data,
        auto=auto_values,
    )


def check_data(cfg) -> DataReport:
    """Decode every example of the configured data and report counts, statistics and problems.
    With data.store, what is known of unchanged files comes from the store's index (indexed.py)."""
    cfg, auto_values, found = _resolve_auto(cfg, None)
    if cfg.data.store is not None:  # outcomes come from the store's index; only new files are decoded
        from .indexed import IndexedCheck

        with IndexedCheck.open(cfg, found.classes) as check:
            report, _ = _examine(cfg, keep_features=False, found=found, auto_values=auto_values, check_split=check)
        report.index = check.describe()
        return report
    report, _ = _examine(cfg, keep_features=False, found=found, auto_values=auto_values)
    return report


def _resolve_auto(cfg, frozen):
    """(cfg with `auto` replaced, what it became, the scan) - the scan is done once either way."""
    if not auto.wanted(cfg):
        return cfg, None, scan(cfg)
    found = scan(auto.provisional(cfg))
    cfg, values = auto.resolve(cfg, found.splits.get("train", []), frozen)
    return cfg, values, found


# ----------------------------------------------------------------------------- the pass
def _examine(cfg, keep_features: bool, found=None, auto_values=None,
             check_split=None) -> tuple[DataReport, dict[str, Examples]]:
    """The decode pass; `check_split` (indexed.IndexedCheck) replaces it when nothing is kept."""
    found = found if found is not None else scan(cfg)
    decoder = Decoder.from_config(cfg)
    settings = _settings_problems(cfg, decoder)
    extractor = None if settings else FeatureExtractor(cfg)
    report = DataReport(
        source=cfg.data.source, location=found.location, classes=found.classes,
        problems=found.problems + settings, warnings=found.warnings + no_effect_warnings(cfg),
        target=decoder.describe(cfg.features.kind == "image")
        + (f" -> {extractor.describe()}" if extractor else ""),
        skip_bad_files=cfg.data.skip_bad_files, derived=auto_values.lines if auto_values else [],
        before_cap=found.before_cap, balanced_sampler=cfg.data.balanced_sampler)
    if extractor is not None:
        report.warnings += mask_warnings(cfg, extractor.output_shape)
    examples: dict[str, Examples] = {}
    synthetic = cfg.data.source == "synthetic"
    DECODING.start(sum(len(items) for items in found.splits.values()))
    for split, items in found.splits.items():
        cache_features = keep_features and extractor is not None
        if synthetic and not cache_features:
            kept, cache = items, None
        elif check_split is not None and not cache_features:
            kept, cache, report.stats[split] = check_split(split, items, decoder, report.problems)
        else:
            kept, cache, report.stats[split] = _decode_split(
                items, decoder, extractor if cache_features else None, report.problems)
        examples[split] = Examples(kept, decoder, extractor, cache)
        report.counts[split] = [0] * len(found.classes)
        for item in kept:
            report.counts[split][item.label] += 1
    _emptiness(found, report)
    _short_clip_warnings(cfg, report)
    _rate_and_padding_warnings(cfg, report)
    return report, examples


def _decode_split(items: list[Item], decoder: Decoder, extractor: Optional[FeatureExtractor],
                  problems: list[Problem]) -> tuple[list[Item], Optional[torch.Tensor], SplitStats]:
    """Decode every item; bad ones become problems. With an extractor, also stack raw features."""
    kept: list[Item] = []
    stats = SplitStats()
    cache: Optional[torch.Tensor] = None
    pending: list = []  # decoded bases whose features are not computed yet

    def flush() -> None:
        nonlocal cache
        if not pending:
            return
        raws = extractor.raw_batch(pending)
        if cache is None:  # one preallocated tensor: no list of tensors plus a stacked copy
            cache = torch.empty((len(items),) + tuple(raws.shape[1:]), dtype=raws.dtype)
        cache[len(kept) - len(pending):len(kept)] = raws
        pending.clear()

    for item in items:
        DECODING.step()
        try:
            decoded = item.load(decoder)
        except BadItem as exc:
            problems.append(item.problem(str(exc)))
            continue
        kept.append(item)
        if extractor is not None:
            pending.append(decoded.base)
            if len(pending) == FEATURE_CHUNK:
                flush()
        stats.count(item.name, decoded.duration, decoded.rate, decoded.size, decoder.sample_rate, decoder.n_samples)
    if extractor is not None:
        flush()
    if cache is not None and len(kept) < len(cache):
        cache = cache[:len(kept)].clone()
    return kept, cache, stats


def _settings_problems(cfg, decoder: Decoder) -> list[Problem]:
    """Feature settings that cannot work with this data (checked before building transforms)."""
    feats = cfg.features
    problems = []
    if feats.kind == "mfcc" and feats.n_mfcc > feats.n_mels:
        problems.append(Problem("features.n_mfcc", f"must be <= features.n_mels ({feats.n_mels}), "
                                                   f"found {feats.n_mfcc}", skippable=False))
    if feats.kind in SPECTRAL and feats.f_max is not None and feats.f_max > decoder.sample_rate / 2:
        problems.append(Problem("features.f_max", f"must be <= sample_rate/2 = {decoder.sample_rate / 2:g} Hz "
                                                  f"(data.sample_rate {cfg.data.sample_rate}), found {feats.f_max:g}",
                                skippable=False))
    if feats.kind in SPECTRAL and feats.n_fft // 2 >= decoder.n_samples:
        problems.append(Problem("features.n_fft", f"{feats.n_fft} is too long for clips of "
                                                   f"{decoder.n_samples} samples (data.duration * data.sample_rate)",
                                skippable=False))
    return problems


def _short_clip_warnings(cfg, report: DataReport) -> None:
    """Clips far shorter than data.duration train on padding: say which (the first few)."""
    for split, st in report.stats.items():
        if not st.short:
            continue
        named = ", ".join(f"{name} ({seconds:.4g} s)" for name, seconds in st.short[:SHORT_LISTED])
        more = f" and {len(st.short) - SHORT_LISTED} more" if len(st.short) > SHORT_LISTED else ""
        report.warnings.append(
            f"{len(st.short)} {split} clip(s) shorter than {SHORT_CLIP_SHARE:.0%} of data.duration "
            f"({cfg.data.duration:g} s), mostly padding: {named}{more}")


def _rate_and_padding_warnings(cfg, report: DataReport) -> None:
    """Settings that waste the data: a rate far above the files' own, clips mostly padding."""
    st = report.stats.get("train")
    if st is None or not st.durations:
        return
    native, count = auto.most_common_rate(st.sample_rates)
    if cfg.data.sample_rate > UPSAMPLE_WARN * native:
        share = "all" if count == len(st.durations) else f"{count} of"
        report.warnings.append(
            f"data.sample_rate {cfg.data.sample_rate} Hz is far above the files' native {native} Hz "
            f"({share} {len(st.durations)} train files): upsampling adds no information, only cost "
            "(data.sample_rate: auto uses the native rate)")
    seconds = cfg.data.duration
    kept = sum(min(d, seconds) for d in st.durations)
    padding = 1.0 - kept / (seconds * len(st.durations))
    if padding > PADDING_WARN:
        report.warnings.append(
            f"on average {padding:.0%} of each training example is padding: clips are "
            f"{sum(st.durations) / len(st.durations):.2f} s long on average, data.duration is {seconds:g} s "
            "(data.duration: auto uses a high percentile of the clip lengths)")


def _emptiness(found, report: DataReport) -> None:
    """Fatal problems for splits left empty; warnings for classes missing from a split."""
    for split, counts in report.counts.items():
        if sum(counts) == 0:
            report.problems.append(Problem(found.split_locations.get(split, found.location),
                                           f"no usable {split} examples", skippable=False))
            continue
        for name, count in zip(report.classes, counts):
            if count == 0:
                report.warnings.append(f"class {name!r} has no training examples" if split == "train"
                                       else f"class {name!r} is missing from the {split} split")
    if "train" in report.counts and "val" not in report.counts:
        report.problems.append(Problem(found.location, "no validation examples", skippable=False))
