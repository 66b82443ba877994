"""The feature store's on-disk format and its reader (trainer.data.store.layout, .reader, .changes):
what is written is what is read, nothing incomplete or damaged is ever read quietly, and a store's
identity changes exactly when its content does."""
from __future__ import annotations

import errno
import json
import os
import signal

import numpy as np
import pytest

from tests.run_configs import RESNET_TINY, run_config
from tests.store_fakes import fake_raw, write_store
from trainer.data.store import FeatureStore, StoreError, StorePaths, describe_change, layout, summary
from trainer.data.store.reader import OPEN_SHARDS


def _expected(raw: np.ndarray, dtype) -> np.ndarray:
    return raw if raw.dtype == np.uint8 else raw.astype(dtype)


# ----------------------------------------------------------------------------- rows
@pytest.mark.parametrize("kind,dtype", [("mel", "float16"), ("mel", "float32"), ("mfcc", "float32"),
                                        ("waveform", "float16"), ("waveform", "float32"), ("image", "uint8")])
def test_rows_round_trip(kind, dtype):
    raw = fake_raw("mel" if kind == "mfcc" else kind, np.random.default_rng(1), 17).astype(dtype)
    if kind in ("mel", "mfcc"):
        raw = np.concatenate([raw, raw * 2])  # two channels: frame-major rows interleave them
    rows = layout.to_rows(raw, kind)
    assert rows.ndim == 2 and rows.dtype == raw.dtype
    assert rows.shape == {"waveform": (17, 1), "image": (1, raw.size)}.get(kind, (17, raw.shape[0] * raw.shape[1]))
    back = layout.from_rows(rows, kind, layout.row_shape_of(raw, kind))
    np.testing.assert_array_equal(back, raw)
    if kind != "image":  # a window of rows is the same window of the features
        window = layout.from_rows(rows[3:9], kind, layout.row_shape_of(raw, kind))
        np.testing.assert_array_equal(window, raw[..., 3:9])


def test_rows_refuse_a_wrong_shape():
    with pytest.raises(ValueError, match="cannot store"):
        layout.to_rows(np.zeros((2, 5), np.float32), "waveform")


# ----------------------------------------------------------------------------- written = read
@pytest.mark.parametrize("kind,dtype", [("mel", "float16"), ("mel", "float32"), ("waveform", "float16"),
                                        ("image", "uint8")])
def test_a_written_store_reads_back_what_was_written(tmp_path, kind, dtype):
    written = write_store(tmp_path / "s", kind=kind, dtype=dtype, items={"train": 40, "val": 7}, variants=2,
                          shard_items=9)
    store = FeatureStore.open(tmp_path / "s")
    assert store.fingerprint == written.manifest["fingerprint"] and store.classes == ["c0", "c1", "c2"]
    assert store.dtype == np.dtype(dtype) and store.kind == kind
    for split, raws in written.raw.items():
        sp = store.split(split)
        assert len(sp) == len(raws) and sp.variants == (2 if split == "train" else 0)
        np.testing.assert_array_equal(sp.labels, written.labels[split])
        assert sp.labels.dtype == np.int32 and sp.names() == written.names[split]
        for item, variants in enumerate(raws):
            for v, raw in enumerate(variants):
                got = sp.raw(item, v)
                assert got.dtype == np.dtype(dtype)
                np.testing.assert_array_equal(got, _expected(raw, dtype))
                assert sp.length(item, v) == (1 if kind == "image" else raw.shape[-1])


def test_windows_of_an_entry(tmp_path):
    written = write_store(tmp_path / "s", kind="mel", items={"train": 12}, variants=1, lengths=(30, 31))
    sp = FeatureStore.open(tmp_path / "s").split("train")
    raw = _expected(written.raw["train"][5][1], np.float16)
    np.testing.assert_array_equal(sp.raw(5, 1, start=10, count=8), raw[..., 10:18])
    np.testing.assert_array_equal(sp.raw(5, 1, start=25), raw[..., 25:])
    assert sp.rows(5, 1, start=30, count=0).shape == (0, 8)
    rows = sp.rows(5, 1, 0, 4)
    rows[:] = 0  # a copy: writing to it changes nothing stored
    assert np.abs(sp.rows(5, 1, 0, 4)).sum() > 0
    for bad in [dict(start=25, count=6), dict(start=-1, count=2)]:
        with pytest.raises(IndexError):
            sp.rows(5, 1, **bad)
    with pytest.raises(IndexError):
        sp.rows(12)
    with pytest.raises(IndexError):
        sp.rows(0, variant=2)


