"""A cross-validation (trainer.run.cv): its folds, each with its state and metrics, and the
aggregate of the finished ones, read again every `interval` seconds; Enter opens a fold's run."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from trainer.fmt import metric_label, metric_value
from trainer.run.cv_status import cv_status, monitor_column
from tui.widgets.footer import KeyFooter
from tui.widgets.header import STATE_STYLES

COLUMNS = (("fold", "fold"), ("run", "run"), ("state", "state"), ("step", "step"), ("val_acc", "val acc"),
           ("val_f1", "val F1"), ("test_acc", "test acc"), ("test_f1", "test F1"))
Reader = Callable[[Path], dict]


def columns(monitor: str) -> tuple:
    """COLUMNS, and the monitor's val and test columns when it is not accuracy or F1."""
    if not monitor_column(monitor):
        return COLUMNS
    label = metric_label(monitor)
    return COLUMNS + (("val_monitor", f"val {label}"), ("test_monitor", f"test {label}"))


def fold_cells(fold: dict, monitor: str = "val_f1_macro") -> tuple:
    """The table cells of one fold of `cv_status` (the monitor's too: see `columns`)."""
    val, test = fold.get("val") or {}, fold.get("test") or {}
    state = fold.get("state", "unknown")
    step = f"{fold.get('step') or 0}/{fold.get('total_steps') or '?'}"
    cells = (str((fold.get("index") or 0) + 1), Text(str(fold.get("name")), style="bold"),
             Text(state.upper(), style=STATE_STYLES.get(state, "")), step,
             metric_value(val.get("accuracy")), metric_value(val.get("f1_macro")),
             metric_value(test.get("accuracy")), metric_value(test.get("f1_macro")))
    extra = monitor_column(monitor)
    return cells + (metric_value(val.get(monitor)), metric_value(test.get(extra))) if extra else cells


def aggregate_text(info: dict) -> Text:
    """`aggregate of 2 of 3 folds (left out: x-fold2 FAILED)` then val and test mean ± std."""
    agg = info["aggregate"]
    text = Text(f"aggregate of {agg['n']} of {agg['k']} folds", style="bold")
    for entry in agg["excluded"]:
        text.append(f"   {entry['name']} ")
        text.append(entry["state"].upper(), style=STATE_STYLES.get(entry["state"], ""))
    for split in ("val", "test"):
        parts = [f"{metric_label(key) if key.startswith('val_') else key} {mean_std(value)}"
                 for key, value in agg[split].items()]
        text.append(f"\n{split:5} " + "   ".join(parts))
    if info.get("oof"):
        text.append(f"\nout-of-fold predictions: {info['oof']['csv']}")
    return text


def mean_std(value: dict) -> str:
    if value.get("mean") is None:
        return "–"
    spread = f" ± {metric_value(value['std'])}" if value.get("std") is not None else ""
    return f"{metric_value(value['mean'])}{spread} (n={value['n']})"


class CvScreen(Screen):
    """The folds of the cross-validation in `parent`; Enter attaches the highlighted fold."""

    DEFAULT_CSS = """
    CvScreen #cv-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    CvScreen DataTable { height: auto; max-height: 1fr; }
    CvScreen #cv-aggregate { padding: 1 1; }
    """
    BINDINGS = [
        Binding("enter", "attach", "Attach fold", priority=True),
        Binding("g", "reload", "Refresh"),
        Binding("escape", "back", "Runs", key_display="Esc", tooltip="Back to the run list"),
    ]

    def __init__(self, parent: Path, *, interval: float = 2.0, reader: Optional[Reader] = None) -> None:
        super().__init__()
        self.parent_dir = Path(parent)
        self.interval = interval
        self.reader: Reader = reader or cv_status
        self.info: Optional[dict] = None

    def compose(self) -> ComposeResult:
        yield Static(f"cross-validation {self.parent_dir.name}", id="cv-title")
        yield DataTable(id="folds", cursor_type="row", zebra_stripes=True)
        yield Static("", id="cv-aggregate")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.set_columns(COLUMNS)
        self.action_reload()
        self.set_interval(self.interval, self.action_reload, name="read-cv")

    def action_reload(self) -> None:
        self.read()

    @work(thread=True, exclusive=True, group="read-cv", name="read-cv")
    def read(self) -> None:
        """The folds' files are read off the UI thread (state.json and evaluation.json of each)."""
        info = self.reader(self.parent_dir)
        self.app.call_from_thread(self.show, info)

    def set_columns(self, wanted: tuple) -> None:
        table = self.query_one("#folds", DataTable)
        table.clear(columns=True)
        for key, title in wanted:
            table.add_column(title, key=key)

    def show(self, info: dict) -> None:
        table = self.query_one("#folds", DataTable)
        monitor = info.get("monitor") or "val_f1_macro"
        wanted = columns(monitor)
        if wanted != tuple((key.value, str(column.label)) for key, column in table.columns.items()):
            self.set_columns(wanted)  # the monitor is known from the first read on; it empties the rows
        if not table.row_count or [f["dir"] for f in info["folds"]] != [f["dir"] for f in self.info["folds"]]:
            table.clear()
            for fold in info["folds"]:
                table.add_row(*fold_cells(fold, monitor), key=fold["dir"])
        else:
            for fold in info["folds"]:
                for (column, _), cell in zip(wanted, fold_cells(fold, monitor)):
                    table.update_cell(fold["dir"], column, cell, update_width=True)
        self.info = info
        self.query_one("#cv-title", Static).update(
            f"cross-validation {info['name']}: {info['k']} folds, {info['state']}   (Enter opens a fold)")
        self.query_one("#cv-aggregate", Static).update(aggregate_text(info))

    def action_attach(self) -> None:
        table = self.query_one("#folds", DataTable)
        if table.row_count:
            self.app.attach(Path(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.attach(Path(event.row_key.value))

    def action_back(self) -> None:
        """Back to the picker it was opened from, or a new picker in its place."""
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
            return
        from tui.screens.picker import PickerScreen

        app = self.app
        app.switch_screen(PickerScreen(app.root, interval=app.picker_interval, lister=app.lister))
