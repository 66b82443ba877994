"""The run picker: every run under the root with its state, progress, best metric and speed;
Enter attaches, `o` sorts, `/` filters, Space marks runs and `c` compares the marked ones."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from trainer.cli import longhaul_command
from trainer.fmt import best_text, metric_value, samples_rate
from trainer.run.cv_status import list_with_cvs
from trainer.run.status import SORTS, ordered, state_label
from tui import fmt
from tui.widgets.footer import KeyFooter
from tui.widgets.header import STATE_STYLES

#: (key, title) of the columns. Narrow terminals leave out the progress bar (the step column
#: says as much) and the phase (the dashboard shows it) so that the best metric and samples/s
#: fit in 80 columns with a 14-character run name.
WIDE_COLUMNS = (("run", "run"), ("state", "state"), ("phase", "phase"), ("progress", "progress"),
                ("step", "step"), ("eta", "ETA"), ("ckpt", "ckpt"), ("best", "best"), ("rate", "samples/s"))
NARROW_COLUMNS = (("run", "run"), ("state", "state"), ("step", "step"), ("eta", "ETA"), ("ckpt", "ckpt"),
                  ("best", "best"), ("rate", "smp/s"))
WIDE_AT = 110
CURSOR = "▶ "  # marks the highlighted row in text too, not only by its colour
MARK = "✓"  # a run marked for `c` (compare), in the second column of CURSOR
Lister = Callable[[Path], list[dict]]


def progress_cell(info: dict, width: int = 3) -> Text:
    """`██████░░░░  61%` (bar glyphs, so the amount reads without colour)."""
    step, total = info.get("step"), info.get("total_steps")
    if not total:
        return Text("–")
    fraction = min(1.0, (step or 0) / total)
    return Text.assemble((fmt.bar(fraction, width), "green"), f" {100 * fraction:3.0f}%")


def name_cell(info: dict, highlighted: bool, marked: bool = False) -> Text:
    return Text((CURSOR[0] if highlighted else " ") + (MARK if marked else CURSOR[1]) + str(info.get("name", "?")),
                style="bold")


def phase_text(info: dict, limit: int) -> str:
    phase = info.get("phase_name") or ("–" if info.get("phase") is None else f"#{info['phase'] + 1}")
    if info.get("phase") is not None and info.get("phase_name"):
        phase = f"{info['phase'] + 1} {info['phase_name']}"
    return fmt.clip(phase, limit)


def row_cells(info: dict, highlighted: bool = False, wide: bool = False, marked: bool = False) -> tuple:
    """The table cells of one `trainer.run.status.status()` dict (the highlighted row's name starts
    with ▶, a marked one's with ✓), one per column of WIDE_COLUMNS (wide) or NARROW_COLUMNS."""
    number = fmt.count if wide else fmt.count_short
    state = info.get("state", "unknown")
    age = info.get("last_checkpoint_age")
    cells = {
        "run": name_cell(info, highlighted, marked),
        "state": Text(state_label(info).upper(), style=STATE_STYLES.get(state, "")),
        "phase": phase_text(info, 24),
        "progress": progress_cell(info, width=12),
        "step": f"{number(info.get('step'))}/{number(info.get('total_steps'))}",
        "eta": fmt.duration(info.get("eta")),
        "ckpt": fmt.duration(age) if age is not None else "never",
        "best": best_text(info.get("best")),
        "rate": Text(samples_rate(info.get("samples_per_s")), justify="right"),
    }
    if info.get("kind") == "cv":
        cells.update(cv_cells(info))
    return tuple(cells[key] for key, _ in (WIDE_COLUMNS if wide else NARROW_COLUMNS))


def cv_cells(info: dict) -> dict:
    """A cross-validation's row (trainer.run.cv_status.cv_row): `cv 2/3` folds finished (and how
    many failed), the monitor's mean ± standard deviation over the finished folds."""
    failed = info["counts"].get("failed", 0)
    best = info.get("best")
    spread = f" ± {metric_value(best['std'])}" if best and best.get("std") is not None else ""
    return {"phase": f"cv {info['step']}/{info['total_steps']}" + (f", {failed} failed" if failed else ""),
            "step": f"{info['step']}/{info['total_steps']} folds", "ckpt": "–", "eta": "–",
            "best": best_text(best) + spread}


class PickerScreen(Screen):
    """Lists runs (refreshed every `interval` seconds, off the UI thread); Enter opens one."""

    DEFAULT_CSS = """
    PickerScreen #picker-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    PickerScreen #picker-empty { padding: 1 2; }
    PickerScreen #picker-filter { display: none; height: 1; border: none; padding: 0 1; background: $boost; }
    PickerScreen #picker-filter.shown { display: block; }
    PickerScreen DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("g", "reload", "Refresh"),
        Binding("slash", "filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("escape", "clear_filter", "Clear filter"),
        Binding("space", "mark", "Mark", tooltip="Mark or unmark the highlighted run for c"),
        Binding("c", "compare", "Compare", tooltip="Compare the marked runs: a metric's curves overlaid, and a table"),
    ]

    def __init__(self, root: Path, *, interval: float = 2.0, lister: Optional[Lister] = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.interval = interval
        self.lister: Lister = lister or list_with_cvs
        self.infos: list[dict] = []
        self.rows: dict[str, dict] = {}  # what each table row shows now, by run directory
        self.sort = SORTS[0]
        self.filter_text = ""
        self._cursor_key: Optional[str] = None
        self.marked: dict[str, None] = {}  # run directories marked for `c`, in the order marked
        self._wide: Optional[bool] = None

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), id="picker-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="filter: part of a run's name, state or model (Enter keeps it, Esc clears it)",
                    id="picker-filter")
        yield Static("", id="picker-empty")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.action_reload()
        self.set_interval(self.interval, self.action_reload, name="list-runs")

    def title_text(self) -> str:
        """What is listed and how; at 80 columns without what the footer says already."""
        shown = f"   filter {self.filter_text!r}: {len(self.rows)} of {len(self.infos)}" if self.filter_text else ""
        marked = f"   {len(self.marked)} marked" if self.marked else ""
        text = f"runs under {self.root}   sort: {self.sort}{shown}{marked}"
        return f"longhaul: {text}   (Enter attaches)" if self._wide or self._wide is None else text

    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "clear_filter":  # only when there is something to clear
            return bool(self.filter_text) or self.query_one("#picker-filter", Input).has_class("shown")
        return True

    def on_resize(self) -> None:
        if self._wide is not None and (self.size.width >= WIDE_AT) != self._wide:
            self.show_runs(self.infos)

    # ------------------------------------------------------------------ keys
    def action_reload(self) -> None:
        self.list_runs()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.show_runs(self.infos)

    def action_filter(self) -> None:
        box = self.query_one("#picker-filter", Input)
        box.add_class("shown")
        box.focus()
        self.refresh_bindings()

    def action_clear_filter(self) -> None:
        box = self.query_one("#picker-filter", Input)
        box.remove_class("shown")
        box.value = ""  # Input.Changed shows every run again
        self.filter_text = ""
        self.query_one("#runs", DataTable).focus()
        self.show_runs(self.infos)
        self.refresh_bindings()

    @on(Input.Changed, "#picker-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.show_runs(self.infos)

    def action_attach(self) -> None:
        """Enter: keeps a filter being typed (back to the table), else opens the highlighted run."""
        box = self.query_one("#picker-filter", Input)
        table = self.query_one("#runs", DataTable)
        if box.has_focus:
            if not self.filter_text:
                box.remove_class("shown")
            table.focus()
            self.refresh_bindings()
            return
        if table.row_count:
            self._open_run(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    # ------------------------------------------------------------------ the table
    @work(thread=True, exclusive=True, group="list-runs", name="list-runs")
    def list_runs(self) -> None:
        """Read every run's files in a thread (it touches state.json and /proc of each run)."""
        infos = self.lister(self.root)
        self.app.call_from_thread(self.show_runs, infos)

    def show_runs(self, infos: list[dict]) -> None:
        """Show `infos` sorted and filtered: changed cells only while the rows and columns stay,
        the table rebuilt when they change (a sort, a filter, a run added or gone, a resize)."""
        self.infos = infos
        table = self.query_one("#runs", DataTable)
        shown = ordered(infos, self.sort, self.filter_text)
        wide = self.size.width >= WIDE_AT
        if wide != self._wide or [info["dir"] for info in shown] != list(self.rows):
            self._rebuild(table, shown, wide)
        else:
            self._update_cells(table, shown)
        self.query_one("#picker-title", Static).update(self.title_text())
        empty = self.query_one("#picker-empty", Static)
        empty.update(self.empty_text())
        empty.display = bool(self.empty_text())  # its rows go to the list when there is nothing to say

    def empty_text(self) -> str:
        if not self.infos:
            return f"No runs under {self.root}. Start one with `{longhaul_command()} start CONFIG`."
        return "" if self.rows else f"No run matches {self.filter_text!r} (Esc clears the filter)."

    def _rebuild(self, table: DataTable, shown: list[dict], wide: bool) -> None:
        if wide != self._wide:
            table.clear(columns=True)
            for key, title in WIDE_COLUMNS if wide else NARROW_COLUMNS:
                table.add_column(title, key=key)
            self._wide = wide
        else:
            table.clear()
        self.rows = {info["dir"]: info for info in shown}
        if self._cursor_key not in self.rows:  # its run is gone or filtered out: the first one
            self._cursor_key = shown[0]["dir"] if shown else None
        for info in shown:
            table.add_row(*row_cells(info, highlighted=info["dir"] == self._cursor_key, wide=wide,
                                     marked=info["dir"] in self.marked), key=info["dir"])
        if self._cursor_key is not None:  # the cursor stays on its run wherever it moved
            table.move_cursor(row=list(self.rows).index(self._cursor_key), animate=False)

    def _update_cells(self, table: DataTable, shown: list[dict]) -> None:
        """Only what changed is redrawn; a value that grows widens its column (never cut)."""
        for info in shown:
            key = info["dir"]
            if self.rows[key] == info:
                continue
            old = row_cells(self.rows[key], highlighted=key == self._cursor_key, wide=bool(self._wide),
                            marked=key in self.marked)
            new = row_cells(info, highlighted=key == self._cursor_key, wide=bool(self._wide), marked=key in self.marked)
            for column, before, after in zip(table.columns, old, new):
                if before != after:
                    table.update_cell(key, column, after, update_width=True)
            self.rows[key] = info

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = event.data_table
        previous, self._cursor_key = self._cursor_key, event.row_key.value
        if previous in self.rows and previous != self._cursor_key:
            table.update_cell(previous, "run", name_cell(self.rows[previous], False, previous in self.marked))
        if self._cursor_key in self.rows:
            table.update_cell(self._cursor_key, "run", name_cell(self.rows[self._cursor_key], True,
                                                                 self._cursor_key in self.marked))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self._open_run(event.row_key.value)

    def _open_run(self, run_dir: Optional[str]) -> None:
        if run_dir and (self.rows.get(run_dir) or {}).get("state") == "missing":
            self.notify(f"{run_dir} is gone (moved or deleted)", severity="warning")  # registered, not there
        elif run_dir and (self.rows.get(run_dir) or {}).get("kind") == "cv":
            self.app.attach_cv(Path(run_dir))
        elif run_dir:
            self.app.attach(Path(run_dir))

    # ------------------------------------------------------------------ comparing runs
    def action_mark(self) -> None:
        """Space: mark the highlighted run for `c`, or unmark it."""
        key = self._cursor_key
        if key not in self.rows or self.query_one("#picker-filter", Input).has_focus:
            return
        if self.rows[key].get("state") == "missing":
            self.notify(f"{key} is gone (moved or deleted)", severity="warning")
            return
        if self.rows[key].get("kind") == "cv":
            # not a run: the comparison would show it as an empty column
            name = self.rows[key].get("name")
            self.app.bell()
            self.notify(f"{name} is a cross-validation, not a run: mark its folds ({name}-fold1 …) in this list "
                        "to compare them; Enter shows them.", severity="warning")
            return
        if key in self.marked:
            del self.marked[key]
        else:
            self.marked[key] = None
        self.query_one("#runs", DataTable).update_cell(key, "run", name_cell(self.rows[key], True, key in self.marked))
        self.query_one("#picker-title", Static).update(self.title_text())

    def action_compare(self) -> None:
        """c: the comparison screen of the marked runs that are still listed (two or more)."""
        from tui.screens.compare import CompareScreen

        listed = {info["dir"] for info in self.infos if info.get("state") != "missing"}
        runs = [Path(key) for key in self.marked if key in listed]
        if len(runs) < 2:
            self.notify("Mark two or more runs with Space to compare them.", severity="warning")
            return
        self.app.push_screen(CompareScreen(runs))
