"""RUN_DIR/evaluation.json read without torch: the stored results of `longhaul evaluate` (also
run by itself when a run with a test split finishes), for the TUI and anyone else who shows
them.

    {"version": 1, "results": {"<split>/<weights>": RESULT}}

RESULT (issue 11's shared format, written atomically by `trainer.posthoc.evaluate`): split,
weights, step, data (the folder evaluated instead of the run's own, or null), time (unix), n,
classes, accuracy, f1_macro, f1_weighted, auc_roc_macro, auc_pr_macro, per_class (class ->
precision, recall, f1, sensitivity, specificity, ppv, npv, auc_roc, auc_pr, support),
confusion, ci (accuracy / f1_macro / auc_roc_macro -> [lo, hi]), ci_level, bootstrap,
temperature, ece/mce/brier/nll `_before` and `_after` calibration, tta (null or {transforms,
accuracy, f1_macro, auc_roc_macro, per_class, ece_after}).

Readers take every field of a RESULT as optional (`.get`): a field the writer could not compute
(an AUC of a class absent from the split) is null, and an older file may lack newer fields.
`EvaluationWatch` re-reads the file only when it changed (mtime, size or inode), so a screen can
ask every second at the cost of one stat.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Optional

from trainer.run.rundir import RunDir

HEADLINE_SPLIT = "test"


def read_evaluation(run_dir: str | os.PathLike) -> Optional[dict]:
    """The content of evaluation.json with only its well-formed results kept; None when the run
    has none. Raises ValueError naming the file when it is not such an object (damage) and
    OSError when it cannot be read."""
    return _parse(RunDir(run_dir).evaluation)


def _parse(path: os.PathLike) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: expected a JSON object with an object under 'results'")
    results = {key: result for key, result in data["results"].items() if isinstance(result, dict)}
    return {**data, "results": results}


def results_newest_first(evaluation: Optional[dict]) -> list[tuple[str, dict]]:
    """(key, RESULT) pairs of `evaluation`, the newest evaluation first (by `time`; key order
    among equal times)."""
    items = sorted(((evaluation or {}).get("results") or {}).items())
    return sorted(items, key=lambda item: -_number(item[1].get("time")))


def headline_result(evaluation: Optional[dict]) -> Optional[dict]:
    """The result a summary shows: the newest on the test split of the run's own data, else the
    newest of all; None without results."""
    ordered = [result for _, result in results_newest_first(evaluation)]
    for result in ordered:
        if result.get("split") == HEADLINE_SPLIT and not result.get("data"):
            return result
    return ordered[0] if ordered else None


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class EvaluationWatch:
    """The latest content of one evaluation.json, read again only after the file changed.

    `poll()` costs a stat when nothing changed. `value` is the content (None: no file, or a
    damaged one), `error` what was wrong with a damaged or unreadable file (None otherwise).
    Safe to call from a worker thread while another thread reads `value`.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = RunDir(run_dir).evaluation
        self.value: Optional[dict] = None
        self.error: Optional[str] = None
        self.reads = 0
        """How many times the file was read (tests: once per change, not per poll)."""
        self._stamp: Optional[tuple] = None
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """Whether the file differs from what was read last (one stat)."""
        return self._current_stamp() != self._stamp

    def poll(self) -> bool:
        """Read the file if it changed since the last read; True when `value` or `error` changed."""
        with self._lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return False
            before = (self.value, self.error)
            self._stamp = stamp
            if stamp is None:
                self.value, self.error = None, None
            else:
                self._read()
            return (self.value, self.error) != before

    def _read(self) -> None:
        self.reads += 1
        try:
            self.value, self.error = _parse(self.path), None
        except (OSError, ValueError) as exc:
            self.value, self.error = None, str(exc)
            if isinstance(exc, OSError):
                self._stamp = None  # try again at the next poll

    def _current_stamp(self) -> Optional[tuple]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
