"""Finding examples: one scanner per data source, label resolution, the validation hold-out.

`scan(cfg)` lists every example of every split as a labelled `Item` (see decode.py) without
decoding anything, and collects every problem found on the way: unreadable list files, bad JSON
items or CSV rows, unknown labels, empty class folders.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from . import folds, seeds, synthetic
from .balance import cap_per_class
from .decode import AudioFile, BadItem, ImageFile, InlineWaveform, Item, SyntheticExample
from .report import Problem

if TYPE_CHECKING:
    from trainer.config import RunConfig

AUDIO_EXTS = (".wav", ".flac", ".ogg")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")

RawLabel = Union[int, str]


# ----------------------------------------------------------------------------- scanning
@dataclass
class Scan:
    """Every example found, per split, labelled; plus what was wrong or odd."""

    location: str
    classes: list[str] = field(default_factory=list)
    splits: dict[str, list[Item]] = field(default_factory=dict)
    split_locations: dict[str, str] = field(default_factory=dict)
    """Where each split comes from (folder or file), for messages about a whole split."""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    before_cap: Optional[list[int]] = None
    """Training examples found per class before data.max_per_class cut them (None: no cap)."""


Candidates = dict[str, list[tuple[Item, RawLabel]]]


def scan(cfg: "RunConfig") -> Scan:
    """List and label every example of the configured source (nothing is decoded here); then
    cut the training split to data.max_per_class per class."""
    result = _scan_source(cfg)
    for items in result.splits.values():
        canonical_paths(items)
    if cfg.data.max_per_class is not None and result.splits.get("train"):
        _cap_train(result, cfg.data.max_per_class, cfg.seed)
    if cfg.data.folds.k is not None and result.splits.get("train"):
        _cut_fold(result, cfg)
    return result


def _scan_source(cfg: "RunConfig") -> Scan:
    source = cfg.data.source
    if source == "synthetic":
        return _scan_synthetic(cfg)
    if source in ("audio_folder", "image_folder"):
        root = cfg.resolve_path(cfg.data.root) if cfg.data.root else None
        if root is None or not root.is_dir():
            return Scan(str(root), problems=[Problem(str(root) if root else "data.root",
                                                     "dataset folder not found", skippable=False)])
        item_type = AudioFile if source == "audio_folder" else ImageFile
        result = Scan(str(root))
        candidates = _scan_folders(root, item_type, result)
    else:
        files = {s: cfg.resolve_path(getattr(cfg.data, s)) for s in SPLITS if getattr(cfg.data, s)}
        result = Scan(", ".join(str(p) for p in files.values()) or "data.train")
        if "train" not in files:
            result.problems.append(Problem("data.train", f"required for source {source!r}", skippable=False))
            return result
        reader = _read_json_file if source == "json_waveforms" else _read_csv_file
        candidates = {split: reader(path, cfg, result.problems) for split, path in files.items()}
        result.split_locations = {split: str(path) for split, path in files.items()}
    _label_and_split(cfg, candidates, result)
    return result


def _scan_synthetic(cfg: "RunConfig") -> Scan:
    syn = cfg.data.synthetic
    result = Scan(f"generated, seed {syn.seed}", classes=synthetic.class_names(syn.classes))
    sizes = {"train": syn.train_per_class, "val": syn.val_per_class, "test": syn.test_per_class}
    for split, per_class in sizes.items():
        if per_class:
            result.splits[split] = [
                SyntheticExample(f"synthetic:{split}", f"example {i}", synthetic.label_of(i, syn.classes), split, i)
                for i in range(per_class * syn.classes)]
    return result


def _cap_train(result: Scan, k: int, seed: int) -> None:
    """At most k training examples per class: a subset chosen by cap_per_class from the seed and
    the examples' names (files by path, so a renumbered CSV row keeps its rank), in scan order."""
    items = result.splits["train"]
    names = [item.where if isinstance(item, (AudioFile, ImageFile)) else item.name for item in items]
    labels = [item.label for item in items]
    result.before_cap = [0] * len(result.classes)
    for label in labels:
        result.before_cap[label] += 1
    result.splits["train"] = [items[i] for i in cap_per_class(names, labels, k, seed)]


