"""The run picker: every run under the root with its state and progress; Enter attaches."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from trainer.run.status import list_runs
from tui import fmt
from tui.widgets.header import STATE_STYLES

COLUMNS = ("run", "state", "phase", "progress", "step", "ETA", "ckpt")
CURSOR = "▶ "  # marks the highlighted row in text too, not only by its colour
Lister = Callable[[Path], list[dict]]


def progress_cell(info: dict, width: int = 3) -> Text:
    """`██████░░░░  61%` (bar glyphs, so the amount reads without colour)."""
    step, total = info.get("step"), info.get("total_steps")
    if not total:
        return Text("–")
    fraction = min(1.0, (step or 0) / total)
    return Text.assemble((fmt.bar(fraction, width), "green"), f" {100 * fraction:3.0f}%")


def name_cell(info: dict, highlighted: bool) -> Text:
    return Text((CURSOR if highlighted else "  ") + str(info.get("name", "?")), style="bold")


def row_cells(info: dict, highlighted: bool = False, wide: bool = False) -> tuple:
    """The table cells of one `trainer.run.status.status()` dict (the highlighted row's name starts with ▶).

    Narrow terminals (80 columns) get a 3-cell bar and short phase names so every column fits.
    """
    limit = 24 if wide else 10
    number = fmt.count if wide else fmt.count_short
    state = info.get("state", "unknown")
    phase = info.get("phase_name") or ("–" if info.get("phase") is None else f"#{info['phase'] + 1}")
    if info.get("phase") is not None and info.get("phase_name"):
        phase = f"{info['phase'] + 1} {info['phase_name']}"
    if len(phase) > limit:
        phase = phase[:limit - 1] + "…"
    age = info.get("last_checkpoint_age")
    return (
        name_cell(info, highlighted),
        Text(state.upper(), style=STATE_STYLES.get(state, "")),
        phase,
        progress_cell(info, width=12 if wide else 3),
        f"{number(info.get('step'))}/{number(info.get('total_steps'))}",
        fmt.duration(info.get("eta")),
        fmt.duration(age) if age is not None else "never",
    )


class PickerScreen(Screen):
    """Lists runs (refreshed every `interval` seconds, off the UI thread); Enter opens one."""

    DEFAULT_CSS = """
    PickerScreen #picker-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    PickerScreen #picker-empty { padding: 1 2; }
    PickerScreen DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("enter", "attach", "Attach", priority=True), Binding("g", "reload", "Refresh")]

    def __init__(self, root: Path, *, interval: float = 2.0, lister: Optional[Lister] = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.interval = interval
        self.lister: Lister = lister or list_runs
        self.rows: dict[str, dict] = {}
        self._cursor_key: Optional[str] = None
        self._wide: Optional[bool] = None

    def compose(self) -> ComposeResult:
        yield Static(f"longhaul: runs under {self.root}   (Enter attaches)", id="picker-title")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="picker-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(self.interval, self.action_reload, name="list-runs")

    def action_reload(self) -> None:
        self.list_runs()

    @work(thread=True, exclusive=True, group="list-runs", name="list-runs")
    def list_runs(self) -> None:
        """Read every run's files in a thread (it touches state.json and /proc of each run)."""
        infos = self.lister(self.root)
        self.app.call_from_thread(self.show_runs, infos)

    def show_runs(self, infos: list[dict]) -> None:
        """Update the table in place: changed cells only, keeping the cursor on its run."""
        table = self.query_one("#runs", DataTable)
        wanted = {info["dir"]: info for info in infos}
        wide = self.size.width >= 110
        relayout, self._wide = wide != self._wide, wide
        for key in [k for k in self.rows if k not in wanted]:
            table.remove_row(key)
            del self.rows[key]
        for key, info in wanted.items():
            cells = row_cells(info, highlighted=key == self._cursor_key, wide=wide)
            if key not in self.rows:
                table.add_row(*cells, key=key)
            elif self.rows[key] != info or relayout:
                for column, cell in zip(table.columns, cells):
                    table.update_cell(key, column, cell)
            self.rows[key] = info
        self.query_one("#picker-empty", Static).update(
            "" if infos else f"No runs under {self.root}. Start one with `longhaul start CONFIG`.")

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = event.data_table
        name_column = next(iter(table.columns))
        previous, self._cursor_key = self._cursor_key, event.row_key.value
        if previous in self.rows:
            table.update_cell(previous, name_column, name_cell(self.rows[previous], False))
        if self._cursor_key in self.rows:
            table.update_cell(self._cursor_key, name_column, name_cell(self.rows[self._cursor_key], True))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self._open_run(event.row_key.value)

    def action_attach(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        self._open_run(key)

    def _open_run(self, run_dir: Optional[str]) -> None:
        if run_dir and (self.rows.get(run_dir) or {}).get("state") == "missing":
            self.notify(f"{run_dir} is gone (moved or deleted)", severity="warning")  # registered, not there
        elif run_dir:
            self.app.attach(Path(run_dir))
