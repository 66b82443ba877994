"""`longhaul compare`: two tiny real runs (seconds each) that differ in the seed and the MLP's
hidden size, compared from their files; the JSON agrees with each run's own `status --json`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.run_configs import MFCC_TINY
from trainer.cli import main
from trainer.run.compare import compare_runs, config_diff, flatten, format_table, phase_seconds
from trainer.run.plan import read_plan
from trainer.run.rundir import RunDir, atomic_write_json

TEST_RESULT = {"split": "test", "weights": "best", "step": 12, "data": None, "time": 1.7e9, "n": 12,
               "accuracy": 0.75, "f1_macro": 0.7, "auc_roc_macro": 0.9, "temperature": 1.3,
               "ece_before": 0.12, "ece_after": 0.05, "classes": ["tone", "chirp", "noise_burst"],
               "confusion": [[4, 0, 0], [1, 3, 0], [0, 2, 2]]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Root with runs `a` (MFCC_TINY) and `b` (seed 2, hidden [24]); `b` has a test evaluation."""
    root = tmp_path_factory.mktemp("compare")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(MFCC_TINY))
    assert main(["--root", str(root), "train", str(config), "--name", "a", "--quiet"]) == 0
    assert main(["--root", str(root), "train", str(config), "--name", "b", "--quiet",
                 "--set", "seed=2", "--set", "model.options.hidden=[24]"]) == 0
    atomic_write_json(RunDir(root / "b").evaluation, {"version": 1, "results": {"test/best": TEST_RESULT}})
    return root


def cli_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_json_matches_each_runs_status(runs, capsys):
    comparison = cli_json(capsys, "--root", str(runs), "compare", "a", "b", "--json")
    assert set(comparison) == {"runs", "config_diff"}
    assert [Path(r["dir"]).name for r in comparison["runs"]] == ["a", "b"]
    for entry, name in zip(comparison["runs"], ["a", "b"]):
        own = cli_json(capsys, "--root", str(runs), "status", name, "--json")
        for key in ("name", "dir", "state", "step", "total_steps", "model", "best", "samples_per_s", "evaluation"):
            assert entry[key] == own[key], key
        assert entry["best"]["value"] == entry["best_eval"][entry["best"]["metric"]]
        assert entry["best_eval"]["val_loss"] == own["best_eval"]["val_loss"]
        assert entry["samples_per_s"] > 0 and entry["state"] == "finished"
    a, b = comparison["runs"]
    assert a["evaluation"] is None
    assert b["evaluation"]["ece_after"] == 0.05 and b["evaluation"]["temperature"] == 1.3


def test_parameters_come_from_the_plan_else_the_ready_event(runs):
    a = RunDir(runs / "a")
    plan, summary = read_plan(a.path)
    assert summary["parameters"] > 0  # the engine records it
    comparison = compare_runs([a.path, runs / "b"])
    assert comparison["runs"][0]["parameters"] == summary["parameters"]
    assert comparison["runs"][0]["parameters"] != comparison["runs"][1]["parameters"]  # hidden 24 vs default
    older = dict(summary)
    del older["parameters"]  # a run written before plan.json held it: the `ready` event says it
    body = json.loads(a.plan.read_text())
    try:
        atomic_write_json(a.plan, {**body, "config": older})
        assert compare_runs([a.path, runs / "b"])["runs"][0]["parameters"] == summary["parameters"]
    finally:
        atomic_write_json(a.plan, body)


def test_config_diff_holds_exactly_the_keys_that_differ(runs):
    diff = compare_runs([runs / "a", runs / "b"])["config_diff"]
    assert diff == {"seed": [1, 2], "model.options.hidden": [None, [24]]}


def test_config_diff_of_nested_lists_and_missing_keys():
    one = {"phases": [{"name": "head", "epochs": 2}], "optim": {"lr": 0.001}, "model": {"hidden": [16, 8]}}
    two = {"phases": [{"name": "head", "epochs": 3}, {"name": "full", "epochs": 1}], "optim": {"lr": 0.001},
           "model": {"hidden": [16, 8]}}
    assert flatten(one) == {"phases.0.name": "head", "phases.0.epochs": 2, "optim.lr": 0.001, "model.hidden": [16, 8]}
    assert config_diff([one, two]) == {"phases.0.epochs": [2, 3], "phases.1.epochs": [None, 1],
                                       "phases.1.name": [None, "full"]}


def test_phase_time_is_the_training_time_of_the_phase(runs):
    run = runs / "a"
    plan, summary = read_plan(run)
    rows = phase_seconds(run, plan, summary)
    state = json.loads(RunDir(run).state.read_text())
    assert [(r["index"], r["name"], r["steps"]) for r in rows] == [(0, "only", 12)]
    assert rows[0]["seconds"] == pytest.approx(state["elapsed"], rel=0.05)


