"""Modal dialogs: confirm a stop, key help, the final summary of a finished (or evaluated) run."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Static

from trainer.run.evaluation import headline_result
from tui import fmt
from tui.help import help_renderable, help_sections
from tui.widgets.evaluation import calibration_text, headline_columns, headline_rows, result_title, stale_note


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; dismisses with True for yes (y, or the Yes button)."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 60; max-width: 95%; height: auto;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    ConfirmScreen Button { margin-left: 2; }
    """
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, yes_label: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes_label = yes_label

    def compose(self) -> ComposeResult:
        with Vertical():
            # Plain Text, not markup: `[y]` (and any bracket in a run name) would be eaten as a tag.
            yield Static(Text(self.question))
            with Horizontal():
                yield Button(Text(f"{self.yes_label} [y]"), variant="error", id="yes")
                yield Button(Text("No [n]"), variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """The key reference, generated from the bindings (`tui.help`): the app's, those of the screen
    it was opened over, and every view's."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; margin-bottom: 1; }
    """
    BINDINGS = [Binding("escape,question_mark,q,enter", "dismiss", "Close")]

    def __init__(self, app_class: type, screen_class: Optional[type] = None) -> None:
        super().__init__()
        self.sections = help_sections(app_class, screen_class)

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Keys  (↑ ↓ scroll · Esc or ? closes)", id="help-title")
            yield Static(help_renderable(self.sections), id="help-keys")


def summary_rows(best: Optional[dict], last: Optional[dict]) -> list[tuple[str, str, str]]:
    """(metric, best-eval value, last-eval value) for every scalar validation metric."""
    keys = []
    for record in (best or {}, last or {}):
        keys += [k for k, v in record.items() if k.startswith("val_") and isinstance(v, (int, float)) and k not in keys]
    rows = [("step", fmt.count((best or {}).get("step")), fmt.count((last or {}).get("step")))]
    for key in keys:
        rows.append((key, fmt.metric((best or {}).get(key)), fmt.metric((last or {}).get(key))))
    return rows


class SummaryScreen(ModalScreen[None]):
    """The final summary of a run: its stored evaluation (test metrics with their intervals,
    calibration; `tui.widgets.evaluation`) when there is one, then the best and last validation
    metrics of training and a confusion matrix (the evaluation's, else the last validation's)."""

    DEFAULT_CSS = """
    SummaryScreen { align: center middle; }
    SummaryScreen > VerticalScroll {
        width: 100; max-width: 100%; height: auto; max-height: 100%;
        border: thick $success; background: $surface; padding: 0 1;
    }
    SummaryScreen DataTable { height: auto; margin-bottom: 1; }
    SummaryScreen #summary-calibration { margin-bottom: 1; }
    SummaryScreen #summary-stale { color: $warning; }
    """
    BINDINGS = [Binding("escape,enter,f", "dismiss", "Close")]

    def __init__(self, run_name: str, summary: dict, evaluation: Optional[dict] = None, *,
                 best_step: Optional[int] = None, clock: Optional[fmt.Clock] = None,
                 evaluating: bool = False) -> None:
        super().__init__()
        self.run_name = run_name
        self.summary = summary
        self.evaluation = evaluation
        self.best_step = best_step
        self.clock = clock
        self.evaluating = evaluating
        """An evaluation is under way (says so while there is none to show yet)."""

    def set_evaluation(self, evaluation: Optional[dict], best_step: Optional[int] = None,
                       evaluating: bool = False) -> None:
        """Show a new evaluation (one written while the summary is open: the automatic evaluation
        at the end of a run comes after the `finished` event)."""
        new = (evaluation, best_step, evaluating)
        if new != (self.evaluation, self.best_step, self.evaluating):
            self.evaluation, self.best_step, self.evaluating = new
            self.refresh(recompose=True)

    def compose(self) -> ComposeResult:
        best, last = self.summary.get("best"), self.summary.get("last")
        result = headline_result(self.evaluation)
        with VerticalScroll():
            title = ("Run finished: ", "bold") if self.summary else ("Run ", "bold")
            yield Static(Text.assemble(title, self.run_name, "  (esc closes)"))
            if result is not None:
                yield from self._evaluation(result)
            elif self.evaluating:
                yield Static("Evaluating the test split… (shown here when done)", id="summary-evaluating")
            if self.summary:
                if result is not None:
                    yield Static("Validation during training")
                metrics = DataTable(id="summary-metrics", cursor_type="none", zebra_stripes=True)
                metrics.add_columns("metric", "best eval", "last eval")
                metrics.add_rows(summary_rows(best, last))
                yield metrics
            source = result if (result or {}).get("confusion") else self.summary
            if source.get("confusion"):
                where = "the evaluation above" if source is result else "last eval"
                yield Static(f"Confusion matrix (rows: true class, columns: predicted; {where})")
                yield self._confusion_table(source["confusion"], source.get("classes") or [])

    def _evaluation(self, result: dict) -> ComposeResult:
        yield Static(Text.assemble(("Evaluation: ", "bold"), result_title(result, self.clock)),
                     id="summary-evaluation-title")
        note = stale_note(result, self.best_step)
        if note:
            yield Static(note, id="summary-stale")
        table = DataTable(id="summary-evaluation", cursor_type="none", zebra_stripes=True)
        table.add_columns(*headline_columns(result))
        table.add_rows(headline_rows(result))
        yield table
        yield Static(calibration_text(result), id="summary-calibration")

    @staticmethod
    def _confusion_table(confusion: list[list[int]], classes: list[str]) -> DataTable:
        names = [str(c) for c in classes] or [str(i) for i in range(len(confusion))]
        table = DataTable(id="summary-confusion", cursor_type="none", zebra_stripes=True)
        table.add_columns("true \\ pred", *[n[:10] for n in names], "recall")
        for i, row in enumerate(confusion):
            total = sum(row)
            recall = row[i] / total if total and i < len(row) else None
            cells = [Text(str(v), style="bold" if j == i else "") for j, v in enumerate(row)]
            table.add_row(names[i] if i < len(names) else str(i), *cells, fmt.percent(recall))
        return table
