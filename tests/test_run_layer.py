"""The torch-free run layer (trainer/run/): RunDir names every run file once, StateFile keeps
fields pending and remembers an unsaveable rebuild, one read_plan, and snapshot_from_run_dir
gives what the offline dashboard showed before it existed."""
from __future__ import annotations

import ast
import errno
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402

from trainer import history  # noqa: E402
from trainer.run import state as run_state  # noqa: E402
from trainer.run.linefile import tail_lines  # noqa: E402
from trainer.run.plan import planned_steps, read_plan, write_plan  # noqa: E402
from trainer.run.rundir import RunDir, checkpoint_dir_name, checkpoint_step, is_run_dir  # noqa: E402
from trainer.run.snapshot import snapshot_from_run_dir  # noqa: E402
from tui.model import RunModel, Series  # noqa: E402
from tui.offline import load_run_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# What docs/ARCHITECTURE.md ("Run directory") lists, by RunDir attribute.
FILES = {"config": "config.yaml", "plan": "plan.json", "data_auto": "data_auto.json", "data_store": "data_store.json",
         "state": "state.json",
         "history": "history.msgpack", "series_cache": "series-cache.msgpack", "events": "events.jsonl",
         "train_log": "train.log", "daemon_log": "daemon.log", "daemon_lock": ".daemon.lock",
         "checkpoints": "ckpt", "best_weights": "best.pt", "last_weights": "last.pt",
         "calibration": "calibration.json", "evaluation": "evaluation.json", "report": "report.html",
         "cv_fold": "cv-fold.json"}


# ----------------------------------------------------------------------------- RunDir
def test_run_dir_names_every_file_once(tmp_path):
    rundir = RunDir(tmp_path / "r")
    for attribute, name in FILES.items():
        assert getattr(rundir, attribute) == tmp_path / "r" / name
    assert len(set(FILES.values())) == len(FILES)
    assert rundir.name == "r"
    assert rundir.corrupt_state_copy(1234.9) == tmp_path / "r" / "state.json.corrupt-1234"
    assert rundir.history_aside(99.5) == tmp_path / "r" / "history.before-restart-99.msgpack"
    assert rundir.checkpoint(1234) == tmp_path / "r" / "ckpt" / "step-0000001234"
    assert checkpoint_dir_name(7) == "step-0000000007" and checkpoint_step("step-0000000007") == 7
    assert checkpoint_step(".tmp-step-7-abc") is None and checkpoint_step("step-7") is None


def test_run_dir_newest_checkpoint_and_is_run_dir(tmp_path):
    rundir = RunDir(tmp_path / "r")
    rundir.path.mkdir()
    assert not is_run_dir(rundir.path) and rundir.newest_checkpoint() is None
    rundir.config.write_text("name: r\n")
    assert is_run_dir(rundir.path)
    for step in (5, 40, 12):
        rundir.checkpoint(step).mkdir(parents=True)
    (rundir.checkpoints / ".old-step-0000000099").mkdir()
    newest = rundir.newest_checkpoint()
    assert newest["step"] == 40 and newest["path"] == str(rundir.checkpoint(40))