def test_a_missing_split_is_a_store_error(tmp_path):
    write_store(tmp_path / "s", items={"train": 3})
    with pytest.raises(StoreError, match="no 'test' split"):
        FeatureStore.open(tmp_path / "s").split("test")


# ----------------------------------------------------------------------------- completeness
def test_a_shard_is_complete_only_with_its_npy(tmp_path):
    paths = StorePaths(tmp_path / "s")
    paths.make_dirs()
    outcomes = [{"path": "a.wav", "size": 1, "mtime_ns": 2, "ok": True, "duration": 1.0, "rate": 8000, "wh": None},
                {"path": "b.wav", "size": 1, "mtime_ns": 2, "ok": False, "problem": "cannot decode audio: junk"}]
    blocks = [np.ones((4, 3), np.float32)]
    layout.write_shard(paths, "k1", "train", 0, blocks, outcomes, np.float16)
    got = layout.read_shard_outcomes(paths, "k1")
    assert got[0]["rows"] == [4] and got[1] == outcomes[1]
    npy = paths.shard_npy("k1")
    os.truncate(npy, npy.stat().st_size - 1)  # damaged: computed again
    assert layout.read_shard_outcomes(paths, "k1") is None
    npy.unlink()  # killed between the .json and the .npy
    assert layout.read_shard_outcomes(paths, "k1") is None
    paths.shard_json("k2").write_text("{")
    paths.shard_npy("k2").write_bytes(b"")
    assert layout.read_shard_outcomes(paths, "k2") is None  # a damaged sidecar: computed again
    temp = StorePaths.temp(paths.shard_npy("k3"))
    temp.write_bytes(b"half")
    assert StorePaths.is_temp(temp) and layout.read_shard_outcomes(paths, "k3") is None
    assert not any(StorePaths.is_temp(p) for p in paths.shards.iterdir() if p != temp)


def test_write_shard_checks_its_blocks(tmp_path):
    paths = StorePaths(tmp_path / "s")
    paths.make_dirs()
    ok = [{"path": "a", "size": 0, "mtime_ns": 0, "ok": True}]
    with pytest.raises(ValueError, match="blocks"):
        layout.write_shard(paths, "k", "train", 1, [np.zeros((2, 3))], ok, np.float32)
    with pytest.raises(ValueError, match="2-D"):
        layout.write_shard(paths, "k", "train", 0, [np.zeros(3)], ok, np.float32)
    assert list(paths.shards.iterdir()) == []


def test_the_manifest_is_written_last(tmp_path, monkeypatch):
    order = []
    real = layout.durable_write
    monkeypatch.setattr(layout, "durable_write", lambda path, write: (order.append(path.name), real(path, write)))
    write_store(tmp_path / "s", items={"train": 5, "val": 2})
    assert order[-1] == "manifest.json" and order.count("manifest.json") == 1
    assert len(order) > 5


def test_no_manifest_means_no_store(tmp_path):
    write_store(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(StoreError, match=r"no complete feature store \(manifest.json missing\).*longhaul prepare"):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="manifest.json missing"):
        FeatureStore.open(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["{not json", "[]", json.dumps({"format": 99}), json.dumps({"format": 1})])
def test_a_damaged_manifest_names_the_file(tmp_path, damage):
    write_store(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text(damage)
    with pytest.raises(StoreError, match=r"manifest\.json: .*longhaul prepare"):
        FeatureStore.open(tmp_path / "s")


def test_a_truncated_shard_names_the_shard(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 10}, shard_items=5)
    key = written.manifest["splits"]["train"]["shards"][1]
    path = written.paths.shard_npy(key)
    os.truncate(path, path.stat().st_size - 3)
    sp = FeatureStore.open(tmp_path / "s").split("train")
    sp.rows(0)  # the first shard is whole
    with pytest.raises(StoreError, match=f"{key}.npy: the shard is truncated.*longhaul prepare"):
        sp.rows(7)


def test_a_shard_of_other_rows_names_the_shard(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 4}, shard_items=2)
    key = written.manifest["splits"]["train"]["shards"][1]
    ok = [{"path": "a", "size": 0, "mtime_ns": 0, "ok": True}] * 2
    layout.write_shard(written.paths, key, "train", 0, [np.zeros((3, 8))] * 2, ok, np.float32)
    with pytest.raises(StoreError, match=f"{key}.npy: the shard holds rows of 8 float32, the manifest says 8 float16"):
        FeatureStore.open(tmp_path / "s").split("train").rows(3)


