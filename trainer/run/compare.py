"""`longhaul compare RUN RUN...`: several runs side by side, from their files alone (no daemon;
a live run is compared as it is now). No torch.

    compare_runs(run_dirs) -> {"runs": [RUN_FACTS, ...], "config_diff": {"key.sub": [v1, v2, ...]}}

RUN_FACTS holds what `status --json` says of the run (name, dir, state, step, total_steps, model,
best, samples_per_s, evaluation: the same functions, so the values are the same), and what the
comparison adds: `parameters` (plan.json's config summary; older runs: the `ready` set-up
event), `best_eval` (the numeric metrics of the best evaluation), `training_seconds` (state.json's
elapsed) and `phases` ([{index, name, steps, seconds}]: training seconds per phase from the
history's `elapsed` series, through the cached summary the dashboards use, so a million-step
history costs a cache read; exact at the summary's bucket ends, interpolated inside a bucket).

`config_diff` holds the dotted keys of the runs' config.yaml (list items by index, as `--set`
writes them: `phases.0.epochs`) whose values differ; a key a run lacks is null for it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from trainer.fmt import MISSING, duration, metric_label, metric_value, samples_rate
from trainer.history.records import is_number
from trainer.monitor import Monitor, direction_of
from trainer.run.errors import RunError
from trainer.run.rundir import RunDir
from trainer.run.state import read_state
from trainer.run.status import plan_summary, status

#: What a run's row of `status --json` the comparison repeats as it is.
STATUS_KEYS = ("name", "dir", "state", "step", "total_steps", "model", "best", "samples_per_s", "evaluation")
#: The evaluation.json fields the table shows (test metrics and calibration).
TEST_KEYS = ("accuracy", "f1_macro", "auc_roc_macro", "temperature", "ece_before", "ece_after")
TEST_LABELS = {"accuracy": "test acc", "f1_macro": "test F1", "auc_roc_macro": "test AUC", "temperature": "temperature",
               "ece_before": "ECE before", "ece_after": "ECE after"}
#: Validation metrics shown in the table besides the run's own monitor.
VAL_KEYS = ("val_loss", "val_accuracy", "val_f1_macro")


class CompareError(RunError, ValueError):
    """The runs cannot be compared (fewer than two, one given twice)."""


def compare_runs(run_dirs: list[Path]) -> dict:
    """The comparison of `run_dirs` (at least two different run directories)."""
    dirs = [Path(d).absolute() for d in run_dirs]
    if len(dirs) < 2:
        raise CompareError(f"compare needs at least two runs, got {len(dirs)}")
    twice = sorted({str(d) for d in dirs if dirs.count(d) > 1})
    if twice:
        raise CompareError(f"a run is given twice: {', '.join(twice)}")
    return {"runs": [run_facts(d) for d in dirs], "config_diff": config_diff([read_config(d) for d in dirs])}


def run_facts(run_dir: Path) -> dict:
    """One run's entry of the comparison (see the module docstring)."""
    info = status(run_dir)
    plan, summary = plan_summary(run_dir)
    facts = {key: info.get(key) for key in STATUS_KEYS}
    best = info.get("best_eval") or {}
    facts["best_eval"] = {key: value for key, value in best.items()
                          if (key.startswith("val_") or key == "step") and is_number(value)}
    facts["parameters"] = parameter_count(run_dir, summary)
    facts["training_seconds"] = _elapsed(run_dir)
    facts["phases"] = phase_seconds(run_dir, plan, summary)
    return facts


def _elapsed(run_dir: Path) -> Optional[float]:
    elapsed = read_state(run_dir).get("elapsed")
    return float(elapsed) if is_number(elapsed) else None