def _string_constants(tree: ast.AST) -> list[str]:
    """String constants of a module, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_run_file_names_are_spelled_only_by_rundir():
    owner = REPO / "trainer" / "run" / "rundir.py"
    names = set(FILES.values()) - {"ckpt"}  # also a word of the UI (the picker's column title)
    spelled: dict[str, list[str]] = {}
    for path in sorted([*REPO.joinpath("trainer").rglob("*.py"), *REPO.joinpath("tui").rglob("*.py")]):
        if path == owner:
            continue
        # A file name as a value (a path part); prose in messages and docstrings may name files.
        for text in _string_constants(ast.parse(path.read_text())):
            if text.strip("/") in names or "before-restart-" in text or ".corrupt-" in text:
                spelled.setdefault(path.relative_to(REPO).as_posix(), []).append(text)
    assert spelled == {}
    owned = _string_constants(ast.parse(owner.read_text()))
    assert all(owned.count(name) == 1 for name in FILES.values())


# ----------------------------------------------------------------------------- StateFile
def test_state_file_write_keeps_fields_pending_on_a_full_disk(tmp_path, monkeypatch):
    state_file = run_state.StateFile(tmp_path)
    assert state_file.write(state="running", step=1) is None and state_file.pending == {}
    real = run_state.atomic_write_json

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_state, "atomic_write_json", full)
    error = state_file.write(step=2)
    assert error is not None and error.errno == errno.ENOSPC
    assert state_file.write(epoch=1) is not None
    assert state_file.pending == {"step": 2, "epoch": 1}
    assert state_file.read()["step"] == 1
    monkeypatch.setattr(run_state, "atomic_write_json", real)
    assert state_file.retry() is None and state_file.pending == {}
    assert {k: state_file.read()[k] for k in ("state", "step", "epoch")} == {"state": "running", "step": 2, "epoch": 1}
    assert state_file.retry() is None  # nothing pending: nothing written


def test_an_unsaveable_rebuild_is_not_redone_while_its_sources_stay(tmp_path, monkeypatch, capsys):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="stopped", steps=100)
    RunDir(run_dir).state.write_text("{torn")
    calls = []
    real = run_state.rebuilt_fields
    monkeypatch.setattr(run_state, "rebuilt_fields", lambda d: calls.append(d) or real(d))

    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_state, "atomic_write_json", read_only)
    first = run_state.read_state(run_dir)
    second = run_state.read_state(run_dir)
    assert first == second and first["state"] == "stopped" and first["rebuilt"]["from"]
    assert len(calls) == 1
    assert capsys.readouterr().err.count("without saving it") == 1
    with open(RunDir(run_dir).events, "a") as fh:  # a source changed: rebuilt again
        fh.write(json.dumps({"seq": 2000, "time": time.time(), "kind": "state", "level": "info",
                             "message": "failed", "data": {"state": "failed"}}) + "\n")
    assert run_state.read_state(run_dir)["state"] == "failed" and len(calls) == 2


# ----------------------------------------------------------------------------- plan.json
def test_read_plan(tmp_path):
    assert read_plan(tmp_path) == (None, {}) and planned_steps(tmp_path) is None
    body = write_plan(tmp_path, {"total_steps": 30, "phases": []}, {"monitor": "val_loss"})
    assert json.loads(RunDir(tmp_path).plan.read_text()) == body
    assert read_plan(tmp_path) == ({"total_steps": 30, "phases": []}, {"monitor": "val_loss"})
    assert planned_steps(tmp_path) == 30
    RunDir(tmp_path).plan.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_plan(tmp_path)
    RunDir(tmp_path).plan.write_text('{"plan": [1]}')
    with pytest.raises(ValueError, match="under 'plan'"):
        read_plan(tmp_path)
    assert planned_steps(tmp_path) is None


# ----------------------------------------------------------------------------- snapshot
def offline_model_before_the_run_layer(run_dir: Path) -> RunModel:
    """tui/offline.py's load_run_dir as it was before snapshot_from_run_dir (the reference)."""
    model = RunModel()
    model.run_dir = run_dir
    problems = []
    state = run_state.read_state(run_dir)
    rebuilt = state.get("rebuilt")
    if isinstance(rebuilt, dict):
        problems.append(f"state.json was damaged ({rebuilt.get('problem')}); rebuilt from "
                        f"{', '.join(rebuilt.get('from') or []) or 'nothing'}")
    model.name = state.get("name") or run_dir.name
    model.state = run_state.effective_state(run_dir, state)
    try:
        try:
            data = json.loads((run_dir / "plan.json").read_text())
        except FileNotFoundError:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"{run_dir / 'plan.json'}: expected a JSON object")
        model.plan, model.config = data.get("plan"), dict(data.get("config") or {})
    except (ValueError, OSError) as exc:
        problems.append(f"plan.json: {exc}")
    plan = model.plan or {}
    model.progress = {"step": state.get("step") or 0, "total_steps": state.get("total_steps") or plan.get("total_steps") or 0,
                      "epoch": state.get("epoch"), "total_epochs": plan.get("total_epochs"), "phase": state.get("phase"),
                      "phase_name": state.get("phase_name"), "elapsed": state.get("elapsed"), "eta": state.get("eta"),
                      "phase_etas": [], "metrics": {}, "time": state.get("updated")}
    model.last_checkpoint = state.get("last_checkpoint")
    summary = history.load_summary(run_dir / "history.msgpack", model.monitor_rule)
    # the summary's wall-clock series came later (the comparison's axis): the dashboard never drew it
    model.series = {name: Series.from_wire(body) for name, body in summary.series.items() if name != "time"}
    model.eval_last = state.get("last_eval") or summary.last_eval
    model.eval_best = state.get("best_eval") or summary.best_eval
    events, event_problems = [], []
    for line in tail_lines(run_dir / "events.jsonl", 200):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            event_problems.append(f"events.jsonl: unreadable line ({exc.msg}) near the end")
            continue
        if isinstance(event, dict):
            events.append(event)
    events += [{"time": 0, "kind": "alert", "level": "warning", "message": p, "data": {}}
               for p in problems + event_problems]
    model.reset_feeds(events, [{"stream": "stdout", "line": line} for line in tail_lines(run_dir / "train.log", 200)])
    return model