def test_a_missing_shard_names_the_shard(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 10}, shard_items=5)
    key = written.manifest["splits"]["train"]["shards"][0]
    written.paths.shard_npy(key).unlink()
    with pytest.raises(StoreError, match=f"{key}.npy: a shard of the feature store is missing"):
        FeatureStore.open(tmp_path / "s").split("train").rows(2)


def test_missing_or_wrong_entries_name_the_file(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 6, "val": 2})
    entries = written.paths.resolve(written.manifest["splits"]["val"]["entries"])
    np.save(entries, np.zeros(5, layout.ENTRIES_DTYPE))
    with pytest.raises(StoreError, match="val.npy: .*entries"):
        FeatureStore.open(tmp_path / "s").split("val")
    entries.unlink()
    with pytest.raises(StoreError, match="val.npy: the entries of split 'val' are missing"):
        FeatureStore.open(tmp_path / "s").split("val")


# ----------------------------------------------------------------------------- reading
def test_more_shards_than_open_files(tmp_path):
    n = OPEN_SHARDS + 16
    written = write_store(tmp_path / "s", kind="waveform", items={"train": n}, shard_items=1, lengths=(3, 6))
    store = FeatureStore.open(tmp_path / "s")
    sp = store.split("train")
    for sweep in range(2):
        for item in range(n):
            np.testing.assert_array_equal(sp.raw(item), written.raw["train"][item][0].astype(np.float16))
            assert store.files.open_count <= OPEN_SHARDS
    assert store.files.open_count == OPEN_SHARDS
    store.close()
    assert store.files.open_count == 0
    np.testing.assert_array_equal(sp.raw(3), written.raw["train"][3][0].astype(np.float16))  # opens again


def test_reads_in_a_forked_child(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 30}, shard_items=4)
    sp = FeatureStore.open(tmp_path / "s").split("train")
    sp.rows(0)  # the parent holds an open shard the child inherits
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read everything, say whether it matched, leave at once
        ok = all(np.array_equal(sp.raw(i), written.raw["train"][i][0].astype(np.float16)) for i in range(30))
        os.write(write_fd, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    np.testing.assert_array_equal(sp.raw(29), written.raw["train"][29][0].astype(np.float16))


# ----------------------------------------------------------------------------- identity
def test_fingerprint_follows_keys_entries_and_classes():
    entries = np.array([(0, 0, 0, 5), (1, 0, 5, 7)], dtype=layout.ENTRIES_DTYPE)
    base = layout.fingerprint("r" * 32, ["a", "b"], {"train": (["k1", "k2"], entries)})
    assert base == layout.fingerprint("r" * 32, ["a", "b"], {"train": (["k1", "k2"], entries.copy())})
    other = entries.copy()
    other["rows"][1] = 8
    changes = [layout.fingerprint("r" * 32, ["a", "b"], {"train": (["k1", "k3"], entries)}),
               layout.fingerprint("r" * 32, ["a", "b"], {"train": (["k1", "k2"], other)}),
               layout.fingerprint("r" * 32, ["a", "c"], {"train": (["k1", "k2"], entries)}),
               layout.fingerprint("s" * 32, ["a", "b"], {"train": (["k1", "k2"], entries)}),
               layout.fingerprint("r" * 32, ["a", "b"], {"val": (["k1", "k2"], entries)})]
    assert len({base, *changes}) == 6


def test_inserting_one_item_changes_at_most_two_shards():
    keys = [layout.ItemKey(f"birds/c{i % 50}/rec{i:06d}.wav", 1000 + i, 17) for i in range(2000)]

    def shard_keys(items):
        return [layout.shard_key("r" * 32, "train", 0, [items[i] for i in shard]) for shard in layout.plan_shards(items)]

    before = shard_keys(keys)
    assert 3 <= len(before) <= 30  # ~256 items a shard
    for at in (0, 777, 1999):
        after = shard_keys(keys[:at] + [layout.ItemKey(f"birds/new/x{at}.wav", 5, 5)] + keys[at:])
        assert len(set(after) - set(before)) <= 2, at
    changed = keys[:500] + [layout.ItemKey(keys[500].path, 1, 1)] + keys[501:]  # a file rewritten
    assert len(set(shard_keys(changed)) - set(before)) == 1


def test_shards_never_exceed_the_maximum():
    keys = [layout.ItemKey(f"x{i}", 0, 0) for i in range(5000)]
    plan = layout.plan_shards(keys)
    assert [i for r in plan for i in r] == list(range(5000))
    assert max(len(r) for r in plan) <= layout.SHARD_MAX
    assert layout.plan_shards([]) == []


def test_recipe_names_what_decides_the_rows(tmp_path):
    cfg = run_config(RESNET_TINY)
    rid = layout.recipe_id(layout.recipe(cfg))
    assert rid == layout.recipe_id(layout.recipe(run_config(RESNET_TINY, seed=99, **{"features.normalize": False,
                                                                                      "augment.hflip": True})))
    assert rid == layout.recipe_id(layout.recipe(run_config(RESNET_TINY, **{"features.kind": "mfcc"})))
    for change in [{"features.n_mels": 64}, {"data.sample_rate": 16000}, {"data.store_dtype": "float32"},
                   {"data.duration": 1.0}, {"data.store": "s", "data.windows.enabled": True}]:
        assert layout.recipe_id(layout.recipe(run_config(RESNET_TINY, **change))) != rid, change
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "n.wav").write_bytes(b"x")
    noisy = run_config(RESNET_TINY, **{"data.store": "s", "data.variants.count": 2, "data.variants.noise_dir": str(tmp_path / "noise")})
    first = layout.recipe(noisy)
    (tmp_path / "noise" / "m.wav").write_bytes(b"y")
    second = layout.recipe(noisy)
    assert layout.recipe_id(first) != layout.recipe_id(second) != rid
    assert describe_change({"fingerprint": "a", "recipe": first}, {"fingerprint": "b", "recipe": second}) == \
        ["recipe: the files in data.variants.noise_dir changed"]


