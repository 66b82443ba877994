"""Unit tests of the TUI's pure parts: series buffers, charts, formatting, timeline layout, offline reading."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402

from tui import braille, fmt  # noqa: E402
from tui.model import RunModel, Series  # noqa: E402
from trainer.run.events import read_events  # noqa: E402
from trainer.run.linefile import tail_lines  # noqa: E402
from trainer.run.rundir import RunDir  # noqa: E402
from tui.offline import load_run_dir  # noqa: E402
from tui.widgets.timeline import allocate, phase_weight, spans_from_plan  # noqa: E402


# ----------------------------------------------------------------------------- Series
def test_series_ignores_old_steps_and_non_numbers():
    s = Series()
    assert s.append(1, 0.5) and s.append(2, 0.4)
    assert not s.append(2, 0.3)  # a repeated step (a resumed run) is not a new point
    assert not s.append(3, float("nan"))
    assert not s.append(4, None)
    assert s.steps == [1.0, 2.0] and s.values == [0.5, 0.4]


def test_series_stays_bounded_and_keeps_extremes():
    s = Series(capacity=100)
    for step in range(1, 10_001):
        s.append(step, -5.0 if step == 4321 else (step % 10))
    assert len(s) <= 100
    assert min(s.mins) == -5.0 and max(s.maxs) == 9.0  # the spike survives every merge
    assert s.steps == sorted(s.steps) and s.last_step == 10_000
    assert s.append(10_001, 1.0)  # still accepts newer points after compaction


def test_series_from_wire_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        Series.from_wire({"step": [1, 2], "value": [1.0]})


def test_resample_interpolates_between_sparse_points():
    s = Series([0, 10], [0.0, 10.0])
    buckets = s.resample(11)
    assert buckets[0] == (0.0, 0.0, 0.0) and buckets[-1] == (10.0, 10.0, 10.0)
    assert buckets[5][0] == pytest.approx(5.0)
    assert Series([5], [1.0]).resample(4, 0, 15)[0] is None  # nothing before the first point


def test_trend():
    assert Series(range(20), [10 - i for i in range(20)]).trend() == -1
    assert Series(range(20), [float(i) for i in range(20)]).trend() == 1
    assert Series(range(20), [1.0] * 20).trend() == 0


# ----------------------------------------------------------------------------- model
def test_model_folds_events_into_state_series_and_best():
    model = RunModel(config={"monitor": "val_f1_macro", "mode": "max"})
    model.apply_event({"seq": 1, "kind": "eval", "level": "info", "message": "",
                       "data": {"step": 100, "epoch": 0, "metrics": {"val_f1_macro": 0.5, "val_loss": 1.0}}})
    model.apply_event({"seq": 2, "kind": "eval", "level": "info", "message": "",
                       "data": {"step": 200, "epoch": 1, "metrics": {"val_f1_macro": 0.4, "val_loss": 0.9}}})
    assert model.series["val_loss"].values == [1.0, 0.9]
    assert model.eval_last["val_f1_macro"] == 0.4 and model.eval_best["val_f1_macro"] == 0.5
    model.apply_event({"seq": 3, "kind": "state", "level": "info", "message": "paused", "data": {"state": "paused"}})
    assert model.state == "paused"
    model.apply_event({"seq": 3, "kind": "state", "level": "info", "message": "running", "data": {"state": "running"}})
    assert model.state == "paused" and model.events_total == 3  # seq 3 again: a replay, ignored


def test_model_snapshot_resets_feeds():
    frames = tui_fakes.read_stream()
    model = RunModel()
    model.load_snapshot(frames[0]["snapshot"], frames[0]["run"])
    first_generation = model.generation
    assert model.name == "demo-b0" and model.state == "running" and model.step == tui_fakes.SNAPSHOT_STEP
    assert model.events_total == len(frames[0]["snapshot"]["events"])
    model.load_snapshot(frames[0]["snapshot"], frames[0]["run"])
    assert model.generation == first_generation + 1
    assert model.events_total == len(frames[0]["snapshot"]["events"])  # replaced, not doubled


# ----------------------------------------------------------------------------- charts
def test_braille_plot_draws_a_connected_line():
    columns = [(float(v), float(v), float(v)) for v in (0, 10, 0, 10)]
    rows = braille.plot(columns, height=2, y_lo=0, y_hi=10)
    assert len(rows) == 2 and all(len(r) == 2 for r in rows)
    # every cell the line crosses has dots: a jump 0 -> 10 fills the whole column
    assert all(kind == "line" for row in rows for _, kind in row)


def test_braille_plot_marks_envelope_and_marker_with_their_own_glyphs():
    columns = [(5.0, 0.0, 10.0)] * 8
    rows = braille.plot(columns, height=4, y_lo=0, y_hi=10, marker_column=2, envelope=True)
    glyphs = {ch for row in rows for ch, _ in row}
    assert braille.ENVELOPE_CHAR in glyphs and braille.MARKER_CHAR in glyphs


def test_spark_and_log_transform():
    assert braille.spark([0, 1, 2, 3, 4, 5, 6, 7]) == braille.SPARK_CHARS
    assert braille.spark([3, 3, 3]) == braille.SPARK_CHARS[3] * 3
    assert braille.log_transform([(1.0, 1.0, 1.0), (0.0, 0.0, 1.0)]) is None
    assert braille.log_transform([(100.0, 10.0, 1000.0)]) == [(2.0, 1.0, 3.0)]


def test_axis_labels_never_overlap():
    row = braille.axis_labels(0, 1_000_000, 20, lambda v: f"{v:.0f}")
    assert len(row) == 20 and row.startswith("0")
    assert "1000000" in row and "500000" not in row  # the middle label did not fit beside them


# ----------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("seconds,text", [(None, "–"), (5, "5s"), (65, "1m05s"), (3600 * 5 + 60 * 39, "5h39m"),
                                          (86400 * 2 + 3600 * 4, "2d04h")])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


def test_size_and_metric():
    assert fmt.size(512) == "512 B" and fmt.size(3.2 * 1024**2) == "3.2 MiB" and fmt.size(61 * 1024**3) == "61 GiB"
    assert fmt.metric(0.123456) == "0.1235" and fmt.metric(3e-4) == "3.0e-04" and fmt.metric(None) == "–"


@pytest.mark.parametrize("value,text", [(950, "950"), (6004, "6.0k"), (99_949, "99.9k"), (240_000, "240k"),
                                        (1_000_000, "1.00M"), (None, "–")])
def test_count_short(value, text):
    assert fmt.count_short(value) == text


def test_eta_time_uses_the_clock():
    clock = fmt.frozen_clock(tui_fakes.T0)  # Thu 1 Jan 2026, 00:00 UTC
    assert clock.eta_time(3600 * 5) == "05:00"
    assert clock.eta_time(86400 * 2) == "Sat 00:00"
    assert clock.eta_time(86400 * 30) == "31 Jan 00:00"
    assert clock.age(tui_fakes.T0 - 90) == "1m30s ago"


def test_bar_reads_without_colour():
    assert fmt.bar(0.5, 4) == "██░░" and fmt.bar(2.0, 3) == "███" and fmt.bar(float("nan"), 2) == "░░"


# ----------------------------------------------------------------------------- timeline
def test_allocate_fills_the_width_proportionally():
    cells = allocate([1, 2, 1], 40)
    assert sum(cells) == 40 and cells[1] == 20
    assert allocate([1000, 1], 10, minimum=2) == [8, 2]  # a tiny phase still gets room for a label
    assert sum(allocate([1, 1, 1], 2, minimum=2)) == 2


def test_phase_weight_uses_the_time_model():
    spans = spans_from_plan(tui_fakes.demo_plan().to_dict())
    head, finetune = spans[0], spans[1]
    # head trains no backbone (cost 1) over 2 epochs; finetune trains all (cost 3) over 10
    assert finetune.weight / head.weight == pytest.approx(5 * 3)
    assert phase_weight({"steps": 10, "seconds_per_step": 2.5}) == 25
    assert phase_weight({"steps": 10}) == 10


# ----------------------------------------------------------------------------- offline reading
def test_tail_lines_reads_only_the_end(tmp_path):
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert tail_lines(path, 3) == ["line 9997", "line 9998", "line 9999"]
    assert tail_lines(path, 5, max_bytes=30)[-1] == "line 9999"
    assert tail_lines(tmp_path / "missing", 3) == []


def test_unreadable_events_become_a_warning(tmp_path):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="stopped", steps=100)
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write('{"kind": "checkpoint", "torn\n')
    events, problems = read_events(run_dir / "events.jsonl")
    assert problems and "unreadable line" in problems[0]
    model = load_run_dir(run_dir)
    assert model.state == "stopped"
    assert any(e["kind"] == "alert" and "unreadable" in e["message"] for e in model.events)


def test_offline_reader_downsamples_the_history_once(tmp_path, monkeypatch):
    from trainer import history

    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="finished", steps=500)
    first = load_run_dir(run_dir)
    assert first.series and RunDir(run_dir).series_cache.exists()
    monkeypatch.setattr(history, "load_series", lambda *a, **k: pytest.fail("history re-read"))
    again = load_run_dir(run_dir)
    assert again.series.keys() == first.series.keys()
    assert again.series["train_loss"].steps == first.series["train_loss"].steps


def test_offline_state_of_a_dead_owner_is_interrupted(tmp_path):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="running", pid=None, steps=100)
    assert load_run_dir(run_dir).state == "interrupted"


def test_offline_model_without_any_files(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"name": "empty", "state": "starting"}))
    model = load_run_dir(run_dir)
    assert model.plan is None and model.series == {} and model.state == "interrupted"


def test_offline_reader_rebuilds_a_damaged_state_file(tmp_path):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="stopped", steps=100)
    (run_dir / "state.json").write_text("{torn")
    model = load_run_dir(run_dir)
    assert model.state != "unknown"
    assert any(e["kind"] == "alert" and "state.json was damaged" in e["message"] for e in model.events)


# ----------------------------------------------------------------------------- evaluation.json
def test_read_evaluation_missing_damaged_and_foreign_results(tmp_path):
    from trainer.run.evaluation import read_evaluation

    assert read_evaluation(tmp_path) is None  # a run never evaluated
    path = RunDir(tmp_path).evaluation
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"evaluation.json: expected a JSON object"):
        read_evaluation(tmp_path)
    path.write_text("{")
    with pytest.raises(ValueError, match=r"evaluation.json: not JSON"):
        read_evaluation(tmp_path)
    path.write_text(json.dumps({"version": 1, "results": {"test/best": {"n": 3}, "junk": 7}}))
    assert read_evaluation(tmp_path)["results"] == {"test/best": {"n": 3}}


def test_headline_is_the_newest_test_result_of_the_runs_own_data():
    from trainer.run.evaluation import headline_result, results_newest_first

    def result(split, at, data=None):
        return {"split": split, "weights": "best", "time": at, "data": data}

    evaluation = {"results": {"test/best": result("test", 10), "val/best": result("val", 30),
                              "test/last": result("test", 20), "other/best": result("test", 40, data="/new")}}
    assert [k for k, _ in results_newest_first(evaluation)] == ["other/best", "val/best", "test/last", "test/best"]
    assert headline_result(evaluation)["time"] == 20
    assert headline_result({"results": {"val/best": result("val", 1)}})["split"] == "val"
    assert headline_result(None) is None and headline_result({"results": {}}) is None


def test_evaluation_watch_reads_once_per_change(tmp_path):
    from trainer.run.evaluation import EvaluationWatch

    watch = EvaluationWatch(tmp_path)
    assert not watch.poll() and watch.value is None and watch.reads == 0  # no file: nothing read
    tui_fakes.write_evaluation(tmp_path)
    assert watch.changed() and watch.poll() and watch.reads == 1
    assert watch.value["results"]["test/best"]["accuracy"] == 0.8712
    for _ in range(5):
        assert not watch.poll()  # unchanged: a stat each, no read
    assert watch.reads == 1
    tui_fakes.write_evaluation(tmp_path, tui_fakes.evaluation_result("val"))  # atomic replace
    assert watch.poll() and watch.reads == 2 and list(watch.value["results"]) == ["val/best"]
    RunDir(tmp_path).evaluation.write_text("{")
    assert watch.poll() and watch.value is None and "not JSON" in watch.error
    RunDir(tmp_path).evaluation.unlink()
    assert watch.poll() and watch.value is None and watch.error is None


def test_evaluation_text_of_a_result():
    from tui.widgets import evaluation as ev

    result = tui_fakes.evaluation_result(tta=False)
    assert ev.headline_rows(result)[:3] == [("accuracy", "0.871", "0.842–0.899"), ("F1 macro", "0.863", "0.831–0.892"),
                                            ("AUC-ROC macro", "0.951", "0.938–0.963")]
    assert ev.headline_rows(result)[3:] == [("F1 weighted", "0.866", "–"), ("AUC-PR macro", "0.880", "–")]
    assert ev.headline_columns(result) == ["metric", "value", "95% interval"]
    assert str(ev.calibration_text(result)) == ("Calibration: temperature 1.43 · ECE 0.081 → 0.023 · MCE 0.210 → 0.095"
                                                " · Brier 0.201 → 0.187 · NLL 0.452 → 0.382")
    assert str(ev.calibration_text({"temperature": None})) == "Calibration: temperature –"
    assert str(ev.calibration_text({"temperature": 0.5, "calibration_split": "val"})) == (
        "Calibration: temperature 0.5000 (fitted on val)")
    rows = ev.per_class_rows(result["per_class"], ["fm", "tone"])  # the run's class order first
    assert [str(r[0]) for r in rows][:3] == ["fm", "tone", "am"]  # Text: a class name is never markup
    assert ev.result_title(result, fmt.frozen_clock(0)) == "test split · best weights (step 6,000) · n 508 · 2026-01-01 00:00"
    assert ev.stale_note(result, 6000) is None and ev.stale_note(result, 7000).startswith("best.pt is now from step 7,000")
    assert ev.stale_note(dict(result, weights="last"), 7000) is None
    assert ev.headline_rows({}) == [(label, "–", "–") for label, _ in ev.HEADLINE]  # fields are optional


def test_evaluation_options_and_their_results():
    from tui.widgets import evaluation as ev

    evaluation = {"results": {"test/best": tui_fakes.evaluation_result(at=1.0),
                              "val/last": tui_fakes.evaluation_result("val", "last", at=2.0, tta=False)}}
    options = ev.evaluation_options(evaluation)
    assert options == [("eval:val/last", "▤ val/last"), ("eval:test/best", "▤ test/best"),
                       ("eval:test/best:tta", "▤ test/best +TTA")]
    assert ev.option_result(evaluation, "eval:test/best:tta") == (evaluation["results"]["test/best"], True)
    assert ev.option_result(evaluation, "eval:val/last")[1] is False
    assert ev.option_result(evaluation, "eval:gone/best") == (None, False)
    assert ev.option_result(evaluation, "val_loss") == (None, False)
    assert ev.evaluation_options(None) == []


def test_model_summary_is_there_for_a_finished_or_an_evaluated_run():
    model = RunModel()
    assert not model.has_summary and model.best_step is None
    model.evaluation = {"results": {"val/best": {"split": "val"}}}
    assert model.has_summary and model.evaluation_result == {"split": "val"}
    model.eval_best = {"step": 100}
    assert model.best_step == 100
    model.summary = {"best": {"step": 200}}
    assert model.best_step == 200


def test_model_knows_an_evaluation_is_under_way():
    model = RunModel()
    model.apply_event({"seq": 1, "time": 0, "kind": "evaluation", "level": "info", "message": "",
                       "data": {"what": "evaluation_started"}})
    assert model.evaluating
    model.apply_event({"seq": 2, "time": 0, "kind": "alert", "level": "error", "message": "",
                       "data": {"what": "evaluation_failed"}})
    assert not model.evaluating