def _shown(model: RunModel) -> dict:
    """What the dashboard draws from a model (alert times and log bookkeeping left out)."""
    return {
        "name": model.name, "run_dir": model.run_dir, "state": model.state, "config": model.config, "plan": model.plan,
        "progress": model.progress, "eval": (model.eval_last, model.eval_best), "system": model.system,
        "last_checkpoint": model.last_checkpoint, "summary": model.summary,
        "series": {name: (s.steps, s.values, s.mins, s.maxs) for name, s in model.series.items()},
        "events": [{k: v for k, v in e.items() if not (e["kind"] == "alert" and k == "time")} for e in model.events],
        "logs": [(log["stream"], log["line"]) for log in model.logs],
    }


def _damaged_state(run_dir: Path) -> None:
    RunDir(run_dir).state.write_text("{torn")


def _unreadable_event(run_dir: Path) -> None:
    with open(RunDir(run_dir).events, "a") as fh:
        fh.write('{"kind": "checkpoint", "torn\n')


def _damaged_plan(run_dir: Path) -> None:
    RunDir(run_dir).plan.write_text("[]")


@pytest.mark.parametrize("state, finished, damage", [
    ("stopped", False, None), ("finished", True, None), ("running", False, None),
    ("stopped", False, _damaged_state), ("stopped", False, _unreadable_event), ("stopped", False, _damaged_plan),
])
def test_offline_dashboard_shows_what_it_showed_before(tmp_path, state, finished, damage):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state=state, steps=700, finished=finished)
    if damage is not None:
        damage(run_dir)
    expected = _shown(offline_model_before_the_run_layer(run_dir))
    assert _shown(load_run_dir(run_dir)) == expected


def test_offline_dashboard_of_an_empty_run_dir(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    RunDir(run_dir).state.write_text(json.dumps({"name": "empty", "state": "starting"}))
    assert _shown(load_run_dir(run_dir)) == _shown(offline_model_before_the_run_layer(run_dir))


def test_snapshot_has_the_protocol_snapshot_keys(tmp_path):
    run_dir = tui_fakes.write_run_dir(tmp_path / "r", state="stopped", steps=300)
    snapshot = snapshot_from_run_dir(run_dir)
    assert {"state", "config", "plan", "progress", "series", "eval", "events", "logs", "system"} <= set(snapshot)
    assert snapshot["series"] and snapshot["eval"]["last"]["step"] == 300
    assert all(log["seq"] == n for n, log in enumerate(snapshot["logs"], 1))
    lean = snapshot_from_run_dir(run_dir, with_series=False)
    assert lean["series"] == {} and lean["eval"] == snapshot["eval"]  # state.json has both evaluations
    assert {k: v for k, v in lean.items() if k not in ("series", "events")} == \
        {k: v for k, v in snapshot.items() if k not in ("series", "events")}
