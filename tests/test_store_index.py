"""The data index (STORE/index.sqlite) and check-data through it: a file is decoded once per version."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import yaml

from trainer.cli import main
from trainer.config import RunConfig
from trainer.data import check_data
from trainer.data.decode import Item
from trainer.data.index import DataIndex, DataIndexError, FileRecord

SR = 8000


def write(path, seconds, value=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.full(int(seconds * SR), value, np.float32), SR)


@pytest.fixture
def folder(tmp_path):
    """data/{train,val}/{bird,frog}: 3 + 2 train clips of each class, one corrupt train file."""
    root = tmp_path / "data"
    for label in ("bird", "frog"):
        for i in range(3):
            write(root / "train" / label / f"{i}.wav", 0.25 + 0.25 * i)
        for i in range(2):
            write(root / "val" / label / f"{i}.wav", 0.5)
    (root / "train" / "bird" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    return root


def store_cfg(root, store, **data):
    return RunConfig.model_validate({"data": {"source": "audio_folder", "root": str(root), "sample_rate": SR,
                                              "duration": 0.5, "store": str(store), **data}})


@pytest.fixture
def decodes(monkeypatch):
    """Counts every Item.load (each decode of an example), by item path."""
    seen: list[str] = []
    for cls in Item.__subclasses__():
        original = cls.load

        def counted(self, decoder, _original=original):
            seen.append(self.where)
            return _original(self, decoder)

        monkeypatch.setattr(cls, "load", counted)
    return seen


def rec(path, size=10, mtime_ns=5, status="ok", **fields) -> FileRecord:
    return FileRecord(path, size, mtime_ns, "train", "bird", status, **fields)


# ----------------------------------------------------------------------------- DataIndex
def test_lookup_needs_the_same_size_and_mtime(tmp_path):
    with DataIndex(tmp_path / "index.sqlite") as index:
        assert index.lookup("/a.wav", 10, 5) is None
        index.record([rec("/a.wav", duration=1.5, sample_rate=8000),
                      rec("/b.png", status="bad", problem="cannot decode image: truncated")])
        found = index.lookup("/a.wav", 10, 5)
        assert (found.status, found.duration, found.sample_rate) == ("ok", 1.5, 8000) and found.checked > 0
        assert index.lookup("/a.wav", 11, 5) is None and index.lookup("/a.wav", 10, 6) is None
        assert index.lookup("/b.png", 10, 5).problem == "cannot decode image: truncated"
        index.record([rec("/a.wav", size=11, status="bad", problem="now broken")])  # a new version replaces
        assert index.lookup("/a.wav", 10, 5) is None
        assert index.lookup("/a.wav", 11, 5).problem == "now broken"
        assert [r.path for r in index.records()] == ["/a.wav", "/b.png"] and len(index) == 2
        index.forget(["/b.png"])
        assert len(index) == 1
    with DataIndex(tmp_path / "index.sqlite") as again:  # durable across opens
        assert again.lookup("/a.wav", 11, 5).status == "bad"


def test_recording_what_is_known_changes_nothing(tmp_path):
    with DataIndex(tmp_path / "index.sqlite") as index:
        index.record([rec("/a.wav", duration=1.0, checked=100.0)])
        index.record([rec("/a.wav", duration=1.0, checked=200.0)])  # prepare re-recording a reused shard
        assert index.lookup("/a.wav", 10, 5).checked == 100.0
        index.record([rec("/a.wav", duration=2.0, checked=300.0)])
        assert (index.lookup("/a.wav", 10, 5).duration, index.lookup("/a.wav", 10, 5).checked) == (2.0, 300.0)


def test_record_is_one_transaction(tmp_path):
    with DataIndex(tmp_path / "index.sqlite") as index:
        with pytest.raises(ValueError, match="status must be one of"):
            index.record([rec("/a.wav"), rec("/b.wav", status="maybe")])
        assert len(index) == 0


def test_wal_lets_another_process_read_while_one_writes(tmp_path):
    path = tmp_path / "index.sqlite"
    with DataIndex(path) as index:
        index.record([rec("/a.wav")])
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        index._db.execute("BEGIN IMMEDIATE")  # a writer holds the database mid-transaction
        index._db.execute("DELETE FROM files")
        code = (f"from trainer.data.index import DataIndex; i = DataIndex({str(path)!r}); "
                "print(i.lookup('/a.wav', 10, 5).status)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
        index._db.execute("ROLLBACK")
    assert out.stdout.strip() == "ok", out.stderr


def test_damaged_database_is_named_and_may_be_deleted(tmp_path):
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(DataIndexError) as caught:
        DataIndex(path)
    text = str(caught.value)
    assert str(path) in text and "damaged" in text and "can be deleted" in text


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataIndexError, match="folder .* does not exist"):
        DataIndex(tmp_path / "nowhere" / "index.sqlite")


def test_other_schema_version_starts_the_index_over(tmp_path):
    path = tmp_path / "index.sqlite"
    with DataIndex(path) as index:
        index.record([rec("/a.wav")])
        index._db.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    with DataIndex(path) as index:
        assert len(index) == 0


# ----------------------------------------------------------------------------- check-data
def test_second_check_decodes_nothing_and_reports_the_same(folder, tmp_path, decodes):
    cfg = store_cfg(folder, tmp_path / "store")
    first = check_data(cfg)
    assert len(decodes) == 11  # 7 train (one corrupt) + 4 val
    assert "0 file(s) known and unchanged, 11 decoded" in first.index
    decodes.clear()
    second = check_data(cfg)
    assert decodes == []
    assert "11 file(s) known and unchanged, 0 decoded" in second.index
    assert second.counts == first.counts == {"train": [3, 3], "val": [2, 2]}
    assert second.errors == first.errors
    assert second.to_text().replace(second.index, "") == first.to_text().replace(first.index, "")
    # the report matches a check without the index (apart from the index line)
    plain = check_data(RunConfig.model_validate({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "store": None}}))
    assert plain.counts == second.counts and plain.errors == second.errors
    assert plain.stats["train"].durations == pytest.approx(second.stats["train"].durations)
    assert plain.stats["train"].sample_rates == second.stats["train"].sample_rates


def test_bad_files_are_recorded_with_their_reasons(folder, tmp_path):
    cfg = store_cfg(folder, tmp_path / "store")
    report = check_data(cfg)
    broken = str(folder / "train" / "bird" / "broken.wav")
    assert [path for path, _ in report.errors] == [broken]
    with DataIndex(tmp_path / "store" / "index.sqlite") as index:
        records = {r.path: r for r in index.records()}
    assert len(records) == 11
    assert records[broken].status == "bad" and "cannot decode audio" in records[broken].problem
    assert dict(report.errors)[broken] == records[broken].problem
    good = records[str(folder / "train" / "frog" / "2.wav")]
    assert (good.status, good.split, good.label, good.sample_rate) == ("ok", "train", "frog", SR)
    assert good.duration == pytest.approx(0.75)


def test_changed_and_new_files_are_decoded_again(folder, tmp_path, decodes):
    cfg = store_cfg(folder, tmp_path / "store")
    check_data(cfg)
    decodes.clear()
    changed = folder / "train" / "frog" / "0.wav"
    write(changed, 1.0)  # another size
    os.utime(folder / "val" / "bird" / "0.wav", ns=(1, 1))  # same size, another mtime
    (folder / "train" / "bird" / "broken.wav").write_bytes(b"")  # still bad, for another reason
    write(folder / "train" / "bird" / "new.wav", 0.5)
    report = check_data(cfg)
    assert sorted(decodes) == sorted(str(p) for p in (
        changed, folder / "val" / "bird" / "0.wav", folder / "train" / "bird" / "broken.wav",
        folder / "train" / "bird" / "new.wav"))
    assert report.counts["train"] == [4, 3]
    assert max(report.stats["train"].durations) == pytest.approx(1.0)


def test_check_data_command_with_a_store(folder, tmp_path, capsys, decodes):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "audio_folder", "root": str(folder), "sample_rate": SR,
                                             "duration": 0.5, "store": "store", "skip_bad_files": True}}))
    assert main(["check-data", str(path)]) == 1  # a bad file is still reported as a problem
    out = capsys.readouterr().out
    assert "broken.wav" in out and f"Index: {tmp_path / 'store' / 'index.sqlite'}" in out
    assert (tmp_path / "store" / "index.sqlite").exists()  # relative to the config file
    decodes.clear()
    assert main(["check-data", str(path)]) == 1
    assert decodes == [] and "11 file(s) known and unchanged" in capsys.readouterr().out


def test_check_data_command_with_a_damaged_index(folder, tmp_path, capsys):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.sqlite").write_bytes(b"garbage" * 1000)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "audio_folder", "root": str(folder), "sample_rate": SR,
                                             "duration": 0.5, "store": "store"}}))
    assert main(["check-data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "index.sqlite" in err and "can be deleted" in err and "Traceback" not in err


def test_json_items_are_indexed_by_file_and_position(tmp_path, decodes):
    doc = {"fs": SR, "waveforms": [[0.1] * 400, [0.2] * 400, "oops"], "labels": ["a", "b", "a"]}
    (tmp_path / "items.json").write_text(json.dumps(doc))
    (tmp_path / "val.json").write_text(json.dumps({"fs": SR, "waveforms": [[0.1] * 400], "labels": ["a"]}))
    cfg = RunConfig.model_validate({"data": {"source": "json_waveforms", "train": str(tmp_path / "items.json"),
                                             "val": str(tmp_path / "val.json"), "sample_rate": SR,
                                             "duration": 0.05, "store": str(tmp_path / "store")}})
    check_data(cfg)
    assert len(decodes) == 3
    decodes.clear()
    check_data(cfg)
    assert decodes == []
    with DataIndex(tmp_path / "store" / "index.sqlite") as index:
        assert sorted(r.path for r in index.records()) == sorted(
            [f"{tmp_path / 'items.json'}#0", f"{tmp_path / 'items.json'}#1", f"{tmp_path / 'val.json'}#0"])


def test_image_sizes_come_from_the_index(tmp_path, decodes):
    from PIL import Image

    for split in ("train", "val"):
        for label, size in (("cat", (40, 30)), ("dog", (20, 50))):
            (tmp_path / "img" / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", size, (i * 40, 10, 10)).save(tmp_path / "img" / split / label / f"{i}.png")
    cfg = RunConfig.model_validate({"data": {"source": "image_folder", "root": str(tmp_path / "img"), "image_size": 16,
                                             "store": str(tmp_path / "store")},
                                    "features": {"kind": "image"}})
    first = check_data(cfg)
    decodes.clear()
    second = check_data(cfg)
    assert decodes == [] and first.ok and second.ok
    assert sorted(second.stats["train"].sizes) == sorted(first.stats["train"].sizes) == [(20, 50)] * 2 + [(40, 30)] * 2


def test_file_names_that_are_not_utf8_round_trip(tmp_path):
    odd = os.fsdecode(b"/data/bird/caf\xe9.wav")  # Latin-1 bytes: surrogate-escaped in Python
    with DataIndex(tmp_path / "index.sqlite") as index:
        index.record([FileRecord(odd, 1, 2, "train", os.fsdecode(b"b\xffrd"), "bad", problem=f"{odd}: broken")])
        found = index.lookup(odd, 1, 2)
        assert found.path == odd and [r.path for r in index.records()] == [odd]
        assert found.label == "b\ufffdrd" and found.problem.endswith(": broken")


def test_check_after_prepare_decodes_nothing(folder, tmp_path, decodes):
    from trainer.data.store import prepare

    cfg = store_cfg(folder, tmp_path / "store", skip_bad_files=True)
    prepare(cfg, workers=1)  # its worker decodes; the main process records every outcome
    decodes.clear()
    report = check_data(cfg)
    assert decodes == [] and "11 file(s) known and unchanged, 0 decoded" in report.index
    broken = str(folder / "train" / "bird" / "broken.wav")
    assert "cannot decode audio" in dict(report.errors)[broken]
    assert report.counts == {"train": [3, 3], "val": [2, 2]}