def test_describe_change_in_words(tmp_path):
    old = summary(write_store(tmp_path / "a", items={"train": 300, "val": 20}, shard_items=10).manifest)
    assert describe_change(old, old) == []
    new = json.loads(json.dumps(old))
    new["fingerprint"] = "f" * 64
    new["recipe"]["features.n_mels"] = 128
    new["classes"] = ["c0", "c1", "c2", "owl"]
    new["splits"]["train"]["shards"][:3] = ["x", "y", "z"]
    new["splits"]["train"]["items"] = 304
    del new["splits"]["val"]
    assert describe_change(old, new) == ["recipe: features.n_mels (unset) -> 128", "classes: added 'owl'",
                                         "train: 3 of 30 shards replaced, 300 -> 304 examples",
                                         "val: split removed (had 20 examples)"]
    json.dumps(old)  # a run records it as JSON


# ----------------------------------------------------------------------------- garbage, full disk
def test_remove_unreferenced_keeps_what_the_manifest_uses(tmp_path):
    old = write_store(tmp_path / "s", items={"train": 20}, shard_items=5, seed=1)
    new = write_store(tmp_path / "s", items={"train": 20}, shard_items=4, seed=2)
    leftover = StorePaths.temp(new.paths.shard_npy("dead"))
    leftover.write_bytes(b"half")
    files, size = layout.remove_unreferenced(new.paths, new.manifest)
    assert files == 4 * 2 + 2 + 1 and size > 0  # old shards (.npy + .json), old entries + names, the temp
    remaining = {p for p in new.paths.root.rglob("*") if p.is_file()}
    assert remaining == layout.referenced(new.paths, new.manifest) | {new.paths.manifest}
    assert old.manifest["fingerprint"] != new.manifest["fingerprint"]
    FeatureStore.open(tmp_path / "s").split("train").rows(19)


def test_a_full_disk_is_a_clear_error_and_leaves_no_temp_file(tmpfs):
    disk = tmpfs(1)
    paths = StorePaths(disk.path / "store")
    paths.make_dirs()
    ok = [{"path": "a", "size": 0, "mtime_ns": 0, "ok": True}]
    with pytest.raises(StoreError, match=r"shards/big\.(json|npy): the disk is full"):
        layout.write_shard(paths, "big", "train", 0, [np.zeros((600_000, 1), np.float32)], ok, np.float32)
    assert not paths.shard_npy("big").exists()
    assert not any(StorePaths.is_temp(p) for p in paths.shards.iterdir())
    layout.write_shard(paths, "small", "train", 0, [np.zeros((10, 1), np.float32)], ok, np.float32)
    assert layout.read_shard_outcomes(paths, "small") is not None  # space came back with the temp file


def test_an_unwritable_store_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(StoreError, match="cannot write the feature store"):
        StorePaths(tmp_path / "ro" / "store").make_dirs()