def _cut_fold(result: Scan, cfg: "RunConfig") -> None:
    """Cross-validation: fold data.folds.index of the training pool validates, the rest trains
    (trainer/data/folds.py). A class with fewer examples than folds is a problem naming it."""
    k, index = cfg.data.folds.k, cfg.data.folds.index
    pool = result.splits["train"]
    labels = [item.label for item in pool]
    small = folds.too_small_classes(labels, k)
    where = result.split_locations.get("train", result.location)
    for label, count in small.items():
        result.problems.append(Problem(where, f"class {result.classes[label]!r} has {count} training example(s), "
                                              f"fewer than data.folds.k = {k}: every fold needs one of each class",
                                       skippable=False))
    if small:
        return
    if result.split_locations.get("val"):
        result.warnings.append(f"the validation split {result.split_locations['val']} is not used: fold "
                               f"{index + 1} of {k} of the training pool validates this run (data.folds)")
    train, held = folds.split_indices(labels, k, index, cfg.seed)
    result.splits["train"], result.splits["val"] = [pool[i] for i in train], [pool[i] for i in held]
    result.split_locations["val"] = f"fold {index + 1} of {k} of {where} (stratified, seed {cfg.seed})"


def canonical_paths(items) -> None:
    """Name each file item by its real folder, in place. The run directory's copy of a config names
    data.root resolved (absolute, no '..', no symlinks): `longhaul prepare` of the original config
    and the run's own build must find the same items under the same names (the same store keys,
    the same data.max_per_class subset), not two. One realpath per folder, not per file."""
    real: dict[str, str] = {}
    for item in items:
        if isinstance(item, SyntheticExample):
            continue  # named, not a file
        folder, name = os.path.split(item.where)
        if folder not in real:
            real[folder] = os.path.realpath(folder)
        item.where = os.path.join(real[folder], name)


# ----------------------------------------------------------------------------- folders
def _scan_folders(root: Path, item_type: type, result: Scan) -> Candidates:
    """ROOT/{train,val,test}/<class>/... or ROOT/<class>/... -> candidates per split."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" in split_dirs:
        for extra in _visible(p for p in root.iterdir() if p.is_dir() and p.name not in SPLITS):
            result.warnings.append(f"ignored folder {extra} (expected only train, val and test in {root})")
    elif split_dirs:
        result.problems.append(Problem(str(root), f"found {', '.join(split_dirs)} but no 'train' folder",
                                       skippable=False))
        return {}
    else:
        split_dirs = {"train": root}
    candidates: Candidates = {}
    result.split_locations = {split: str(folder) for split, folder in split_dirs.items()}
    for split, folder in split_dirs.items():
        candidates[split] = _scan_class_folders(folder, item_type, result)
    return candidates


def _visible(paths) -> list[Path]:
    return sorted(p for p in paths if not p.name.startswith("."))


def _scan_class_folders(folder: Path, item_type: type, result: Scan) -> list[tuple[Item, RawLabel]]:
    """<class>/ subfolders of `folder` (searched recursively; hidden files skipped)."""
    exts = IMAGE_EXTS if item_type is ImageFile else AUDIO_EXTS
    class_dirs = _visible(p for p in folder.iterdir() if p.is_dir())
    loose = _visible(p for p in folder.iterdir() if p.is_file())
    if loose:
        result.warnings.append(f"ignored {len(loose)} file(s) directly in {folder} "
                               f"(examples go in {folder}/<class>/)")
    if not class_dirs:
        result.problems.append(Problem(str(folder), "no class folders (expected <class>/ subfolders)",
                                       skippable=False))
    found: list[tuple[Item, RawLabel]] = []
    for class_dir in class_dirs:
        files, ignored = [], 0
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                continue
            if path.suffix.lower() in exts:
                files.append(path)
            else:
                ignored += 1
        if ignored:
            result.warnings.append(f"ignored {ignored} file(s) in {class_dir} that are not {'/'.join(exts)}")
        if not files:
            result.problems.append(Problem(str(class_dir), f"empty class folder: no {'/'.join(exts)} files"))
        found += [(item_type(str(path)), class_dir.name) for path in files]
    return found


# ----------------------------------------------------------------------------- list files
def _read_json_file(path: Path, cfg, problems: list[Problem]) -> list[tuple[Item, RawLabel]]:
    """Both JSON layouts -> candidates; every bad item becomes a problem naming its index."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot read file: {exc.strerror or exc}"))
        return []
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), f"not valid JSON: {exc}"))
        return []
    where = str(path)
    if isinstance(doc, dict) and "waveforms" in doc:
        rate = _json_rate(doc.get("fs", cfg.data.sample_rate))
        if rate is None:
            problems.append(Problem(where, f"'fs' must be a positive whole number of Hz, found {doc.get('fs')!r}"))
            return []
        waves, labels = doc["waveforms"], doc.get("labels")
        if not isinstance(waves, list) or not isinstance(labels, list):
            problems.append(Problem(where, "'waveforms' and 'labels' must both be lists"))
            return []
        if len(waves) != len(labels):
            problems.append(Problem(where, f"{len(waves)} waveforms but {len(labels)} labels"))
            return []
        entries, unpack = list(zip(waves, labels)), tuple
    elif isinstance(doc, list):
        # The older layout carries no sample rate: its waveforms are at the configured rate.
        entries, unpack, rate = doc, _old_style_entry, cfg.data.sample_rate
    else:
        problems.append(Problem(where, 'expected {"waveforms": [...], "labels": [...], "fs": ...} '
                                       'or a list of {"Waveform": [...], "Labels": ...}, '
                                       f"found a JSON {type(doc).__name__}"))
        return []
    found = []
    for index, entry in enumerate(entries):
        item = InlineWaveform(where, f"item {index}", rate=rate)
        try:
            wave, label = unpack(entry)
            item.samples = _json_samples(wave)
            found.append((item, _raw_label(label)))
        except BadItem as exc:
            problems.append(item.problem(str(exc)))
    return found


