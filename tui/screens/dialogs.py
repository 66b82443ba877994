"""Modal dialogs: confirm a stop, key help, the final summary of a finished (or evaluated) run."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Static

from trainer.run.evaluation import headline_result
from tui import fmt
from tui.help import NOTES, KeyLine, help_sections, key_width
from tui.widgets.evaluation import (calibration_text, confusion_layout, headline_columns, headline_rows, result_title,
                                   stale_note)


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
    it was opened over, and every view's. Keys and descriptions are grid cells, so a long
    description wraps under itself at any width, never under the keys."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; }
    HelpScreen #help-sections, HelpScreen .help-block { height: auto; }
    HelpScreen .help-section { text-style: bold underline; margin-top: 1; }
    /* Wide terminals: the sections side by side, so the whole help fits without scrolling. */
    HelpScreen.-wide > VerticalScroll { width: 164; }
    HelpScreen.-wide #help-sections { layout: grid; grid-size: 2; grid-rows: auto; grid-gutter: 0 4; }
    HelpScreen Grid { grid-size: 2; grid-rows: auto; height: auto; }
    HelpScreen .help-key { text-style: bold; }
    """
    BINDINGS = [Binding("escape,question_mark,q,enter", "dismiss", "Close")]

    def __init__(self, app_class: type, screen_class: Optional[type] = None) -> None:
        super().__init__()
        self.sections = help_sections(app_class, screen_class)

    def compose(self) -> ComposeResult:
        columns = f"{key_width(self.sections) + 2} 1fr"
        notes = ("Reading the screen", [KeyLine("•", note) for note in NOTES])
        with VerticalScroll():
            yield Static("Keys  (↑ ↓ scroll · Esc or ? closes)", id="help-title")
            with Vertical(id="help-sections"):
                for title, lines in [*self.sections, notes]:
                    with Vertical(classes="help-block"):
                        yield Static(Text(title), classes="help-section")
                        with Grid() as grid:
                            grid.styles.grid_columns = columns
                            for line in lines:
                                yield Static(Text(line.keys), classes="help-key")
                                yield Static(Text(line.text), classes="help-text")


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
        self._shown_shape: Optional[tuple[bool, bool]] = None
        """(numbered, scrolls) of the confusion matrix on screen: a resize that changes it recomposes."""

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
            yield from self._confusion()

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

    def confusion_width(self) -> int:
        """Columns the confusion matrix has: the dialog (at most 100 wide) less its border,
        padding and scrollbar."""
        return min(100, self.app.size.width) - 6

    def on_resize(self) -> None:
        if self.query("#summary-confusion") and self._confusion_shape() != self._shown_shape:
            self.refresh(recompose=True)

    def _confusion_source(self) -> tuple[dict, str]:
        result = headline_result(self.evaluation)
        if (result or {}).get("confusion"):
            return result, "the evaluation above"
        return self.summary, "last eval"

    def _confusion_shape(self) -> tuple[bool, bool]:
        source, _ = self._confusion_source()
        layout = confusion_layout(source.get("confusion") or [], source.get("classes") or [], self.confusion_width())
        return layout.numbered, layout.scrolls

    def _confusion(self) -> ComposeResult:
        source, where = self._confusion_source()
        if not source.get("confusion"):
            return
        layout = confusion_layout(source["confusion"], source.get("classes") or [], self.confusion_width())
        self._shown_shape = (layout.numbered, layout.scrolls)
        columns = "column N: predicted as row N" if layout.numbered else "columns: predicted"
        yield Static(f"Confusion matrix (rows: true class; {columns}; {where})")
        if layout.scrolls:
            yield Static("← → scroll the matrix sideways (recall is next to the class)", id="summary-confusion-hint")
        table = DataTable(id="summary-confusion", cursor_type="none" if not layout.scrolls else "column",
                          zebra_stripes=True)
        # Counts and recall are right-aligned, so their headers are too; the class column is not.
        table.add_columns(Text(layout.columns[0]), *(Text(c, justify="right") for c in layout.columns[1:]))
        table.add_rows(layout.rows)
        yield table
