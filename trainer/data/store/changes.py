"""A store's identity as a run records it (`summary`), and what changed between two (`describe_change`).

A run records the summary of the store it trained on; a resume against a store whose fingerprint
differs is refused with describe_change's lines, in words a user understands:
    recipe: features.n_mels 64 -> 128
    train: 3 of 196 shards replaced, 5,000 -> 5,004 examples
    classes: added 'owl'
stdlib only.
"""
from __future__ import annotations

from typing import Any


def summary(manifest: dict) -> dict:
    """Small and JSON-able: fingerprint, recipe, classes, and per split its items, variants,
    per-class counts and shard keys."""
    splits = {}
    for name, entry in manifest["splits"].items():
        splits[name] = {"items": int(entry["items"]), "variants": int(entry["variants"]),
                        "counts": list(entry.get("counts", [])), "shards": list(entry["shards"])}
    return {"fingerprint": manifest["fingerprint"], "recipe": dict(manifest["recipe"]),
            "classes": list(manifest["classes"]), "splits": splits}


def describe_change(old: dict, new: dict) -> list[str]:
    """What changed from store summary `old` to `new`, one line per change ([] when the same)."""
    if old.get("fingerprint") == new.get("fingerprint"):
        return []
    lines = [f"recipe: {line}" for line in recipe_changes(old.get("recipe", {}), new.get("recipe", {}))]
    lines += _class_changes(old.get("classes", []), new.get("classes", []))
    old_splits, new_splits = old.get("splits", {}), new.get("splits", {})
    for split in sorted(set(old_splits) | set(new_splits), key=_split_order):
        line = _split_change(split, old_splits.get(split), new_splits.get(split))
        if line:
            lines.append(line)
    if not lines:
        lines.append(f"the store was prepared again with the same data and recipe (fingerprint "
                     f"{str(old.get('fingerprint'))[:12]} -> {str(new.get('fingerprint'))[:12]})")
    return lines


def _split_order(split: str) -> tuple[int, str]:
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(split, 3), split


def recipe_changes(old: dict, new: dict) -> list[str]:
    """'features.n_mels 64 -> 128' for each setting of two recipes (layout.recipe) that differs."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "(unset)"), new.get(key, "(unset)")
        if before == after:
            continue
        if key.endswith("noise_files"):
            lines.append("the files in data.variants.noise_dir changed")
        else:
            lines.append(f"{key} {_show(before)} -> {_show(after)}")
    return lines


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _class_changes(old: list, new: list) -> list[str]:
    added = [c for c in new if c not in old]
    removed = [c for c in old if c not in new]
    parts = []
    if added:
        parts.append("added " + ", ".join(repr(c) for c in added))
    if removed:
        parts.append("removed " + ", ".join(repr(c) for c in removed))
    if not parts and list(old) != list(new):
        parts.append("same names in another order (labels differ)")
    return [f"classes: {'; '.join(parts)}"] if parts else []


def _split_change(split: str, old: dict | None, new: dict | None) -> str:
    if old is None:
        return f"{split}: new split with {new['items']:,} examples"
    if new is None:
        return f"{split}: split removed (had {old['items']:,} examples)"
    parts = []
    old_keys, new_keys = old.get("shards", []), new.get("shards", [])
    replaced = len(set(new_keys) - set(old_keys))
    if replaced or len(old_keys) != len(new_keys):
        parts.append(f"{replaced} of {len(new_keys)} shards replaced")
    if old["items"] != new["items"]:
        parts.append(f"{old['items']:,} -> {new['items']:,} examples")
    if old.get("variants") != new.get("variants"):
        parts.append(f"variants {old.get('variants')} -> {new.get('variants')}")
    if not parts and old.get("counts") != new.get("counts"):
        parts.append("examples per class changed")
    return f"{split}: {', '.join(parts)}" if parts else ""
