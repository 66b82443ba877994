"""A run's stored evaluation (evaluation.json, read by `trainer.run.evaluation`) on screen: the
headline metrics with their confidence intervals, the calibration, and the per-class table.

The final summary (`tui.screens.dialogs.SummaryScreen`) shows the headline result (the newest on
the test split); the detail view offers a per-class table of every stored result (with and
without TTA). Every field of a result is optional here: a missing one shows as `–`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rich.text import Text
from textual.widgets import DataTable

from trainer.run.evaluation import results_newest_first
from tui import fmt

HEADLINE = (("accuracy", "accuracy"), ("F1 macro", "f1_macro"), ("AUC-ROC macro", "auc_roc_macro"),
            ("F1 weighted", "f1_weighted"), ("AUC-PR macro", "auc_pr_macro"))
"""(label, field) of the summary's metrics; the first three have bootstrap intervals."""
TTA_FIELDS = ("accuracy", "f1_macro", "auc_roc_macro")
CALIBRATION = (("ECE", "ece"), ("MCE", "mce"), ("Brier", "brier"), ("NLL", "nll"))
"""(label, field prefix): `<prefix>_before` and `<prefix>_after` the temperature."""
PER_CLASS = (("sens.", "sensitivity"), ("spec.", "specificity"), ("PPV", "ppv"), ("NPV", "npv"),
             ("AUC-ROC", "auc_roc"), ("n", "support"), ("AUC-PR", "auc_pr"), ("F1", "f1"))
"""(column, field) of the per-class table, after the class: the clinical columns and the support
first, so that on a narrow screen the columns cut off are the least needed."""
OPTION_PREFIX = "eval:"
"""Detail-view option ids of per-class tables: `eval:<split>/<weights>` (`…:tta` with TTA)."""


def result_title(result: dict, clock: Optional[fmt.Clock] = None) -> str:
    """`test split · best weights (step 17,500) · n 1,200 · 2026-11-27 16:05`."""
    parts = [f"{result.get('split') or '?'} split"]
    if result.get("data"):
        parts[0] += f" of {result['data']}"
    parts.append(f"{result.get('weights') or '?'} weights (step {fmt.count(result.get('step'))})")
    parts.append(f"n {fmt.count(result.get('n'))}")
    if clock is not None and isinstance(result.get("time"), (int, float)):
        parts.append(clock.local(result["time"]).strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts)


def stale_note(result: dict, best_step: Optional[int]) -> Optional[str]:
    """A warning when `best.pt` moved on after this evaluation of it (the run was resumed)."""
    step = result.get("step")
    if result.get("weights") != "best" or not isinstance(step, int) or not isinstance(best_step, int):
        return None
    if best_step <= step:
        return None
    return (f"best.pt is now from step {fmt.count(best_step)}: this evaluation is older "
            f"(run `longhaul evaluate` again)")


def ci_label(result: dict) -> str:
    level = result.get("ci_level")
    return f"{level * 100:.0f}% interval" if isinstance(level, (int, float)) else "interval"


def headline_columns(result: dict) -> list[str]:
    columns = ["metric", "value", ci_label(result)]
    tta = result.get("tta")
    if isinstance(tta, dict):
        columns.append(f"with TTA ×{len(tta.get('transforms') or [])}")
    return columns


def headline_rows(result: dict) -> list[tuple[str, ...]]:
    """(metric, value, interval[, with TTA]) for the summary's metrics."""
    ci = result.get("ci") if isinstance(result.get("ci"), dict) else {}
    tta = result.get("tta") if isinstance(result.get("tta"), dict) else None
    rows = []
    for label, key in HEADLINE:
        row = (label, fmt.score(result.get(key)), fmt.interval(ci.get(key)))
        if tta is not None:
            row += (fmt.score(tta.get(key)) if key in TTA_FIELDS else fmt.MISSING,)
        rows.append(row)
    return rows


def calibration_text(result: dict) -> Text:
    """`Calibration: temperature 1.43 · ECE 0.081 → 0.023 · MCE … · Brier … · NLL …`."""
    temperature = result.get("temperature")
    text = Text.assemble(("Calibration: ", "bold"), f"temperature {fmt.metric(temperature)}")
    if result.get("calibration_split"):
        text.append(f" (fitted on {result['calibration_split']})")
    for label, prefix in CALIBRATION:
        before, after = result.get(f"{prefix}_before"), result.get(f"{prefix}_after")
        if before is None and after is None:
            continue
        text.append(f" · {label} {fmt.score(before)} → ")
        text.append(fmt.score(after), style="bold")
    tta = result.get("tta")
    if isinstance(tta, dict) and tta.get("ece_after") is not None:
        text.append(f" · ECE with TTA {fmt.score(tta['ece_after'])}")
    return text