def test_the_table_marks_the_best_of_a_row_and_lists_the_config_diff(runs, capsys):
    capsys.readouterr()
    assert main(["--root", str(runs), "compare", "a", str(runs / "b")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["a", "b"]
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in lines[1:] if line.strip()}
    assert rows["test acc"] == ["–", "0.750"]  # no evaluation yet is a dash, not a failure
    assert rows["ECE after"] == ["–", "0.050"]
    best_f1 = [cell for cell in rows["best F1"]]
    assert sum(cell.endswith("*") for cell in best_f1) == 1
    assert rows["config seed"] == ["1", "2"]
    assert "config model.options.hidden" in rows and "* best of the row" in out


def test_unknown_run_and_a_single_run_are_errors(runs, capsys):
    assert main(["--root", str(runs), "compare", "a", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "a, b" in err  # names it and the runs that exist
    assert main(["--root", str(runs), "compare", "a"]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["--root", str(runs), "compare", "a", str(runs / "a")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_format_table_of_runs_sharing_a_name_uses_their_directories(runs):
    comparison = compare_runs([runs / "a", runs / "b"])
    for entry in comparison["runs"]:
        entry["name"] = "clitiny"
    assert format_table(comparison).splitlines()[0].split() == ["a", "b"]


# ----------------------------------------------------------------------------- report --compare
def test_report_compare_writes_one_page_with_a_curve_per_run(runs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert main(["--root", str(runs), "report", "--compare", "a", "b", "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    page = out.read_text()
    for anchor in ("summary", "config", "curves", "confusion"):
        assert f'<section id="{anchor}">' in page
    assert 'alt="overlaid training curves: a, b"' in page and 'alt="confusion matrices: a, b"' in page
    assert "<td>model.options.hidden</td>" in page and "<td>seed</td>" in page
    assert page.count("data:image/png;base64,") == 2  # self-contained: nothing else is linked
    assert "<script" not in page and 'href="http' not in page


def test_report_compare_figures_overlay_every_run(runs):
    from trainer.posthoc.report_compare import confusion_grid_figure, curves_figure, load_curves

    curves = [load_curves(runs / name, name) for name in ("a", "b")]
    fig = curves_figure(curves)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == [f"{panel} by {axis}" for panel in ("train loss (smoothed)", "validation loss", "val_f1_macro")
                      for axis in ("step", "training time")]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
        assert len({line.get_color() for line in ax.get_lines()}) == 2  # one colour per run
    by_step, by_time = fig.axes[2].get_lines()[0], fig.axes[3].get_lines()[0]  # a's validation loss
    assert list(by_step.get_xdata()) == [6.0, 12.0]
    assert by_time.get_xdata()[-1] == pytest.approx(curves[0].series["elapsed"]["max"][-1])
    grid = confusion_grid_figure(curves)
    assert [ax.get_title() for ax in grid.axes] == ["a: best validation", "b: best validation", "a: test", "b: test"]
    assert [len(ax.get_images()) for ax in grid.axes] == [1, 1, 0, 1]  # a has no test evaluation
    assert grid.axes[3].get_images()[0].get_array().shape == (3, 3)


def test_report_still_takes_one_run_and_needs_one(runs, tmp_path, capsys):
    out = tmp_path / "a.html"
    assert main(["--root", str(runs), "report", "a", "--out", str(out)]) == 0
    assert "longhaul report: a" in out.read_text()
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(runs), "report"])
    assert exc.value.code == 2 and "--compare" in capsys.readouterr().err
    assert main(["--root", str(runs), "report", "--compare", "a"]) == 2
    assert "at least two runs" in capsys.readouterr().err


def test_a_run_that_has_not_trained_yet_compares_with_dashes(runs, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(yaml.safe_dump({**MFCC_TINY, "seed": 5}))
    entry = compare_runs([runs / "a", fresh])["runs"][1]
    assert entry["best"] is None and entry["best_eval"] == {} and entry["phases"] == []
    assert entry["parameters"] is None and entry["samples_per_s"] is None and entry["evaluation"] is None
    assert main(["--root", str(runs), "compare", "a", str(fresh)]) == 0
    rows = {line.split("  ")[0].strip(): line.split()[-2:] for line in capsys.readouterr().out.splitlines()[1:] if line}
    assert rows["best F1"][1] == "–" and rows["parameters"][1] == "–" and rows["config seed"] == ["1", "5"]
