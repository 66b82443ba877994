"""The longhaul TUI: `longhaul attach [RUN]`.

`run_attach` is the entry point. With a run it opens the run screen (live from the daemon, or
offline from the run directory); without one it opens the run picker. Leaving (d or q) only
closes the TUI: the run goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from textual.app import App
from textual.binding import Binding


from trainer.run.cv import find_cv
from trainer.run.errors import RunNotFound
from trainer.run.locate import resolve_run, runs_root
from tui import fmt, refresh_rate
from tui.help import binding_keys
from tui.screens.cv import CvScreen
from tui.screens.dialogs import HelpScreen
from tui.screens.picker import PickerScreen
from tui.screens.run import RunScreen


class LonghaulApp(refresh_rate.RefreshKeys, App[int]):
    """Shows one run (`run_dir`) or the picker of the runs under `root`.

    The keyword options exist for tests and benchmarks: a frozen `clock`, faster refresh and
    retry, a fake run `lister` for the picker, another `resume_command`.
    """

    CSS_PATH = "app.tcss"
    TITLE = "longhaul"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    BINDINGS = [
        Binding("d", "detach", "Detach", tooltip="Detach: close the dashboard, training goes on"),
        Binding("q", "detach", "Quit", tooltip="Quit (like d: leaving never stops a run)"),
        Binding("question_mark", "help", "Help", tooltip="This help"),
        # The description is the current rate (`+/- 2000ms` in the footer): see tui.refresh_rate.
        Binding("plus", "refresh_faster", refresh_rate.label(refresh_rate.DEFAULT), key_display="+/-",
                tooltip="Refresh faster (the footer shows the interval)"),
        Binding("minus", "refresh_slower", "Refresh slower", show=False),
    ]

    def __init__(self, run_dir: Optional[Path] = None, root: Optional[Path] = None, *,
                 clock: Optional[fmt.Clock] = None, refresh_interval: float = refresh_rate.DEFAULT,
                 picker_interval: float = 2.0, link_retry_max: float = 5.0,
                 lister: Optional[Callable[[Path], list[dict]]] = None,
                 resume_command: Optional[Callable[[Path], list[str]]] = None,
                 cv_dir: Optional[Path] = None) -> None:
        super().__init__()
        self.cv_dir = Path(cv_dir) if cv_dir is not None else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.root = Path(root) if root is not None else runs_root()
        self.clock = clock or fmt.Clock()
        self.refresh_interval = refresh_interval
        self.picker_interval = picker_interval
        self.link_retry_max = link_retry_max
        self.lister = lister
        self.resume_command = resume_command

    def on_mount(self) -> None:
        self.show_refresh_interval()
        if self.cv_dir is not None:
            self.push_screen(CvScreen(self.cv_dir, interval=self.picker_interval))
        elif self.run_dir is not None:
            self.push_screen(self._run_screen(self.run_dir))
        else:
            self.push_screen(PickerScreen(self.root, interval=self.picker_interval, lister=self.lister))

    def _run_screen(self, run_dir: Path) -> RunScreen:
        return RunScreen(run_dir, self.clock, refresh_interval=self.refresh_interval,
                         link_retry_max=self.link_retry_max,
                         resume_argv=self.resume_command(run_dir) if self.resume_command else None)

    def attach(self, run_dir: Path) -> None:
        """Open the run screen of `run_dir` (from the picker; escape... d leaves the TUI)."""
        self.run_dir = run_dir
        self.push_screen(self._run_screen(run_dir))

    def attach_cv(self, parent: Path) -> None:
        """Open the folds of the cross-validation in `parent` (from the picker, or by name)."""
        self.push_screen(CvScreen(parent, interval=self.picker_interval))

    def action_detach(self) -> None:
        """Leave the TUI; the run (if any) carries on in its daemon."""
        self.exit(0)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(type(self), type(self.screen)))

    def get_key_display(self, binding: Binding) -> str:
        """The footer spells keys as the help does (`Esc`, `Enter`)."""
        return binding_keys(binding, footer=True)


def run_attach(run: Optional[str] = None, root: Optional[Path] = None) -> int:
    """`longhaul attach [RUN]`: open the dashboard of RUN (a name under `root` or a run directory
    path), or the run picker without one. Returns the process exit code."""
    run_dir = None
    cv_dir = find_cv(run, root) if run is not None else None  # a cross-validation: its folds
    if run is not None and cv_dir is None:
        try:
            run_dir = resolve_run(run, root)
        except RunNotFound as exc:
            print(f"longhaul attach: {exc}", file=sys.stderr)
            return 2
    app = LonghaulApp(run_dir, root, cv_dir=cv_dir)
    result = app.run()
    return int(result or 0)