def _json_rate(value) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if value > 0 and float(value).is_integer() else None


_MISSING = object()


def _old_style_entry(entry) -> tuple[object, object]:
    """{"Waveform": [...], "Labels": x} -> (waveform, label); a missing key gives _MISSING."""
    if not isinstance(entry, dict):
        raise BadItem(f"expected an object with 'Waveform' and 'Labels', found {type(entry).__name__}")
    wave = next((entry[k] for k in ("Waveform", "waveform") if k in entry), _MISSING)
    label = next((entry[k] for k in ("Labels", "Label", "labels", "label") if k in entry), _MISSING)
    return wave, label


def _json_samples(wave) -> np.ndarray:
    if wave is _MISSING:
        raise BadItem("missing 'Waveform'")
    try:
        samples = np.asarray(wave)
    except ValueError:
        raise BadItem("waveform is not a flat list of numbers (rows of different lengths?)") from None
    if samples.dtype.kind not in "iuf":
        raise BadItem("waveform must be a list of numbers"
                      + (f", found {type(wave).__name__}" if not isinstance(wave, list) else ""))
    if samples.ndim != 1:
        raise BadItem(f"waveform must be a 1-D list of samples, found shape {samples.shape}")
    if samples.size == 0:
        raise BadItem("empty waveform")
    if not np.isfinite(samples).all():
        raise BadItem(f"waveform contains NaN or infinite samples (first at sample {int(np.argmin(np.isfinite(samples)))})")
    return samples.astype(np.float32)


def _raw_label(value) -> RawLabel:
    """A JSON/CSV label -> class index (int) or class name (str)."""
    if value is _MISSING or value is None:
        raise BadItem("missing label")
    if isinstance(value, str):
        if not value.strip():
            raise BadItem("empty label")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise BadItem(f"label must be a class name or a class index, found {value!r}")
    return int(value)


_HEADER_PATH_NAMES = {"path", "file", "filename", "filepath", "file_path"}


