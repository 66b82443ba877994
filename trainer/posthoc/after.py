"""What a run gets when it finishes: its test split evaluated with best.pt, then the report.

Called by trainer.worker (daemon runs) and trainer.console (`longhaul train`) once the run is
finished (state.json says so before this starts). Torch-free until there is something to
evaluate: a run without test data costs one look at its config. Never raises: a failure becomes
an `alert` event, the evaluation's summary an `evaluation` event, the report a `report` event.
"""
from __future__ import annotations

from typing import Callable, Optional

from trainer.run.rundir import RunDir

Event = Callable[..., None]
"""The publisher's `event(kind, level, message, **data)`."""


def has_test_split(run_dir) -> bool:
    """Whether the run's config names test data (synthetic test_per_class, ROOT/test/ of a
    folder source, data.test of a file source); nothing is decoded."""
    from trainer.config import load_config

    cfg = load_config(RunDir(run_dir).config, check_paths=False, check_model=False)
    data = cfg.data
    if data.source == "synthetic":
        return data.synthetic.test_per_class > 0
    if data.source in ("audio_folder", "image_folder"):
        return bool(data.root) and (cfg.resolve_path(data.root) / "test").is_dir()
    return bool(data.test)


def after_run(run_dir, event: Event) -> Optional[dict]:
    """Evaluate the finished run's test split (when it has one) and write its report; returns
    the evaluation's RESULT (None when there was none)."""
    result = None
    try:
        if has_test_split(run_dir):
            result = _evaluate_test(run_dir, event)
    except Exception as exc:  # noqa: BLE001 - the run is over and stays finished
        event("alert", "error", f"evaluation after the run failed: {type(exc).__name__}: {exc}",
              what="evaluation_failed")
    out_of_fold(run_dir, event)
    write_report(run_dir, event)
    return result


def out_of_fold(run_dir, event: Event) -> None:
    """A fold of a cross-validation (trainer.run.cv): its held-out fold (the val split) predicted
    with best.pt, then the parent's out-of-fold file written when this was the last fold
    (trainer.run.oof). Nothing for any other run."""
    from trainer.run.cv import fold_parent

    try:
        link = fold_parent(run_dir)
        if link is None:
            return
        from trainer.posthoc.evaluate import evaluate_run

        result = evaluate_run(run_dir, "val", "best")
        event("evaluation", "info", f"held-out fold predicted: {result['n']} examples, accuracy "
              f"{result['accuracy']:.4f}", what="out_of_fold", n=result["n"], accuracy=result["accuracy"],
              f1_macro=result["f1_macro"])
        from trainer.run.oof import collect

        path = collect(link[0], finishing=link[1])
        if path is not None:
            event("evaluation", "info", f"every fold is done: out-of-fold predictions in {path}",
                  what="out_of_fold_collected", path=str(path))
    except Exception as exc:  # noqa: BLE001 - the fold is over and stays finished
        event("alert", "error", f"out-of-fold predictions failed: {type(exc).__name__}: {exc}",
              what="evaluation_failed")


def _evaluate_test(run_dir, event: Event) -> dict:
    from trainer.posthoc.evaluate import evaluate_run, summary_line
    from trainer.run.status import result_summary

    event("evaluation", "info", "evaluating the test split with best.pt", what="evaluation_started")
    result = evaluate_run(run_dir, "test", "best")
    event("evaluation", "info", summary_line(result), what="evaluation", **result_summary(result))
    return result


def write_report(run_dir, event: Event) -> None:
    """trainer.posthoc.report.write_report(run_dir) when this build has it (an `alert` warning
    when it does not)."""
    try:
        from trainer.posthoc.report import write_report as write
        from trainer.posthoc.report_figures import require_matplotlib

        require_matplotlib()
    except Exception as exc:  # noqa: BLE001 - matplotlib is an optional extra: say so, no error
        event("alert", "warning", f"no report written: {exc}", what="report_missing")
        return
    try:
        path = write(run_dir)
    except Exception as exc:  # noqa: BLE001
        event("alert", "error", f"writing the report failed: {type(exc).__name__}: {exc}", what="report_failed")
        return
    event("report", "info", f"report written: {path}", path=str(path))
