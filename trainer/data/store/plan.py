"""What a store should hold for a config, found without decoding: scan, stat, shards; and whether
the store on disk already holds exactly that.

The plan is all a re-run on unchanged data pays for (seconds at 50,000 files): one scan of the
source, one stat per file, one hash per path, one shard key per shard; then the manifest's shard
keys are compared with the plan's. No shard file and no audio header is read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..report import DataError, DataReport, Problem
from . import layout
from .layout import ItemKey, StoreError, StorePaths
from .pool import ShardTask

SPLIT_ORDER = ("train", "val", "test")
LINE_BREAK = "a file name with a line break cannot be stored (one name a line in the store): rename the file"


@dataclass
class Plan:
    """The store a config asks for: recipe, classes, and each split's shards (in scan order)."""

    paths: StorePaths
    recipe: dict
    recipe_id: str
    classes: list[str]
    shards: dict[str, list[ShardTask]] = field(default_factory=dict)
    report: Optional[DataReport] = None
    """The scan's counts, problems and warnings (bad files found by decoding are added later)."""
    left_out: dict[str, list[Problem]] = field(default_factory=dict)
    """Per split, the bad files found without decoding (a name with a line break): in no shard,
    listed with the manifest's bad files."""

    @property
    def items(self) -> int:
        return sum(len(task.items) for tasks in self.shards.values() for task in tasks)

    def keys(self, split: str) -> list[str]:
        return [task.key for task in self.shards.get(split, [])]


def store_dir(cfg) -> Path:
    """The configured store directory (relative paths relative to the config file)."""
    if not cfg.data.store:
        raise StoreError("data.store is not set: name the feature store's directory in the config "
                         "(or with --set data.store=DIR)")
    return Path(cfg.resolve_path(cfg.data.store)).absolute()


def variants_of(cfg, split: str) -> int:
    """Variants stored per item of `split`: only training audio gets them."""
    if split != "train" or cfg.features.kind == "image":
        return 0
    return cfg.data.variants.count


def make_plan(cfg) -> Plan:
    """Scan the source, stat every file and cut each split into shards. DataError (the report) when
    the source itself is unusable (no folder, an empty split, a setting that cannot work)."""
    from ..augment import no_effect_warnings
    from ..datasets import _settings_problems
    from ..decode import Decoder
    from ..sources import scan

    found = scan(cfg)
    report = DataReport(source=cfg.data.source, location=found.location, classes=found.classes,
                        problems=found.problems + _settings_problems(cfg, Decoder.from_config(cfg)),
                        warnings=found.warnings + no_effect_warnings(cfg), skip_bad_files=cfg.data.skip_bad_files,
                        before_cap=found.before_cap, balanced_sampler=cfg.data.balanced_sampler)
    if any(not p.skippable for p in report.problems):
        raise DataError(report)
    recipe = layout.recipe(cfg)
    plan = Plan(StorePaths(store_dir(cfg)), recipe, layout.recipe_id(recipe), list(found.classes), report=report)
    for split in sorted(found.splits, key=_split_order):
        items, plan.left_out[split] = _storable(found.splits[split])
        keys = [item_key(item) for item in items]
        variants = variants_of(cfg, split)
        plan.shards[split] = [
            ShardTask(split, layout.shard_key(plan.recipe_id, split, variants, [keys[i] for i in span]),
                      variants, [items[i] for i in span], [keys[i] for i in span])
            for span in layout.plan_shards(keys, layout.shard_target(recipe, variants))]
    return plan


def _storable(items: list) -> tuple[list, list[Problem]]:
    """The items a split's names file can hold, and a bad-file problem for each other one: found
    here, before any work, and skippable like a file that does not decode."""
    kept, bad = [], []
    for item in items:
        if "\n" in item.name or "\r" in item.name:
            bad.append(item.problem(LINE_BREAK))
        else:
            kept.append(item)
    return kept, bad


def _split_order(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def item_key(item) -> ItemKey:
    """One version of an item: its file's path, size and mtime; examples inside a JSON file are
    "<file>#<index>" with the JSON file's size and mtime; synthetic examples their name."""
    if hasattr(item, "index") and hasattr(item, "split"):  # synthetic: the recipe holds its seed
        return ItemKey(item.name, 0, 0)
    try:
        st = os.stat(item.where)
    except OSError:  # gone since the scan: the worker records why it cannot be read
        size, mtime = -1, -1
    else:
        size, mtime = st.st_size, st.st_mtime_ns
    path = item.where
    if hasattr(item, "samples"):
        path = f"{item.where}#{item.context.removeprefix('item ')}"
    return ItemKey(path, size, mtime)


# ----------------------------------------------------------------------------- current or stale
def read_manifest_or_none(paths: StorePaths) -> Optional[dict]:
    """The store's manifest; None when there is none yet or it is damaged (it is rebuilt)."""
    if not paths.manifest.exists():
        return None
    try:
        return layout.read_manifest(paths)
    except StoreError:
        return None


def staleness(plan: Plan, manifest: Optional[dict]) -> Optional[str]:
    """Why the store on disk is not what the plan asks for (None: it is exactly that)."""
    if manifest is None:
        return f"{plan.paths.root}: no complete feature store yet"
    if manifest.get("recipe_id") != plan.recipe_id:
        changed = sorted(k for k in set(plan.recipe) | set(manifest.get("recipe", {}))
                         if plan.recipe.get(k) != manifest.get("recipe", {}).get(k))
        return "the recipe changed: " + ", ".join(changed or ["format"])
    if manifest["classes"] != plan.classes:
        return f"the classes changed: {manifest['classes']} -> {plan.classes}"
    if set(manifest["splits"]) != set(plan.shards):
        return f"the splits changed: {sorted(manifest['splits'])} -> {sorted(plan.shards)}"
    for split in plan.shards:
        old, new = manifest["splits"][split]["shards"], plan.keys(split)
        if old != new:
            todo = len(set(new) - set(old))
            return f"{split}: {todo} of {len(new)} shards to compute (files added, removed or changed)"
        recorded = [bad for bad in manifest["splits"][split].get("bad", []) if bad[1].endswith(LINE_BREAK)]
        if recorded != [[p.path, p.reason] for p in plan.left_out.get(split, [])]:
            return f"{split}: the files with a line break in their name changed"
    return _label_change(plan, manifest)


def _label_change(plan: Plan, manifest: dict) -> Optional[str]:
    """Labels are not part of the shard keys (a CSV can relabel a file without touching it)."""
    for split, entry in manifest["splits"].items():
        try:
            entries = np.load(plan.paths.resolve(entry["entries"]), allow_pickle=False)
            names = layout.read_names(plan.paths.resolve(entry["names"]))
        except (OSError, ValueError, StoreError) as exc:
            return f"{split}: cannot read the store's entries ({exc})"
        labels = {item.name: item.label for task in plan.shards[split] for item in task.items}
        stored = entries["label"][::int(entry["variants"]) + 1]
        if len(stored) != len(names) or any(labels.get(n) != int(s) for n, s in zip(names, stored)):
            return f"{split}: labels changed"
    return None


def bad_problems(manifest: dict) -> list[Problem]:
    """The bad items a manifest lists, as data report problems."""
    return [Problem(path, reason) for split in manifest["splits"].values() for path, reason in split.get("bad", [])]