def _read_csv_file(path: Path, cfg, problems: list[Problem]) -> list[tuple[Item, RawLabel]]:
    """`path,label` rows (optional header) -> candidates; paths are relative to the CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        problems.append(Problem(str(path), f"cannot read file: {exc.strerror or exc}"))
        return []
    except (UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem(str(path), f"not a readable CSV file: {exc}"))
        return []
    want_image = cfg.features.kind == "image"
    found = []
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if number == 1 and cells[0].lower() in _HEADER_PATH_NAMES:
            continue
        where = f"row {number}"
        if len(cells) != 2:
            problems.append(Problem(str(path), f"{where}: expected 2 columns (path,label), found {len(cells)}"))
            continue
        file_text, label = cells
        if not file_text or not label:
            problems.append(Problem(str(path), f"{where}: missing {'path' if not file_text else 'label'}"))
            continue
        file = Path(file_text).expanduser()
        file = file if file.is_absolute() else path.parent / file
        ext = file.suffix.lower()
        if ext not in AUDIO_EXTS + IMAGE_EXTS:
            problems.append(Problem(str(path), f"{where}: {file_text}: unsupported file type "
                                               f"(audio: {'/'.join(AUDIO_EXTS)}, images: {'/'.join(IMAGE_EXTS)})"))
            continue
        if (ext in IMAGE_EXTS) != want_image:
            problems.append(Problem(str(path), f"{where}: {file_text} is {'an image' if ext in IMAGE_EXTS else 'audio'}"
                                               f" but features.kind is {cfg.features.kind!r}"))
            continue
        if not file.is_file():
            problems.append(Problem(str(path), f"{where}: file not found: {file}"))
            continue
        item_type = ImageFile if want_image else AudioFile
        found.append((item_type(str(file), f"{path.name} {where}"), label))
    return found


# ----------------------------------------------------------------------------- labels
def natural_sorted(names) -> list[str]:
    """Sorted names; numerically when every name is a whole number ('2' before '10')."""
    names = list(names)
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _label_and_split(cfg, candidates: Candidates, result: Scan) -> None:
    """Resolve raw labels to class indices, then hold out a validation split if there is none."""
    configured = cfg.data.classes
    train_labels = [label for _, label in candidates.get("train", [])]
    if configured:
        dupes = sorted({c for c in configured if configured.count(c) > 1})
        if dupes:
            result.problems.append(Problem("data.classes", f"repeated class names {dupes}", skippable=False))
        classes, numbers_are_indices = list(configured), True
    elif train_labels and all(isinstance(label, int) for label in train_labels):
        classes = [str(i) for i in range(max(max(train_labels), 0) + 1)]
        numbers_are_indices = True
    else:
        classes = natural_sorted({label for label in train_labels if isinstance(label, str)})
        numbers_are_indices = False
    result.classes = classes
    index = {name: i for i, name in enumerate(classes)}
    for split, pairs in candidates.items():
        kept = []
        for item, label in pairs:
            reason = _label_problem(label, split, index, numbers_are_indices, bool(configured))
            if reason:
                result.problems.append(item.problem(reason))
                continue
            item.label = label if isinstance(label, int) else index[label]
            kept.append(item)
        result.splits[split] = kept
    if "val" not in candidates and "train" in candidates and cfg.data.folds.k is None:  # folds validate instead
        result.splits["train"], result.splits["val"] = _hold_out(result.splits["train"], cfg, result)
        result.split_locations["val"] = f"held out from {result.split_locations['train']}"


def _label_problem(label: RawLabel, split: str, index: dict[str, int], numbers_are_indices: bool,
                   configured: bool) -> Optional[str]:
    names = ", ".join(index) if len(index) <= 20 else f"{len(index)} classes"
    if isinstance(label, int):
        if not numbers_are_indices:
            return (f"label {label} is a number but the training labels are names ({names}); "
                    "list the class names in data.classes to use numbers as indices")
        if not 0 <= label < len(index):
            return f"label {label} is not a class index 0..{len(index) - 1}"
        return None
    if label in index:
        return None
    if configured:
        return f"unknown label {label!r} (not in data.classes: {names})"
    if split == "train":
        return f"label {label!r} is a name but other training labels are numbers"
    return f"unknown label {label!r}: no training example has it (classes: {names})"


def _hold_out(items: list[Item], cfg, result: Scan) -> tuple[list[Item], list[Item]]:
    """Stratified validation split of `val_fraction` of each class, drawn from cfg.seed."""
    fraction = cfg.data.val_fraction
    if fraction <= 0:
        result.problems.append(Problem("data.val_fraction", "the data has no validation split and "
                                       "val_fraction is 0; give a validation set or a fraction > 0",
                                       skippable=False))
        return items, []
    rng = seeds.numpy_rng(seeds.VAL_SPLIT, cfg.seed)
    held: set[int] = set()
    for label in range(len(result.classes)):
        members = [i for i, item in enumerate(items) if item.label == label]
        if len(members) < 2:
            if members:
                result.warnings.append(f"class {result.classes[label]!r} has only 1 example: "
                                       "none held out for validation")
            continue
        k = min(max(1, int(round(len(members) * fraction))), len(members) - 1)
        held.update(members[j] for j in rng.permutation(len(members))[:k])
    result.warnings.append(f"no validation split given: held out {len(held)} of {len(items)} training "
                           f"examples (val_fraction {fraction}, stratified, seed {cfg.seed})")
    return ([item for i, item in enumerate(items) if i not in held],
            [item for i, item in enumerate(items) if i in held])