def parameter_count(run_dir: Path, summary: dict) -> Optional[int]:
    """The model's parameter count: plan.json's summary, else the `ready` set-up event of a run
    written before the summary held it (the first such event: one read of events.jsonl)."""
    count = summary.get("parameters")
    if isinstance(count, int):
        return count
    from trainer.run.events import parse_event

    try:
        with open(RunDir(run_dir).events, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if '"ready"' not in line:  # cheap filter before the JSON parse
                    continue
                event = parse_event(line) or {}
                data = event.get("data") if isinstance(event.get("data"), dict) else {}
                if event.get("kind") == "setup" and data.get("stage") == "ready" and isinstance(data.get("parameters"), int):
                    return data["parameters"]
    except OSError:
        return None
    return None


def phase_seconds(run_dir: Path, plan: dict, summary: dict) -> list[dict]:
    """[{index, name, steps, seconds}] per planned phase the run reached: training seconds
    (pauses excluded) between the phase's first and last step, from the `elapsed` series."""
    from trainer.history import load_summary

    try:
        series = load_summary(RunDir(run_dir).history, Monitor.of_summary(summary)).series.get("elapsed")
    except (OSError, ValueError):
        series = None
    points = _elapsed_points(series)
    if not points:  # no training step logged yet (or a history from before `elapsed` was logged)
        return []
    rows = []
    for phase in (plan or {}).get("phases") or []:
        if not isinstance(phase, dict) or not isinstance(phase.get("start_step"), int):
            continue
        start, end = phase["start_step"], phase.get("end_step") or phase["start_step"]
        last = points[-1][0]
        if start >= last:
            break  # not reached yet
        reached = min(end, last)
        seconds = _at(points, reached) - _at(points, start)
        rows.append({"index": phase.get("index"), "name": phase.get("name"), "steps": max(0, reached - start),
                     "seconds": seconds})
    return rows


def _elapsed_points(series: Optional[dict]) -> list[tuple[int, float]]:
    """(step, training seconds) at the end of each bucket of the `elapsed` series (it never
    goes down, so a bucket's max is its value at its last step), from (0, 0)."""
    if not isinstance(series, dict) or not series.get("step"):
        return []
    return [(0, 0.0)] + [(int(s), float(m)) for s, m in zip(series["step"], series["max"])]


def _at(points: list[tuple[int, float]], step: float) -> float:
    """Training seconds at `step`, interpolated between the points around it."""
    for (s0, e0), (s1, e1) in zip(points, points[1:]):
        if step <= s1:
            return e0 + (e1 - e0) * (step - s0) / ((s1 - s0) or 1)
    return points[-1][1]


# ----------------------------------------------------------------------------- the config diff
def read_config(run_dir: Path) -> dict:
    """The run's config.yaml as a mapping ({} when it is missing or not a mapping)."""
    import yaml

    try:
        data = yaml.safe_load(RunDir(run_dir).config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the leaves of a config: mappings and lists of mappings are walked (list
    items by index), anything else (a number, a list of numbers) is a leaf."""
    if isinstance(node, dict):
        items = ((str(key), value) for key, value in node.items())
    elif isinstance(node, list) and any(isinstance(item, (dict, list)) for item in node):
        items = ((str(index), value) for index, value in enumerate(node))
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_diff(configs: list[dict]) -> dict[str, list]:
    """{dotted key: [value of each run]} for the keys whose values differ (missing: None)."""
    flat = [flatten(config) for config in configs]
    keys = sorted(set().union(*flat))
    return {key: [f.get(key) for f in flat] for key in keys if len({_canonical(f.get(key)) for f in flat}) > 1}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- the table
def table_rows(comparison: dict) -> list[tuple[str, list[str], Optional[int]]]:
    """(label, one cell per run, index of the best run or None) of each row of the table."""
    runs = comparison["runs"]
    rows: list[tuple[str, list[Any], Optional[str]]] = [
        ("state", [r["state"] for r in runs], None),
        ("model", [r["model"] for r in runs], None),
        ("parameters", [r["parameters"] for r in runs], None),
        ("step", [f"{r['step'] or 0}/{r['total_steps'] or '?'}" for r in runs], None),
    ]
    monitors = {(r.get("best") or {}).get("metric") for r in runs} - {None}
    for key in sorted(monitors) + [k for k in VAL_KEYS if k not in monitors]:
        rows.append((f"best {metric_label(key)}", [r["best_eval"].get(key) for r in runs], direction_of(key)))
    for key in TEST_KEYS:
        values = [(r.get("evaluation") or {}).get(key) for r in runs]
        label = TEST_LABELS[key]
        rows.append((label, values, None if key == "temperature" else "min" if key.startswith("ece") else "max"))
    rows += _time_rows(runs)
    rows.append(("samples/s", [_Rate(r["samples_per_s"]) if r["samples_per_s"] is not None else None for r in runs], "max"))
    return [(label, [_cell(v) for v in values], _best_index(values, way)) for label, values, way in rows]


def _time_rows(runs: list[dict]) -> list[tuple[str, list, Optional[str]]]:
    names = []
    for run in runs:
        for phase in run["phases"]:
            if (phase["index"], phase["name"]) not in names:
                names.append((phase["index"], phase["name"]))
    rows = []
    for index, name in names:
        seconds = [next((p["seconds"] for p in r["phases"] if (p["index"], p["name"]) == (index, name)), None)
                   for r in runs]
        rows.append((f"time {index + 1 if isinstance(index, int) else '?'} {name}", [_Duration(s) if s is not None else None for s in seconds], None))
    rows.append(("time total", [_Duration(r["training_seconds"]) if r["training_seconds"] is not None else None
                                for r in runs], None))
    return rows


class _Duration(float):
    """Seconds shown as a duration in a cell."""


class _Rate(float):
    """samples/s shown as `longhaul ls` shows them."""


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, _Duration):
        return duration(value)
    if isinstance(value, _Rate):
        return samples_rate(value)
    if isinstance(value, bool) or not is_number(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return metric_value(value)


def _best_index(values: list, way: Optional[str]) -> Optional[int]:
    """The run with the best value of a row (`way`: max or min); None for a row without a
    direction, with fewer than two values, or a tie for the best."""
    known = [(v, i) for i, v in enumerate(values) if is_number(v) and math.isfinite(v)]
    if way is None or len(known) < 2:
        return None
    best = max(v for v, _ in known) if way == "max" else min(v for v, _ in known)
    winners = [i for v, i in known if v == best]
    return winners[0] if len(winners) == 1 else None


BEST_MARK = "*"


def format_table(comparison: dict) -> str:
    """The human table: one row per field, one column per run, the best of a row marked *,
    then the config keys that differ."""
    runs = comparison["runs"]
    header = ["", *column_names(runs)]
    body = [[label, *[cell + (BEST_MARK if i == best else "") for i, cell in enumerate(cells)]]
            for label, cells, best in table_rows(comparison)]
    diff = comparison["config_diff"]
    if diff:
        body.append([""] * len(header))
        body += [[f"config {key}", *[_config_cell(v) for v in values]] for key, values in diff.items()]
    widths = [max(len(row[c]) for row in [header] + body) for c in range(len(header))]
    lines = ["  ".join(text.ljust(w) if c == 0 else text.rjust(w) for c, (text, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header] + body]
    footer = f"{BEST_MARK} best of the row" + ("" if diff else "; the configs do not differ")
    return "\n".join(lines + [footer])


def column_names(runs: list[dict]) -> list[str]:
    """Each run's name, or its directory's where two runs share a name (a config's default)."""
    names = [str(r["name"]) for r in runs]
    return names if len(set(names)) == len(names) else [Path(r["dir"]).name for r in runs]


def _config_cell(value: Any) -> str:
    return MISSING if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
