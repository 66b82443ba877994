"""A feature store written for tests from the in-RAM pipeline (build_datasets without a store),
through the store's own format (trainer.data.store.layout), and a stand-in for prepare().

The store holds exactly the raw features the in-RAM cache holds, so training from it can be
compared with training from the cache. Variant v of a training item is the original plus
0.01 * v, so a test can tell which variant was read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

VARIANT_STEP = 0.01


@dataclass
class Prepared:
    """What prepare() returns (trainer.data.store.prepare.PrepareResult's fields)."""

    store_dir: object
    fingerprint: str
    up_to_date: bool = False
    computed_shards: int = 0
    reused_shards: int = 0
    items: int = 0
    bad: list = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


def in_ram_cfg(cfg):
    """`cfg` without its store (and with the cache on): the in-RAM run it is compared with."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"store": None, "cache": True})})


def write_store(cfg, progress=None, variants: int = 0) -> Prepared:
    """Write cfg's store (cfg.data.store) from the in-RAM pipeline; `progress(done, total)` per item."""
    from trainer.data import build_datasets
    from trainer.data.store import layout

    t0 = time.monotonic()
    bundle = build_datasets(in_ram_cfg(cfg))
    paths = layout.StorePaths(cfg.resolve_path(cfg.data.store))
    paths.make_dirs()
    recipe = layout.recipe(cfg)
    rid = layout.recipe_id(recipe)
    kind = layout.row_kind(cfg.features.kind)
    splits = {"train": bundle.train, "val": bundle.val, **({"test": bundle.test} if bundle.test else {})}
    total = sum(len(ds) for ds in splits.values())
    done, keyed, entries_of, row_shape = 0, {}, {}, None
    for name, ds in splits.items():
        v = variants if name == "train" else 0
        examples = ds.examples
        item_keys = [layout.ItemKey(n, 0, 0) for n in examples.names]
        key = layout.shard_key(rid, name, v, item_keys)
        blocks, outcomes = [], []
        entries = np.zeros(len(examples) * (v + 1), dtype=layout.ENTRIES_DTYPE)
        row = 0
        for i in range(len(examples)):
            raw = examples.raw(i).numpy()
            row_shape = layout.row_shape_of(raw, kind)
            for j in range(v + 1):
                block = layout.to_rows(raw + VARIANT_STEP * j if j else raw, kind)
                blocks.append(block)
                entries[i * (v + 1) + j] = (examples.labels[i], 0, row, len(block))
                row += len(block)
            outcomes.append({"path": item_keys[i].path, "size": 0, "mtime_ns": 0, "ok": True,
                             "duration": None, "rate": None, "wh": None})
            done += 1
            if progress is not None:
                progress(done, total)
        layout.write_shard(paths, key, name, v, blocks, outcomes, layout.stored_dtype(recipe))
        keyed[name] = ([key], entries, examples.names, v, bundle.class_counts[name])
    fp = layout.fingerprint(rid, bundle.classes, {n: (k[0], k[1]) for n, k in keyed.items()})
    manifest_splits = {}
    for name, (keys, entries, names, v, counts) in keyed.items():
        files = layout.write_entries(paths, fp, name, entries, names)
        manifest_splits[name] = {"shards": keys, "items": len(names), "variants": v, "counts": counts,
                                 "bad": [], **files}
    manifest = layout.make_manifest(fp=fp, recipe_dict=recipe, kind=kind, row_shape=row_shape,
                                    classes=bundle.classes, splits=manifest_splits)
    layout.write_manifest(paths, manifest)
    return Prepared(paths.root, fp, computed_shards=len(keyed), items=total, seconds=time.monotonic() - t0)


class FakePrepare:
    """prepare() and store_status() for a test (monkeypatched into trainer.data.store's module):
    counts its calls."""

    def __init__(self, variants: int = 0):
        self.variants = variants
        self.prepared = 0
        self.status_calls = 0

    def store_status(self, cfg):
        from trainer.data.store import FeatureStore, StoreError, layout

        self.status_calls += 1
        try:
            store = FeatureStore.open(cfg.resolve_path(cfg.data.store))
        except StoreError as exc:
            return "missing", str(exc)
        if store.manifest["recipe_id"] != layout.recipe_id(layout.recipe(cfg)):
            return "stale", "other settings"
        return "current", ""

    def prepare(self, cfg, workers=None, progress=None, wait=True):
        self.prepared += 1
        return write_store(cfg, progress, self.variants)
