"""What the keys of the run screen do: requests to the daemon, `longhaul resume`, views, chart options.

`RunActions` is a mixin of `RunScreen`, which declares the key bindings and holds what the
actions act on: `model`, `link`, `link_state`, `resume_argv`, its views, `_send` (a request whose
ack and completion it tracks), `_set_action` (the feedback line), `_request_refresh`,
`_build_view` and `summary_screen`.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual import work
from textual.widgets import TabbedContent

from tui.model import ACTIVE_STATES, RESUMABLE_STATES
from tui.screens.dialogs import ConfirmScreen
from tui.screens.picker import PickerScreen
from tui.widgets.alerts import AlertBar
from tui.widgets.detail import DetailView
from tui.widgets.evaluation import evaluation_options

VIEWS = ("dashboard", "detail", "events", "system")


def resume_command(run_dir: Path) -> list[str]:
    """The command `r` runs: `longhaul resume RUN_DIR` with this interpreter."""
    return [sys.executable, "-m", "trainer.cli", "resume", str(run_dir)]


class RunActions:
    """The `action_*` methods of `RunScreen` and which of them are available (`check_action`)."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """False hides a key from the footer, None shows it greyed out: the footer offers only what
        works now (`p Pause` while running, `p Resume` while paused, no controls offline)."""
        controls = self.link_state == "live" and self.model.state in ACTIVE_STATES
        state = self.model.state
        if action in ("pause", "resume", "checkpoint", "stop") and not controls:
            return False
        if action == "pause":
            return True if state == "running" else False if state == "paused" else None
        if action == "resume":
            return state == "paused"
        if action == "checkpoint":
            return True if state in ("running", "paused") else None
        if action == "resume_run":
            return self.link_state != "live" and state in RESUMABLE_STATES
        if action == "summary":
            return self.model.has_summary
        if action == "per_class":
            return bool(self.model.evaluation_result)
        if action == "acknowledge":
            return self._alert_in_front()
        return True

    def _alert_in_front(self) -> bool:
        bars = self.query(AlertBar)
        return bool(bars) and bars.first().book.top() is not None

    def sync_footer(self) -> None:
        """Show the keys that work in the run's current state: the footer asks `check_action`
        again only when what it depends on changed (called on every repaint, so it is cheap)."""
        key = (self.link_state, self.model.state, self.model.has_summary, bool(self.model.evaluation_result),
               self._alert_in_front())
        if key != getattr(self, "_footer_key", None):
            self._footer_key = key
            self.refresh_bindings()

    async def action_pause(self) -> None:
        await self._send("pause")

    async def action_resume(self) -> None:
        await self._send("resume")

    async def action_checkpoint(self) -> None:
        await self._send("checkpoint")

    def action_stop(self) -> None:
        question = (f"Stop run {self.model.name}?\n\nThe trainer finishes its current step, writes a final "
                    f"checkpoint and exits; `longhaul resume {self.model.name}` continues it later.")

        async def answered(yes: bool | None) -> None:
            if yes:
                await self._send("stop")
            else:
                self._set_action("stop cancelled", "info")

        self.app.push_screen(ConfirmScreen(question, yes_label="Stop"), answered)

    def action_resume_run(self) -> None:
        self._set_action(f"resume: running {' '.join(self.resume_argv[-2:])}…", "info")
        self.resume_run()

    @work(thread=True, exclusive=True, group="resume", name="resume-run")
    def resume_run(self) -> None:
        """Run `longhaul resume` and, when it worked, connect to the new daemon at once."""
        try:
            done = subprocess.run(self.resume_argv, capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.app.call_from_thread(self._set_action, f"resume failed: {exc}", "error")
            return
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            self.app.call_from_thread(self._set_action, f"resume failed (exit {done.returncode}): {lines[-1]}", "error")
            return
        self.app.call_from_thread(self._resumed)

    def _resumed(self) -> None:
        self._set_action("✓ resume: daemon started", "info")
        if self.link_state != "live":  # the link may have found the new daemon already
            self.link_state = "connecting"
            self.link.retry_now()

    def action_back(self) -> None:
        """Back to the run list: the picker this run was opened from, or (attached to the run by
        name) a new picker in place of this screen, whose daemon link ends with it."""
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
            return
        app = self.app
        self.app.switch_screen(PickerScreen(app.root, interval=app.picker_interval, lister=app.lister))

    def action_summary(self) -> None:
        if self.model.has_summary:
            self.app.push_screen(self.summary_screen())

    async def action_per_class(self) -> None:
        """The detail view with the per-class table of the newest evaluation."""
        options = evaluation_options(self.model.evaluation)
        if not options:
            return
        tabs = self.query_one("#views", TabbedContent)
        await self._build_view(tabs.get_pane("detail"))
        view = self.query_one(DetailView)
        view.set_names(list(self.model.series), options)
        view.select(options[0][0])
        tabs.active = "detail"
        self._request_refresh()

    def action_view(self, view: str) -> None:
        self.query_one("#views", TabbedContent).active = view
        self._request_refresh()

    def action_next_view(self) -> None:
        tabs = self.query_one("#views", TabbedContent)
        tabs.active = VIEWS[(VIEWS.index(tabs.active) + 1) % len(VIEWS)] if tabs.active in VIEWS else VIEWS[0]
        self._request_refresh()
