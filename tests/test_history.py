"""Metric history: append/read/truncate with torn tails, downsampling, series sets, fast load, export."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random

import msgpack
import numpy as np
import pytest

from trainer import history as h
from trainer.history import cache as history_cache
from trainer.history import load as history_load
from trainer.history import Downsampler, HistoryError, HistoryWriter, SeriesSet
from trainer.monitor import Monitor
from trainer.run.rundir import RunDir


def train(step, loss=0.5, **extra):
    return {"kind": "train", "step": step, "epoch": step // 100, "phase": 0, "time": 1.7e9 + step,
            "train_loss": loss, "lr": 1e-3, "grad_norm": 1.0, "samples_per_s": 100.0, "data_share": 0.1, **extra}


def evaluation(step, f1=0.5, **extra):
    return {"kind": "eval", "step": step, "epoch": step // 100, "phase": 0, "time": 1.7e9 + step + 0.5,
            "val_loss": 1.0 - f1, "val_accuracy": f1, "val_f1_macro": f1, "val_f1_weighted": f1,
            "per_class": {"precision": [f1, f1], "recall": [f1, f1], "f1": [f1, f1]},
            "confusion": [[5, 1], [2, 4]], "classes": ["a", "b"], **extra}


def write(path, records):
    with HistoryWriter(path) as writer:
        for record in records:
            writer.append(record)
        return writer.tell()


# ----------------------------------------------------------------------------- write / read
def test_append_read_round_trip_and_tell(tmp_path):
    path = tmp_path / "history.msgpack"
    records = [train(s, loss=1 / s) for s in range(1, 50)] + [evaluation(49)]
    length = write(path, records)
    assert length == os.path.getsize(path)
    reader = h.read_history(path)
    assert list(reader) == records
    assert reader.valid_length == length and not reader.torn and reader.problem is None


def test_writer_appends_to_an_existing_file_and_reopens_after_truncation(tmp_path):
    path = tmp_path / "history.msgpack"
    first = write(path, [train(1), train(2)])
    writer = HistoryWriter(path)
    assert writer.tell() == first
    writer.append(train(3))
    writer.fsync()
    h.truncate_history(path, first)
    writer.reopen()
    assert writer.tell() == first
    writer.append(train(4))
    writer.close()
    assert [r["step"] for r in h.read_history(path)] == [1, 2, 4]


def test_writer_rejects_records_that_are_not_records(tmp_path):
    with HistoryWriter(tmp_path / "h.msgpack") as writer:
        for bad in ([1, 2], {"step": 1}, {"kind": "train"}, {"kind": "train", "step": 1.5}, {"kind": "train", "step": True}):
            with pytest.raises(HistoryError):
                writer.append(bad)
        assert writer.tell() == 0


def test_a_failed_write_is_cut_off_again(tmp_path, monkeypatch):
    path = tmp_path / "h.msgpack"
    writer = HistoryWriter(path)
    writer.append(train(1))
    good = writer.tell()
    real_write = os.write

    def half_then_fail(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError):
        writer.append(train(2))
    monkeypatch.setattr(os, "write", real_write)
    assert os.path.getsize(path) == good == writer.tell()
    writer.append(train(3))
    writer.close()
    assert [r["step"] for r in h.read_history(path)] == [1, 3]


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_reader_stops_cleanly_at_a_torn_last_record(tmp_path, cut):
    path = tmp_path / "h.msgpack"
    good = write(path, [train(1), evaluation(1), train(2)])
    torn = msgpack.packb(evaluation(2))
    with open(path, "ab") as f:
        f.write(torn[:cut])
    reader = h.read_history(path)
    assert [r["step"] for r in reader] == [1, 1, 2]
    assert reader.valid_length == good and reader.torn and "torn" in reader.problem


def test_reader_stops_at_garbage_and_at_non_records(tmp_path):
    path = tmp_path / "h.msgpack"
    good = write(path, [train(1)])
    with open(path, "ab") as f:
        f.write(b"\xc1" + msgpack.packb(train(2)))
    reader = h.read_history(path)
    assert [r["step"] for r in reader] == [1] and reader.valid_length == good and reader.torn
    path.write_bytes(msgpack.packb(train(1)) + msgpack.packb([1, 2, 3]) + msgpack.packb(train(2)))
    reader = h.read_history(path)
    assert [r["step"] for r in reader] == [1] and "not a history record" in reader.problem


def test_read_from_an_offset_tails_the_file(tmp_path):
    path = tmp_path / "h.msgpack"
    middle = write(path, [train(1), train(2)])
    with HistoryWriter(path) as writer:
        writer.append(train(3))
    reader = h.read_history(path, since_offset=middle)
    assert [r["step"] for r in reader] == [3]
    assert reader.valid_length == os.path.getsize(path)
    assert list(h.read_history(path, since_offset=reader.valid_length)) == []
    with pytest.raises(HistoryError, match="truncated"):
        list(h.read_history(path, since_offset=os.path.getsize(path) + 10))


def test_missing_file_reads_as_empty(tmp_path):
    assert list(h.read_history(tmp_path / "none.msgpack")) == []
    series = h.load_series(tmp_path / "none.msgpack")
    assert series.snapshot_series() == {} and series.valid_length == 0


# ----------------------------------------------------------------------------- truncate
def test_truncate_cuts_back_to_the_checkpoint_length_dropping_a_torn_tail(tmp_path):
    path = tmp_path / "h.msgpack"
    with HistoryWriter(path) as writer:
        for s in range(1, 6):
            writer.append(train(s))
        at_checkpoint = writer.tell()
        writer.append(train(6))
        writer.append(evaluation(6))
    with open(path, "ab") as f:
        f.write(msgpack.packb(train(7))[:9])  # crash mid-append
    assert h.truncate_history(path, at_checkpoint) == at_checkpoint
    reader = h.read_history(path)
    assert [r["step"] for r in reader] == [1, 2, 3, 4, 5] and not reader.torn
    with HistoryWriter(path) as writer:  # the resumed run continues with no gap and no duplicate
        writer.append(train(6))
    assert [r["step"] for r in h.read_history(path)] == [1, 2, 3, 4, 5, 6]


def test_truncate_of_a_file_shorter_than_recorded_keeps_its_whole_records(tmp_path):
    path = tmp_path / "h.msgpack"
    good = write(path, [train(1), train(2)])
    with open(path, "ab") as f:
        f.write(msgpack.packb(train(3))[:4])
    assert h.truncate_history(path, good + 500) == good
    assert os.path.getsize(path) == good


def test_truncate_edge_cases(tmp_path):
    assert h.truncate_history(tmp_path / "missing.msgpack", 0) == 0
    with pytest.raises(HistoryError, match="missing"):
        h.truncate_history(tmp_path / "missing.msgpack", 10)
    path = tmp_path / "h.msgpack"
    write(path, [train(1)])
    with pytest.raises(HistoryError, match="negative"):
        h.truncate_history(path, -1)
    assert h.truncate_history(path, 0) == 0 and os.path.getsize(path) == 0


# ----------------------------------------------------------------------------- downsampling
def expected_buckets(steps, values, max_points):
    """Brute force: width = smallest power of two giving <= max_points groups of consecutive points."""
    width = 1
    while math.ceil(len(values) / width) > max_points:
        width *= 2
    groups = [(steps[i:i + width], values[i:i + width]) for i in range(0, len(values), width)]
    return {"step": [s[-1] for s, _ in groups], "value": [sum(v) / len(v) for _, v in groups],
            "min": [min(v) for _, v in groups], "max": [max(v) for _, v in groups]}


def assert_series_equal(actual, expected, rel=1e-9):
    assert actual["step"] == expected["step"]
    for key in ("value", "min", "max"):
        assert actual[key] == pytest.approx(expected[key], rel=rel, abs=1e-12), key


@pytest.mark.parametrize("n, max_points", [(0, 10), (1, 10), (10, 10), (11, 10), (21, 10), (41, 10),
                                            (999, 7), (1000, 1000), (1001, 1000), (5003, 1000), (12345, 100)])
def test_downsampler_matches_the_brute_force_buckets(n, max_points):
    rng = random.Random(n)
    steps = sorted(rng.sample(range(1, 10 * n + 10), n))
    values = [rng.gauss(0, 1) for _ in range(n)]
    incremental = Downsampler(max_points)
    for s, v in zip(steps, values):
        assert incremental.append(s, v)
    expected = expected_buckets(steps, values, max_points)
    assert_series_equal(incremental.to_dict(), expected)
    assert_series_equal(Downsampler.from_arrays(steps, values, max_points).to_dict(), expected)
    assert len(incremental) <= max_points and incremental.count == n


def test_downsampler_keeps_extremes_and_covers_every_step():
    rng = random.Random(3)
    ds = Downsampler(100)
    values = [rng.uniform(-1, 1) for _ in range(50_000)]
    values[12_345], values[40_000] = 77.0, -55.0  # one spike each way
    for step, value in enumerate(values, start=1):
        ds.append(step, value)
        assert len(ds) <= 100
    out = ds.to_dict()
    assert max(out["max"]) == 77.0 and min(out["min"]) == -55.0
    assert out["step"][-1] == 50_000 and out["step"] == sorted(set(out["step"]))
    assert all(lo <= v <= hi for lo, v, hi in zip(out["min"], out["value"], out["max"]))
    assert sum(ds._n) == 50_000  # every raw point is in exactly one bucket


def test_downsampler_skips_non_finite_values_and_old_steps():
    ds = Downsampler(10)
    assert ds.append(1, 1.0)
    assert not ds.append(2, float("nan"))
    assert not ds.append(3, float("inf"))
    assert ds.append(4, 2.0)
    assert not ds.append(4, 9.0) and not ds.append(2, 9.0)  # a resumed run repeating steps
    assert ds.to_dict() == {"step": [1, 4], "value": [1.0, 2.0], "min": [1.0, 2.0], "max": [1.0, 2.0]}
    fast = Downsampler.from_arrays([1, 2, 3, 4, 4, 2], [1.0, float("nan"), float("inf"), 2.0, 9.0, 9.0], 10)
    assert fast.to_dict() == ds.to_dict()
    with pytest.raises(ValueError):
        Downsampler(1)


def test_from_arrays_then_appending_equals_appending_all_along():
    rng = random.Random(5)
    values = [rng.random() for _ in range(3000)]
    whole = Downsampler(64)
    for step, value in enumerate(values):
        whole.append(step, value)
    resumed = Downsampler.from_arrays(range(1700), values[:1700], 64)
    for step, value in enumerate(values[1700:], start=1700):
        resumed.append(step, value)
    assert_series_equal(resumed.to_dict(), whole.to_dict())
    assert resumed.width == whole.width


def test_vectorised_ema_matches_the_loss_smoother():
    rng = np.random.default_rng(0)
    losses = rng.random(5000) * 3
    smoother = h.LossSmoother(0.98)
    expected = [smoother.update(float(x)) for x in losses]
    assert h.ema(losses, 0.98, start=float(losses[0])) == pytest.approx(expected, rel=1e-12)
    assert smoother.update(float("nan")) == expected[-1]
    assert len(h.ema(np.array([]), 0.9, 0.0)) == 0
    with pytest.raises(ValueError):
        h.LossSmoother(1.0)


# ----------------------------------------------------------------------------- series sets
def test_series_set_feeds_train_and_eval_records():
    series = SeriesSet(Monitor("val_f1_macro", "max"), max_points=50)
    for step in range(1, 301):
        series.feed(train(step, loss=1.0 / step, flag=True, note="x"))
        if step % 100 == 0:
            series.feed(evaluation(step, f1=[0.6, 0.8, 0.7][step // 100 - 1], accuracy_top5=0.9))
    names = set(series.snapshot_series())
    assert names == {"train_loss", "train_loss_smooth", "lr", "grad_norm", "samples_per_s", "data_share", "time",
                     "val_loss", "val_accuracy", "val_f1_macro", "val_f1_weighted", "val_accuracy_top5"}
    assert series.snapshot_series()["time"]["max"][-1] == 1.7e9 + 300  # train records' clock: the wall axis
    assert series.best_eval["step"] == 200 and series.last_eval["step"] == 300
    assert series.eval_summary() == {"last": series.last_eval, "best": series.best_eval}
    f1 = series.snapshot_series()["val_f1_macro"]
    assert f1["step"] == [100, 200, 300] and f1["value"] == pytest.approx([0.6, 0.8, 0.7])
    smoother = h.LossSmoother()
    smooth = [smoother.update(1.0 / s) for s in range(1, 301)]
    assert series.smoother.value == pytest.approx(smooth[-1])
    assert all(len(s["step"]) <= 50 for s in series.snapshot_series().values())


def test_series_set_best_with_mode_min_ties_and_nan():
    series = SeriesSet(Monitor("val_loss", "min"))
    series.feed(evaluation(1, f1=0.5))               # val_loss 0.5
    series.feed({**evaluation(2), "val_loss": 0.5})  # a tie keeps the first
    series.feed({**evaluation(3), "val_loss": float("nan")})
    assert series.best_eval["step"] == 1 and series.last_eval["step"] == 3
    series.feed({**evaluation(4), "val_loss": 0.2})
    assert series.best_eval["step"] == 4
    with pytest.raises(ValueError):
        SeriesSet(Monitor(mode="best"))


def test_series_set_ignores_repeated_steps_and_unknown_kinds():
    series = SeriesSet()
    assert series.feed(train(5)) and not series.feed(train(5, loss=9.0)) and not series.feed(train(3))
    assert series.feed(evaluation(5)) and not series.feed(evaluation(5))
    assert not series.feed({"kind": "test", "step": 9, "x": 1.0})
    assert series.snapshot_series()["train_loss"]["value"] == [0.5]
    with pytest.raises(HistoryError):
        series.feed({"kind": "train"})


# ----------------------------------------------------------------------------- fast load
def tricky_records(seed=0):
    """Train records whose byte layout changes (int widths, ints in float fields, nulls, extra or
    nested fields, a negative field), NaN losses, evals in between, and a rewind with repeats."""
    rng = random.Random(seed)
    records, step, rewound = [], 0, False
    while step < 70_000:
        step += rng.choice([1, 1, 1, 7, 300]) if step > 200 else 1
        record = train(step, loss=rng.random(), delta=rng.choice([-3, -40, -300, 5]))
        roll = rng.random()
        if roll < 0.01:
            record["lr"] = 0  # an int where a float is usual
        elif roll < 0.02:
            record["grad_norm"] = None
        elif roll < 0.03:
            record["train_loss"] = float("nan")
        elif roll < 0.035:
            record["groups"] = [0.1, 0.2]  # nested: not a fixed layout
        elif roll < 0.04:
            record["extra_metric"] = rng.random()
        records.append(record)
        if rng.random() < 0.01:
            records.append(evaluation(step, f1=rng.random(), val_auc_roc=rng.random()))
        if len(records) >= 1000 and not rewound:  # a rewind that was not truncated: repeats are ignored
            records += [train(s, loss=5.0) for s in range(step - 10, step + 1)] + [evaluation(step, f1=0.99)]
            rewound = True
    assert len(records) > 1200 and step >= 70_000
    return records


def test_load_series_equals_feeding_every_record(tmp_path):
    path = tmp_path / "h.msgpack"
    records = tricky_records()
    length = write(path, records)
    with open(path, "ab") as f:
        f.write(msgpack.packb(train(10**6))[:-3])  # torn tail
    incremental = SeriesSet(Monitor("val_f1_macro", "max"), max_points=300)
    for record in h.read_history(path):
        incremental.feed(record)
    loaded = h.load_series(path, Monitor("val_f1_macro", "max"), max_points=300)
    assert loaded.valid_length == length
    expected, actual = incremental.snapshot_series(), loaded.snapshot_series()
    assert set(actual) == set(expected)
    assert "delta" in actual and "extra_metric" in actual
    for name in expected:
        assert_series_equal(actual[name], expected[name], rel=1e-9)
    assert loaded.eval_summary() == incremental.eval_summary()
    assert loaded.smoother.value == pytest.approx(incremental.smoother.value, rel=1e-9)
    assert loaded.last_step == incremental.last_step
    # the loaded set continues like the incremental one
    for s in (incremental, loaded):
        s.feed(train(80_000, loss=0.25))
    assert_series_equal(loaded.snapshot_series()["train_loss_smooth"], incremental.snapshot_series()["train_loss_smooth"])


def test_load_series_uses_the_fast_path_for_uniform_records(tmp_path, monkeypatch):
    path = tmp_path / "h.msgpack"
    write(path, [train(s, loss=s * 1e-3) for s in range(1, 20_001)])
    decoded = []
    real = history_load._decode_at
    monkeypatch.setattr(history_load, "_decode_at", lambda data, pos: decoded.append(pos) or real(data, pos))
    series = h.load_series(path)
    # one decode per change of layout (step widths 1, 2, 3 bytes), not one per record
    assert len(decoded) <= 5
    out = series.snapshot_series()["train_loss"]
    assert out["step"][-1] == 20_000 and max(out["max"]) == pytest.approx(20.0) and min(out["min"]) == pytest.approx(1e-3)


def test_load_series_stops_at_garbage(tmp_path):
    path = tmp_path / "h.msgpack"
    good = write(path, [train(s) for s in range(1, 100)])
    with open(path, "ab") as f:
        f.write(b"\xc1\xc1" + msgpack.packb(train(500)))
    series = h.load_series(path)
    assert series.valid_length == good and series.snapshot_series()["train_loss"]["step"][-1] == 99


# ----------------------------------------------------------------------------- cached summary
def _summary_of_load_series(path, **kw) -> h.SeriesSummary:
    built = h.load_series(path, **kw)
    return h.SeriesSummary(built.snapshot_series(), built.last_eval, built.best_eval)


def test_load_summary_builds_once_then_reads_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "history.msgpack"
    write(path, [train(s, loss=1.0 / s) for s in range(1, 3000)] + [evaluation(3000, f1=0.7)])
    first = h.load_summary(path)
    assert first == _summary_of_load_series(path) and first.last_eval["val_f1_macro"] == 0.7
    assert RunDir(tmp_path).series_cache.exists()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(history_cache, "load_series", no_rebuild)
    assert h.load_summary(path) == first


def test_load_summary_rebuilds_when_the_history_or_the_monitor_changed(tmp_path):
    path = tmp_path / "history.msgpack"
    write(path, [train(s) for s in range(1, 50)] + [evaluation(50, f1=0.6)])
    h.load_summary(path)
    write(path, [train(51, loss=9.0), evaluation(52, f1=0.9)])  # appended after the cache was built
    fresh = h.load_summary(path)
    assert fresh.series["train_loss"]["step"][-1] == 51 and fresh.best_eval["val_f1_macro"] == 0.9
    assert fresh == _summary_of_load_series(path)
    by_loss = h.load_summary(path, Monitor("val_loss", "min"))
    assert by_loss.best_eval["val_loss"] == pytest.approx(0.1) and by_loss == _summary_of_load_series(
        path, monitor=Monitor("val_loss", "min"))
    h.truncate_history(path, 100)  # a resume cuts the history back
    assert h.load_summary(path) == _summary_of_load_series(path)


@pytest.mark.parametrize("cache_bytes", [b"", b"\xc1garbage", msgpack.packb([1, 2]), msgpack.packb({"key": 1})])
def test_a_damaged_or_foreign_cache_is_ignored_and_replaced(tmp_path, cache_bytes):
    path = tmp_path / "history.msgpack"
    write(path, [train(s) for s in range(1, 20)])
    RunDir(tmp_path).series_cache.write_bytes(cache_bytes)
    assert h.load_summary(path) == _summary_of_load_series(path)
    assert h.load_summary(path) == _summary_of_load_series(path)  # now from the rewritten cache
    assert RunDir(tmp_path).series_cache.read_bytes() != cache_bytes


def test_load_summary_without_a_writable_directory_or_history(tmp_path, monkeypatch):
    assert h.load_summary(tmp_path / "history.msgpack") == h.SeriesSummary({}, None, None)
    path = tmp_path / "history.msgpack"
    write(path, [train(s) for s in range(1, 20)])

    def read_only(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", read_only)
    assert h.load_summary(path) == _summary_of_load_series(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.msgpack"]  # no temp file left


# ----------------------------------------------------------------------------- export
def test_export_rows_one_per_record_with_kind(tmp_path):
    path = tmp_path / "h.msgpack"
    write(path, [train(1), train(2), evaluation(2, f1=0.7, auc=0.9), train(3),
                 evaluation(4, f1=0.8), train(5)])
    rows = list(h.export_rows(path))
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3),
                                                      ("eval", 4), ("train", 5)]
    assert rows[1]["train_loss"] == 0.5 and "val_f1_macro" not in rows[1]   # not merged into the train row
    assert rows[2]["val_f1_macro"] == 0.7 and rows[2]["val_auc"] == 0.9 and "train_loss" not in rows[2]
    assert rows[2]["time"] == evaluation(2)["time"]
    assert "per_class" not in rows[2] and "confusion" not in rows[2] and "val_per_class" not in rows[2]
    assert rows[4] == {"kind": "eval", "step": 4, "epoch": 0, "phase": 0, "time": evaluation(4)["time"],
                       "val_loss": pytest.approx(0.2), "val_accuracy": 0.8, "val_f1_macro": 0.8, "val_f1_weighted": 0.8}


def test_write_export_jsonl_and_csv(tmp_path):
    path = tmp_path / "h.msgpack"
    write(path, [train(1, loss=float("nan")), train(2), evaluation(2, f1=0.7)])
    out = io.StringIO()
    assert h.write_export(path, out, "jsonl") == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["train_loss"] is None and lines[2]["val_f1_macro"] == 0.7
    assert [line["kind"] for line in lines] == ["train", "train", "eval"]
    out = io.StringIO()
    assert h.write_export(path, out, "csv") == 3
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    header = list(table[0])
    assert header[:5] == ["step", "epoch", "phase", "time", "kind"]
    assert header.index("train_loss") < header.index("val_loss")   # train columns, then val_*
    assert table[1]["val_f1_macro"] == "" and table[2]["val_f1_macro"] == "0.7" and table[2]["train_loss"] == "" 
    with pytest.raises(ValueError, match="parquet"):
        h.write_export(path, io.StringIO(), "parquet")