def per_class_rows(per_class: dict, classes: Optional[list] = None) -> list[tuple[str, ...]]:
    """(class, sensitivity, specificity, PPV, NPV, AUC-ROC, support, AUC-PR, F1) per class, in
    the run's class order."""
    names = [c for c in (classes or []) if c in per_class] + sorted(set(per_class) - set(classes or []))
    rows = []
    for name in names:
        values = per_class[name] if isinstance(per_class[name], dict) else {}
        rows.append((Text(str(name)), *(fmt.count(values.get(key)) if key == "support" else fmt.score(values.get(key))
                                  for _, key in PER_CLASS)))
    return rows


def fill_per_class_table(table: DataTable, per_class: dict, classes: Optional[list] = None) -> None:
    """Replace `table`'s columns and rows with the per-class table."""
    table.clear(columns=True)
    table.add_columns("class", *(label for label, _ in PER_CLASS))
    table.add_rows(per_class_rows(per_class, classes))


def evaluation_options(evaluation: Optional[dict]) -> list[tuple[str, str]]:
    """(option id, label) of the detail view's per-class tables, the newest result first."""
    options = []
    for key, result in results_newest_first(evaluation):
        options.append((f"{OPTION_PREFIX}{key}", f"▤ {key}"))
        if isinstance(result.get("tta"), dict) and isinstance(result["tta"].get("per_class"), dict):
            options.append((f"{OPTION_PREFIX}{key}:tta", f"▤ {key} +TTA"))
    return options


def option_result(evaluation: Optional[dict], option: Optional[str]) -> tuple[Optional[dict], bool]:
    """(the result a detail-view option shows, whether with TTA); (None, False) when gone."""
    if not option or not option.startswith(OPTION_PREFIX):
        return None, False
    key, tta = option[len(OPTION_PREFIX):], False
    if key.endswith(":tta"):
        key, tta = key[:-len(":tta")], True
    result = ((evaluation or {}).get("results") or {}).get(key)
    return result, tta


CELL_PADDING = 2
"""Columns a DataTable adds to each column (one blank each side)."""
CORNER = "true \\ pred"
RECALL = "recall"
NAME_CUT = 10
"""Longest class name written above a column of the named layout."""


@dataclass(frozen=True)
class ConfusionLayout:
    """How a confusion matrix is laid out in `width` columns.

    Named: class names label rows and columns, recall last. Numbered (when the names do not fit):
    columns are numbered and each row label is the legend (`3 malignant…`), so any number of
    long names fits. When even the numbers do not fit, the table scrolls sideways and recall
    moves next to the row labels so that it never scrolls away (`scrolls` says to show a hint).
    """

    columns: list[str]
    """Plain text (a class name is never markup); the dialog makes them `Text`."""
    rows: list[list]
    """Cells as `Text`: DataTable would read a `str` as markup, eating `[bg]` from a class name."""
    numbered: bool
    scrolls: bool


def confusion_layout(confusion: list[list[int]], classes: list, width: int) -> ConfusionLayout:
    n = len(confusion)
    names = [str(c) for c in classes[:n]] + [str(i) for i in range(len(classes), n)]
    digits = max((len(str(v)) for row in confusion for v in row), default=1)
    recalls = [Text(fmt.percent(row[i] / sum(row) if sum(row) and i < len(row) else None), justify="right")
               for i, row in enumerate(confusion)]
    recall_width = max([len(RECALL), *(len(r.plain) for r in recalls)])

    def total(label: int, cells: list[int]) -> int:
        return sum(w + CELL_PADDING for w in (label, *cells, recall_width))

    named_cells = [max(digits, len(name[:NAME_CUT])) for name in names]
    label_full = max([len(CORNER), *map(len, names)])
    if total(label_full, named_cells) <= width:
        return ConfusionLayout([CORNER, *(name[:NAME_CUT] for name in names), RECALL],
                               [[Text(name), *cells(row, i), recalls[i]] for i, (name, row) in enumerate(zip(names, confusion))],
                               numbered=False, scrolls=False)
    numbers = [str(i + 1) for i in range(n)]
    numbered_cells = [max(digits, len(number)) for number in numbers]
    legend = [f"{number} {name}" for number, name in zip(numbers, names)]
    label = max(len(CORNER), min(max(map(len, legend), default=0), width - total(0, numbered_cells)))
    labels = [Text(fmt.clip(text, label)) for text in legend]
    if total(label, numbered_cells) <= width:
        return ConfusionLayout([CORNER, *numbers, RECALL],
                               [[labels[i], *cells(row, i), recalls[i]] for i, row in enumerate(confusion)],
                               numbered=True, scrolls=False)
    return ConfusionLayout([CORNER, RECALL, *numbers],
                           [[labels[i], recalls[i], *cells(row, i)] for i, row in enumerate(confusion)],
                           numbered=True, scrolls=True)


def cells(row: list[int], diagonal: int) -> list[Text]:
    """A row's counts, the correct predictions (the diagonal) in bold."""
    return [Text(str(v), style="bold" if j == diagonal else "", justify="right") for j, v in enumerate(row)]