def test_shard_rows_locate_each_entry(tmp_path):
    written = write_store(tmp_path / "s", items={"train": 9}, variants=1, shard_items=9)
    key = written.manifest["splits"]["train"]["shards"][0]
    spans = layout.shard_rows(layout.read_shard_outcomes(written.paths, key))
    entries = np.load(written.paths.resolve(written.manifest["splits"]["train"]["entries"]))
    assert [span for item in spans for span in item] == [(int(e["row"]), int(e["rows"])) for e in entries]
    assert layout.shard_rows([{"ok": False, "problem": "x"}, {"ok": True, "rows": [3, 4]}]) == [None, [(0, 3), (3, 4)]]


def test_a_store_pickles_for_a_spawned_process(tmp_path):
    import pickle

    written = write_store(tmp_path / "s", items={"train": 8}, variants=1)
    sp = FeatureStore.open(tmp_path / "s").split("train")
    sp.rows(0)
    copy = pickle.loads(pickle.dumps(sp))
    assert copy.store.files is not sp.store.files and copy.store.files.open_count == 0
    np.testing.assert_array_equal(copy.raw(7, 1), written.raw["train"][7][1].astype(np.float16))


def test_recipe_changes_name_the_settings():
    from trainer.data.store import recipe_changes

    old = layout.recipe(run_config(RESNET_TINY))
    new = layout.recipe(run_config(RESNET_TINY, **{"features.n_mels": 64, "features.f_max": 3000.0}))
    assert recipe_changes(old, new) == ["features.f_max null -> 3000.0", "features.n_mels 32 -> 64"]
    assert recipe_changes(old, json.loads(json.dumps(old))) == []  # what a manifest reads back is the same


def test_names_with_odd_characters_survive(tmp_path):
    paths = StorePaths(tmp_path / "s")
    paths.make_dirs()
    names = ["a\x0cb.wav", "c\u2028d.wav", "caf\u00e9.wav", os.fsdecode(b"bad\xff.wav"), ""]
    rel = layout.write_entries(paths, "f" * 64, "val", np.zeros(5, layout.ENTRIES_DTYPE), names)
    assert layout.read_names(paths.resolve(rel["names"])) == names
    with pytest.raises(StoreError, match="line break"):
        layout.write_entries(paths, "f" * 64, "val", np.zeros(1, layout.ENTRIES_DTYPE), ["a\nb"])


def test_a_power_cut_at_any_write_leaves_a_whole_store_or_none(tmp_path, monkeypatch):
    """Power cut (tests/powercut.py) after every rename and every durable write of a store being
    written: what survives is no store (no manifest) or the whole store, and every shard that
    looks complete is whole."""
    from tests.powercut import mount_or_skip

    (tmp_path / "live").mkdir()
    mount = mount_or_skip(tmp_path / "live", tmp_path / "mnt", tmp_path / "fs.log")
    survivors = []

    def cut():
        survivors.append(mount.cut(tmp_path / f"cut-{len(survivors)}"))
    real_replace, real_write = os.replace, layout.durable_write
    monkeypatch.setattr(os, "replace", lambda a, b: (real_replace(a, b), cut()))
    monkeypatch.setattr(layout, "durable_write", lambda path, write: (real_write(path, write), cut()))
    try:
        written = write_store(mount.mountpoint / "s", items={"train": 6, "val": 2}, variants=1, shard_items=3)
    finally:
        monkeypatch.undo()
        mount.unmount()
    assert len(survivors) == 2 * (3 * 2 + 2 * 2 + 1)  # shards (.json, .npy), splits (entries, names), manifest
    for survivor in survivors:
        paths = StorePaths(survivor / "s")
        for npy in paths.shards.glob("*.npy") if paths.shards.is_dir() else []:
            assert layout.read_shard_outcomes(paths, npy.stem) is not None, survivor
        if not paths.manifest.exists():
            with pytest.raises(StoreError, match="manifest.json missing"):
                FeatureStore.open(paths.root)
            continue
        store = FeatureStore.open(paths.root)
        for split, raws in written.raw.items():
            for item, variants in enumerate(raws):
                for v, raw in enumerate(variants):
                    np.testing.assert_array_equal(store.split(split).raw(item, v), raw.astype(np.float16))
    assert FeatureStore.open(survivors[-1] / "s").fingerprint == written.manifest["fingerprint"]


def test_store_file_names_are_spelled_only_by_layout():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    owner = root / "trainer" / "data" / "store" / "layout.py"
    names = {"index.sqlite", "prepare.lock", "manifest.json"}
    spelled = {}
    for path in sorted((root / "trainer" / "data").rglob("*.py")):
        constants = [node.value for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str)]
        hits = [c for c in constants if c.strip("/") in names]
        if path == owner:
            assert sorted(hits) == sorted(names)
        elif hits:
            spelled[path.relative_to(root).as_posix()] = hits
    assert spelled == {}
