"""Feature stores written straight from arrays, through the store's own format functions
(trainer.data.store.layout), without decoding anything: for the tests of the reader and of
whatever reads a store (the engine's StoredExamples, windows) before or without `prepare`.

    written = write_store(tmp_path / "store", kind="mel", items={"train": 30, "val": 6}, variants=2)
    written.raw["train"][item][variant]      # the raw features written (float32 / uint8)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.data.store import layout

ROW_SHAPES = {"mel": (1, 8), "waveform": (1,), "image": (3, 6, 5)}


@dataclass
class WrittenStore:
    paths: layout.StorePaths
    manifest: dict
    raw: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # split -> item -> variant -> raw
    labels: dict[str, list[int]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)


def fake_raw(kind: str, rng: np.random.Generator, length: int) -> np.ndarray:
    """Raw features of one example: (1, 8, length) spectra, (1, length) waveforms, (3, 6, 5) images."""
    if kind == "image":
        return rng.integers(0, 256, ROW_SHAPES["image"], dtype=np.uint8)
    if kind == "waveform":
        return rng.standard_normal((1, length)).astype(np.float32)
    return (rng.standard_normal((*ROW_SHAPES["mel"], length)) * 20).astype(np.float32)


def write_store(store_dir: Path, kind: str = "mel", items: dict[str, int] | None = None, variants: int = 0,
                dtype: str = "float16", classes: int = 3, lengths: tuple[int, int] = (5, 40), seed: int = 0,
                shard_items: int | None = None) -> WrittenStore:
    """A complete store of random examples; item i of a split has label i % classes and a length
    drawn from `lengths` (images: one row). `variants` apply to train. `shard_items`: cut shards
    every that many items (default: the content-defined plan)."""
    items = items or {"train": 20, "val": 5}
    rng = np.random.default_rng(seed)
    paths = layout.StorePaths(store_dir)
    paths.make_dirs()
    recipe = {"format": layout.FORMAT, "features.kind": kind,
              "data.store_dtype": "uint8" if kind == "image" else dtype}
    rid = layout.recipe_id(recipe)
    written = WrittenStore(paths=paths, manifest={})
    class_names = [f"c{i}" for i in range(classes)]
    splits, fp_parts = {}, {}
    for split, count in items.items():
        v = variants if split == "train" else 0
        keys = [layout.ItemKey(f"{split}/{i % classes}/{i:05d}.wav", 100 + i, 7) for i in range(count)]
        labels = [i % classes for i in range(count)]
        raws = [[fake_raw(kind, rng, int(rng.integers(*lengths))) for _ in range(v + 1)] for _ in range(count)]
        plan = ([range(s, min(s + shard_items, count)) for s in range(0, count, shard_items)]
                if shard_items else layout.plan_shards(keys))
        shard_keys, entries = _write_shards(paths, rid, split, v, kind, keys, labels, raws, plan, recipe)
        fp_parts[split] = (shard_keys, entries)
        splits[split] = {"shards": shard_keys, "items": count, "variants": v, "entries": entries,
                         "counts": np.bincount(labels, minlength=classes).tolist(), "bad": []}
        written.raw[split], written.labels[split] = raws, labels
        written.names[split] = [k.path for k in keys]
    fp = layout.fingerprint(rid, class_names, fp_parts)
    for split, entry in splits.items():
        entry.update(layout.write_entries(paths, fp, split, entry.pop("entries"), written.names[split]))
    row_shape = layout.row_shape_of(written.raw[next(iter(items))][0][0], kind) if any(items.values()) \
        else ROW_SHAPES[kind]
    manifest = layout.make_manifest(fp=fp, recipe_dict=recipe, kind=kind, row_shape=row_shape,
                                    classes=class_names, splits=splits, total_bytes=layout.store_bytes(paths))
    layout.write_manifest(paths, manifest)
    written.manifest = manifest
    return written


def _write_shards(paths, rid, split, v, kind, keys, labels, raws, plan, recipe):
    shard_keys, entries = [], []
    for shard_index, shard in enumerate(plan):
        key = layout.shard_key(rid, split, v, [keys[i] for i in shard])
        blocks, outcomes, row = [], [], 0
        for i in shard:
            outcomes.append({"path": keys[i].path, "size": keys[i].size, "mtime_ns": keys[i].mtime_ns,
                             "ok": True, "duration": None, "rate": None, "wh": None})
            for raw in raws[i]:
                block = layout.to_rows(raw, kind)
                blocks.append(block)
                entries.append((labels[i], shard_index, row, len(block)))
                row += len(block)
        layout.write_shard(paths, key, split, v, blocks, outcomes, layout.stored_dtype(recipe))
        shard_keys.append(key)
    return shard_keys, np.array(entries, dtype=layout.ENTRIES_DTYPE)
