"""`longhaul report RUN [--out FILE]`: a run in one self-contained HTML page.

Sections: training curves (loss and its smoothing, validation loss, accuracy, F1, LR, phase
boundaries from plan.json), the latest evaluation (headline metrics with their intervals, TTA
beside), confusion matrix (counts and row-normalised), per-class table, ROC and PR curves and the
reliability diagrams before and after calibration (from the evaluation's predictions file), time
per phase (the history's time column), checkpoint, crash, restart and alert events, and the
config. Images are PNG embedded as base64; no network, no external CSS or JS. A section whose data
is missing (no evaluation yet, no test split) says so instead of failing.

Everything is read through the run layer (RunDir, read_plan, parse_event, read_state) and the
history (load_series, read_history). Torch-free: numpy, and matplotlib (the `report` extra) for
the figures (report_figures.py).
"""
from __future__ import annotations

import html
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from trainer.fmt import duration
from trainer.history import TRAIN, HistoryError, SeriesSet, load_series, read_history
from trainer.history.records import is_number
from trainer.monitor import Monitor
from trainer.posthoc import report_figures as figs
from trainer.posthoc.report_figures import ReportError, require_matplotlib
from trainer.run.events import parse_event
from trainer.run.plan import read_plan
from trainer.run.rundir import RunDir, atomic_write_bytes
from trainer.run.state import read_state

__all__ = ["ReportError", "main", "write_report", "render_report"]

#: Events the report lists (events.jsonl kinds; docs/PROTOCOL.md "Event kinds").
EVENT_KINDS = ("checkpoint", "checkpoint_failed", "crash", "restart", "alert")
#: Rows of the event tables: the most recent ones (older ones are counted).
EVENT_ROWS = 200
CHECKPOINT_ROWS = 20
#: A pause between two history records longer than max(GAP_MIN_S, GAP_MEDIANS x the median pause)
#: is an interruption (the run was stopped, crashed or paused), not training time.
GAP_MIN_S, GAP_MEDIANS = 600.0, 50.0
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "auc_roc_macro", "auc_pr_macro")
PER_CLASS = ("precision", "recall", "f1", "sensitivity", "specificity", "ppv", "npv", "auc_roc", "auc_pr", "support")
CALIBRATION = ("ece", "mce", "brier", "nll")


def main(args, run_dir) -> int:
    """`longhaul report`: write the report, print where (and any section left incomplete)."""
    problems: list[str] = []
    return say_written(write_report(run_dir, getattr(args, "out", None), problems), problems)


def say_written(path: Path, problems: list[str]) -> int:
    """Where a page went, and what it left out (on stderr)."""
    for problem in problems:
        print(f"longhaul report: warning: {problem}", file=sys.stderr)
    print(f"report: {path}")
    return 0


def write_report(run_dir, out=None, problems: Optional[list] = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN/report.html) atomically; return the
    path. Problems with the run's files (damaged, inconsistent) are written into the page and
    appended to `problems`; a missing extra or an unwritable `out` is a ReportError."""
    require_matplotlib()
    rundir = RunDir(run_dir)
    path = Path(out) if out else rundir.report
    if path.is_dir():
        raise ReportError(f"cannot write the report to {path}: it is a directory (give a file name)")
    if not path.parent.is_dir():
        raise ReportError(f"cannot write the report to {path}: the folder {path.parent} does not exist")
    data = load_run(rundir)
    page = render_report(data)
    try:
        atomic_write_bytes(path, page.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    if problems is not None:
        problems.extend(data.problems)
    return path


# ----------------------------------------------------------------------------- the run's data
@dataclass
class RunData:
    """What the report shows, read once from the run directory."""

    rundir: RunDir
    state: dict = field(default_factory=dict)
    plan: Optional[dict] = None
    summary: dict = field(default_factory=dict)
    series: Optional[SeriesSet] = None
    phase_times: list = field(default_factory=list)
    events: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    result_key: Optional[str] = None
    predictions: Optional[dict] = None
    calibration: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def result(self) -> Optional[dict]:
        return self.results.get(self.result_key) if self.result_key else None


def load_run(rundir: RunDir) -> RunData:
    """Everything the report needs; each file that cannot be read adds a problem, not an error."""
    data = RunData(rundir)
    steps: list[tuple[str, Callable[[RunData], None]]] = [
        (rundir.state.name, _load_state), (rundir.plan.name, _load_plan),
        (rundir.history.name, _load_history), (rundir.events.name, _load_events),
        (rundir.evaluation.name, _load_evaluation), (rundir.calibration.name, _load_calibration),
    ]
    for name, load in steps:
        try:
            load(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            data.problems.append(f"{rundir.path / name}: {exc}")
    if data.result is not None:
        try:
            _load_predictions(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            data.problems.append(f"predictions of {data.result_key}: {exc}")
    return data


def _load_state(data: RunData) -> None:
    if data.rundir.state.is_file():
        data.state = read_state(data.rundir.path)


def _load_plan(data: RunData) -> None:
    data.plan, data.summary = read_plan(data.rundir.path)


def _load_history(data: RunData) -> None:
    path = data.rundir.history
    if not path.is_file():
        return
    try:
        data.series = load_series(path, Monitor.of_summary(data.summary))
        data.phase_times = phase_times(path, data.plan)
    except HistoryError as exc:
        raise ValueError(str(exc)) from None


def _load_events(data: RunData) -> None:
    data.events = {kind: [] for kind in EVENT_KINDS}
    try:
        fh = open(data.rundir.events, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            event = parse_event(line)
            if event is not None and event.get("kind") in data.events:
                data.events[event["kind"]].append(event)


def _load_evaluation(data: RunData) -> None:
    path = data.rundir.evaluation
    if not path.is_file():
        return
    body = json.loads(path.read_text())
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, dict):
        raise ValueError("expected a JSON object with an object under 'results'")
    data.results = {key: value for key, value in results.items() if isinstance(value, dict)}
    data.result_key = headline_result(data.results)


def headline_result(results: dict) -> Optional[str]:
    """The evaluation the report shows: the latest on the test split, else the latest of any."""
    def latest(keys):
        return max(keys, key=lambda k: (_number(results[k].get("time")) or 0.0, k), default=None)

    return latest([k for k in results if results[k].get("split", k.split("/")[0]) == "test"]) or latest(list(results))


def _load_calibration(data: RunData) -> None:
    path = data.rundir.calibration
    if path.is_file():
        body = json.loads(path.read_text())
        weights = body.get("weights") if isinstance(body, dict) else None
        if not isinstance(weights, dict):
            raise ValueError("expected a JSON object with an object under 'weights'")
        data.calibration = {k: v for k, v in weights.items() if isinstance(v, dict)}


def _load_predictions(data: RunData) -> None:
    result = data.result
    split, weights = data.result_key.split("/", 1) if "/" in data.result_key else (result["split"], result["weights"])
    path = data.rundir.predictions(result.get("split", split), result.get("weights", weights))
    if not path.is_file():
        data.problems.append(f"{path} is missing: the curves of {data.result_key} are left out")
        return
    with np.load(path, allow_pickle=False) as npz:
        labels, logits = np.asarray(npz["labels"]), np.asarray(npz["logits"], dtype=np.float64)
        classes = [str(c) for c in npz["classes"]]
        tta = np.asarray(npz["tta_probs"], dtype=np.float64) if "tta_probs" in npz.files else None
    if labels.ndim != 1 or logits.shape != (len(labels), len(classes)) or len(classes) < 2:
        raise ValueError(f"{path}: expected labels (N,), logits (N, C) and classes (C,) with C >= 2,"
                         f" found {labels.shape}, {logits.shape}, {len(classes)} classes")
    if tta is not None and tta.shape != logits.shape:
        raise ValueError(f"{path}: tta_probs has the shape {tta.shape}, the logits {logits.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{path}: labels outside 0..{len(classes) - 1}")
    n = result.get("n")
    if isinstance(n, int) and n != len(labels):
        data.problems.append(f"{path} has {len(labels)} examples, the evaluation {n}: it may be stale")
    data.predictions = {"path": path, "labels": labels.astype(np.int64), "logits": logits,
                        "classes": classes, "tta_probs": tta}


def phase_times(path: Path, plan: Optional[dict]) -> list[dict]:
    """Per phase of the history: steps, first and last record time, training seconds (pauses
    between records, interruptions left out) and interruptions (count and seconds)."""
    times, phases, steps = [], [], []
    for record in read_history(path):
        if is_number(record.get("time")) and isinstance(record.get("phase"), int):
            times.append(float(record["time"]))
            phases.append(record["phase"])
            steps.append(record["step"] if record["kind"] == TRAIN else -1)
    if not times:
        return []
    times_a, phases_a, steps_a = np.array(times), np.array(phases), np.array(steps)
    pauses = np.diff(times_a, prepend=times_a[0])
    positive = pauses[pauses > 0]
    limit = max(GAP_MIN_S, GAP_MEDIANS * float(np.median(positive))) if len(positive) else GAP_MIN_S
    names = {p.get("index"): p.get("name") for p in (plan or {}).get("phases", []) if isinstance(p, dict)}
    rows = []
    for index in sorted(set(phases)):
        mine = phases_a == index
        pause, trained = pauses[mine], steps_a[mine & (steps_a >= 0)]
        gaps = pause > limit
        rows.append({"index": index, "name": names.get(index) or f"phase {index + 1}",
                     "first_step": int(trained.min()) if len(trained) else None,
                     "last_step": int(trained.max()) if len(trained) else None,
                     "start": float(times_a[mine].min()), "end": float(times_a[mine].max()),
                     "active_s": float(pause[~gaps].sum()), "gap_s": float(pause[gaps].sum()),
                     "gaps": int(gaps.sum()), "gap_limit_s": limit})
    return rows


# ----------------------------------------------------------------------------- formatting
def _number(value: Any) -> Optional[float]:
    return float(value) if is_number(value) and math.isfinite(value) else None


def fmt_value(value: Any, digits: int = 4) -> str:
    """A table cell: ints as they are, floats to `digits` places, missing as a dash."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def fmt_time(unix: Any) -> str:
    value = _number(unix)
    return "–" if value is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; headers are escaped, cells go through fmt_value (pre-rendered HTML: wrap in _Html)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else fmt_value(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Html(str):
    """Text already escaped (or markup) for a table cell."""


def note(text: str) -> str:
    """A paragraph saying what is missing and why (text is escaped)."""
    return f'<p class="note">{html.escape(text)}</p>'


# ----------------------------------------------------------------------------- the page
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; white-space: nowrap; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #8a5a00; background: #fff8e5; padding: 0.4em 0.8em; border-left: 3px solid #e0a800; }
.meta { color: #555; }
"""

#: (anchor, heading, builder) of each section, in page order.
SECTIONS: list[tuple[str, str, Callable[[RunData], str]]] = []


def section(anchor: str, heading: str):
    """Register a section builder (RunData -> HTML body) under its heading."""
    def register(build: Callable[[RunData], str]) -> Callable[[RunData], str]:
        SECTIONS.append((anchor, heading, build))
        return build
    return register


def render_report(data: RunData) -> str:
    """The whole page. A section that fails on damaged data shows the error; the others go on."""
    parts = []
    for anchor, heading, build in SECTIONS:
        try:
            body = build(data)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            data.problems.append(f"section {heading!r}: {type(exc).__name__}: {exc}")
            body = note(f"This section could not be drawn: {type(exc).__name__}: {exc}")
        parts.append(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{body}\n</section>')
    nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in SECTIONS)
    problems = "".join(note(p) for p in data.problems)
    title = f"longhaul report: {data.rundir.name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{_overview(data)}\n<nav>{nav}</nav>\n{problems}\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _overview(data: RunData) -> str:
    state, summary = data.state, data.summary
    classes = summary.get("classes") or (data.result or {}).get("classes") or []
    facts = [("run", str(data.rundir.path)), ("state", state.get("state")),
             ("step", f"{fmt_value(state.get('step'))} of {fmt_value(state.get('total_steps') or (data.plan or {}).get('total_steps'))}"),
             ("model", summary.get("model")), ("data", f"{summary.get('source', '–')}, {summary.get('features', '–')}"),
             ("classes", f"{len(classes)}: {', '.join(map(str, classes))}" if classes else None),
             ("examples", f"{fmt_value(summary.get('n_train'))} train, {fmt_value(summary.get('n_val'))} val"),
             ("training time", duration(_number(state.get("elapsed")))),
             ("written", fmt_time(time.time()))]
    items = "".join(f"<b>{html.escape(k)}</b> {html.escape(str(v)) if v is not None else '–'} · "
                    for k, v in facts)
    return f'<p class="meta">{items.rstrip(" · ")}</p>'


@section("curves", "Training curves")
def _curves_section(data: RunData) -> str:
    if data.series is None or not data.series.series:
        return note(f"No training history yet ({data.rundir.history.name} is missing or empty).")
    series = {name: ds.to_dict() for name, ds in data.series.series.items()}
    phases = [(int(p.get("start_step", 0)), str(p.get("name", p.get("index"))))
              for p in (data.plan or {}).get("phases", []) if isinstance(p, dict)]
    lr_plan = (data.plan or {}).get("lr_curve") or []
    image = figs.training_figure(series, phases, lr_plan)
    if image is None:
        return note("The history has no loss, accuracy, F1 or learning-rate series to draw.")
    text = ("Train loss per step (mean of each plotted bucket; the band is its min-max), its "
            "exponential smoothing, and the validation metrics at each evaluation. Dotted lines: "
            "phase boundaries from plan.json." + ("" if data.plan else " (plan.json is missing: no phase boundaries.)"))
    best = data.series.best_eval
    if best:
        text += f" Best evaluation ({data.series.monitor.metric}): step {best.get('step')}."
    return f"<p>{html.escape(text)}</p>{image}"


def _no_evaluation(data: RunData) -> Optional[str]:
    """The note of a section that needs an evaluation, when there is none."""
    if data.result is None:
        return note(f"No evaluation yet: run `longhaul evaluate {data.rundir.name}` "
                    "(on the test split by default) and write the report again.")
    return None


@section("evaluation", "Evaluation")
def _evaluation_section(data: RunData) -> str:
    missing = _no_evaluation(data)
    if missing:
        return missing
    r = data.result
    parts = []
    if r.get("split") != "test":
        parts.append(note(f"No evaluation on a test split (the run may have none): showing {data.result_key}."))
    parts.append(f"<p>{html.escape(data.result_key)}: {fmt_value(r.get('n'))} examples from "
                 f"{html.escape(str(r.get('data') or 'the run data'))}, weights {html.escape(str(r.get('weights')))} "
                 f"(step {fmt_value(r.get('step'))}), evaluated {fmt_time(r.get('time'))}.</p>")
    ci, tta = r.get("ci") or {}, r.get("tta")
    level = r.get("ci_level", 0.95)
    headers = ["metric", "value", f"{_percent(level)} interval"] + (["with TTA"] if tta else [])
    rows = []
    for key in HEADLINE:
        interval = ci.get(key)
        shown = (_Html(f"{fmt_value(interval[0])} – {fmt_value(interval[1])}")
                 if isinstance(interval, (list, tuple)) and len(interval) == 2 else None)
        rows.append([key, r.get(key), shown] + ([tta.get(key)] if tta else []))
    parts.append(table(headers, rows))
    if r.get("bootstrap"):
        parts.append(f"<p>Intervals: bootstrap, {fmt_value(r.get('bootstrap'))} resamples.</p>")
    if tta:
        names = ", ".join(map(str, tta.get("transforms") or []))
        parts.append(f"<p>Test-time augmentation: {html.escape(names or 'the run list')}.</p>")
    if len(data.results) > 1:
        parts.append("<h3>All evaluations</h3>" + _all_results(data.results))
    return "\n".join(parts)


def _percent(level: Any) -> str:
    value = _number(level)
    return "–" if value is None else f"{100 * value:g}%"


def _all_results(results: dict) -> str:
    rows = [[key, r.get("n"), r.get("accuracy"), r.get("f1_macro"), r.get("auc_roc_macro"),
             r.get("ece_before"), r.get("ece_after"), fmt_time(r.get("time"))]
            for key, r in sorted(results.items())]
    return table(["split/weights", "n", "accuracy", "f1_macro", "auc_roc_macro", "ece before", "ece after",
                  "evaluated"], rows)


@section("confusion", "Confusion matrix")
def _confusion_section(data: RunData) -> str:
    missing = _no_evaluation(data)
    if missing:
        return missing
    confusion, classes = data.result.get("confusion"), data.result.get("classes")
    if not confusion or not classes:
        return note(f"{data.result_key} has no confusion matrix.")
    if len(confusion) != len(classes) or any(len(row) != len(classes) for row in confusion):
        raise ValueError(f"the confusion matrix of {data.result_key} is not {len(classes)} x {len(classes)}")
    return (f"<p>{html.escape(data.result_key)}: rows are the true class, columns the predicted one; "
            "row-normalised cells are the share of each true class (recall on the diagonal).</p>"
            + figs.confusion_figure(confusion, [str(c) for c in classes]))


@section("per-class", "Per-class metrics")
def _per_class_section(data: RunData) -> str:
    missing = _no_evaluation(data)
    if missing:
        return missing
    per_class = data.result.get("per_class") or {}
    if not per_class:
        return note(f"{data.result_key} has no per-class metrics.")
    rows = [[name] + [(m or {}).get(key) for key in PER_CLASS] for name, m in per_class.items()]
    parts = [f"<p>{html.escape(data.result_key)}, one class against the rest. Sensitivity = recall, "
             "PPV = precision; NPV and specificity count the other classes as negatives.</p>",
             table(["class", *PER_CLASS], rows)]
    tta = data.result.get("tta") or {}
    if tta.get("per_class"):
        rows = [[name] + [(m or {}).get(key) for key in PER_CLASS] for name, m in tta["per_class"].items()]
        parts += ["<h3>With test-time augmentation</h3>", table(["class", *PER_CLASS], rows)]
    return "\n".join(parts)


def _probabilities(data: RunData) -> tuple[Optional[str], float]:
    """A note when the curves cannot be drawn (else None), and the evaluation's temperature."""
    missing = _no_evaluation(data)
    if missing:
        return missing, 1.0
    temperature = _number(data.result.get("temperature")) or 1.0
    if data.predictions is None:
        return note(f"The predictions file of {data.result_key} is missing or unreadable: run "
                    f"`longhaul evaluate {data.rundir.name}` again to draw these curves."), temperature
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} of {data.result_key} is not positive")
    return None, temperature


@section("roc-pr", "ROC and PR curves")
def _roc_pr_section(data: RunData) -> str:
    missing, temperature = _probabilities(data)
    if missing:
        return missing
    p = data.predictions
    probs = figs.softmax(p["logits"], temperature)
    what = "its positive class" if len(p["classes"]) == 2 else "each class against the rest"
    tta = " Dashed: with test-time augmentation." if p["tta_probs"] is not None else ""
    return (f"<p>{html.escape(data.result_key)}, {what}, from the calibrated probabilities "
            f"(T = {temperature:.4g}) of {len(p['labels']):,} examples.{tta}</p>"
            + figs.roc_pr_figure(p["labels"], probs, p["classes"], p["tta_probs"]))


@section("calibration", "Calibration")
def _calibration_section(data: RunData) -> str:
    parts = []
    if data.calibration:
        rows = [[w, c.get("temperature"), c.get("step"), c.get("split"), c.get("nll_before"), c.get("nll_after")]
                for w, c in sorted(data.calibration.items())]
        parts.append("<p>Temperature scaling fitted on the validation split (calibration.json):</p>"
                     + table(["weights", "temperature", "step", "fitted on", "NLL before", "NLL after"], rows))
    else:
        parts.append(note(f"No calibration yet ({data.rundir.calibration.name} is missing): `longhaul evaluate` fits it."))
    missing, temperature = _probabilities(data)
    if data.result is not None:
        r = data.result
        rows = [[m.upper(), r.get(f"{m}_before"), r.get(f"{m}_after")] for m in CALIBRATION]
        parts.append(f"<p>{html.escape(data.result_key)} (ECE: {figs.RELIABILITY_BINS} equal-width bins):</p>"
                     + table(["metric", "before", "after"], rows))
    if missing:
        return "\n".join(parts + [missing])
    p = data.predictions
    before, after = figs.softmax(p["logits"]), figs.softmax(p["logits"], temperature)
    parts.append(figs.reliability_figure(p["labels"], before, after, temperature))
    return "\n".join(parts)


@section("time", "Time per phase")
def _time_section(data: RunData) -> str:
    if not data.phase_times:
        return note("No timed records in the history yet.")
    rows = []
    for row in data.phase_times:
        first, last = row["first_step"], row["last_step"]
        steps = (last - first + 1) if first is not None else None
        rate = steps / row["active_s"] if steps and row["active_s"] > 0 else None
        rows.append([f"{row['index'] + 1}. {row['name']}", _Html(f"{fmt_value(first)} – {fmt_value(last)}"),
                     fmt_time(row["start"]), fmt_time(row["end"]), duration(row["active_s"]),
                     row["gaps"], duration(row["gap_s"]), rate])
    total = sum(r["active_s"] for r in data.phase_times)
    limit = data.phase_times[0]["gap_limit_s"]
    text = (f"From the history's time column: training time sums the pauses between records "
            f"(evaluations and checkpoints included); a pause over {duration(limit)} counts as an "
            f"interruption (stopped, crashed, paused). Training time in all: {duration(total)}.")
    return (f"<p>{html.escape(text)}</p>"
            + table(["phase", "steps", "first record", "last record", "training", "interruptions",
                     "interrupted for", "steps/s"], rows)
            + (figs.phase_time_figure(data.phase_times) or ""))


@section("events", "Checkpoints and crashes")
def _events_section(data: RunData) -> str:
    events = data.events or {}
    checkpoints = events.get("checkpoint", [])
    parts = [_checkpoint_summary(checkpoints)]
    trouble = sorted((e for kind in EVENT_KINDS if kind != "checkpoint" for e in events.get(kind, [])),
                     key=lambda e: e.get("seq", 0))
    if trouble:
        shown = trouble[-EVENT_ROWS:]
        if len(trouble) > len(shown):
            parts.append(note(f"{len(trouble) - len(shown)} older events left out."))
        parts.append(table(["time", "kind", "level", "message"],
                           [[fmt_time(e.get("time")), e.get("kind"), e.get("level"), _event_message(e)] for e in shown]))
    else:
        parts.append("<p>No crash, restart, failed checkpoint or alert.</p>")
    return "\n".join(parts)


def _checkpoint_summary(checkpoints: list[dict]) -> str:
    if not checkpoints:
        return note("No checkpoint events (the run has no event log, or none in it).")
    stalls = [s for s in (_number((e.get("data") or {}).get("stall_s")) for e in checkpoints) if s is not None]
    writes = [s for s in (_number((e.get("data") or {}).get("write_s")) for e in checkpoints) if s is not None]
    text = f"{len(checkpoints):,} checkpoints"
    if stalls:
        text += f"; training stalled {1000 * float(np.median(stalls)):.0f} ms (median), {1000 * max(stalls):.0f} ms at most"
    if writes:
        text += f"; writes took {float(np.median(writes)):.2f} s (median), {max(writes):.2f} s at most"
    rows = [[fmt_time(e.get("time")), (e.get("data") or {}).get("step"), (e.get("data") or {}).get("stall_s"),
             (e.get("data") or {}).get("write_s"), _size((e.get("data") or {}).get("bytes"))]
            for e in checkpoints[-CHECKPOINT_ROWS:]]
    return (f"<p>{html.escape(text)}. The last {len(rows)}:</p>"
            + table(["time", "step", "stall (s)", "write (s)", "size"], rows))


def _size(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if number < 1024 or unit == "GB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return "–"


def _event_message(event: dict) -> _Html:
    text = html.escape(str(event.get("message", "")))
    traceback = (event.get("data") or {}).get("traceback")
    if traceback:
        text += f"<details><summary>traceback</summary><pre>{html.escape(str(traceback))}</pre></details>"
    return _Html(text)


@section("config", "Config")
def _config_section(data: RunData) -> str:
    try:
        text = data.rundir.config.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return note(f"{data.rundir.config.name} is missing.")
    except OSError as exc:
        return note(f"{data.rundir.config} cannot be read: {exc.strerror or exc}")
    return f"<p>The run's resolved config ({html.escape(str(data.rundir.config))}):</p><pre>{html.escape(text)}</pre>"
