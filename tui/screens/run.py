"""The run screen: header, alert bar and three views (dashboard, metric detail, events & log).

It owns the run's `RunModel` and the daemon link worker. Messages from the link update the
model; widgets are refreshed from the model at most every `refresh_interval` seconds (and only
widgets whose values changed repaint). Without a daemon the model comes from the run
directory (offline mode) and the link keeps retrying quietly in the background, so a daemon
that comes back, or one started with `r`, is picked up by itself. Live or offline, the stored
evaluation (evaluation.json) is read from the run directory by the screen itself: checked every
`EVALUATION_INTERVAL` seconds (and after every batch of events) with one stat, read only when
it changed.

What each key does is `RunActions` (tui/screens/run_actions.py), following evaluation.json is
`RunEvaluation` (tui/screens/run_evaluation.py); the dashboard view is its own widget
(tui/widgets/dashboard.py).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import OptionList, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from trainer import protocol
from trainer.run.errors import StateFileError
from trainer.run.evaluation import EvaluationWatch
from trainer.run.rundir import RunDir
from trainer.run.state import effective_state
from tui import fmt, messages, refresh_rate
from tui.link import DashboardLink, NotConnected
from tui.model import ACTIVE_STATES, RunModel
from tui.offline import load_run_dir
from tui.screens.run_actions import RunActions, resume_command
from tui.screens.run_evaluation import RunEvaluation
from tui.widgets.dashboard import Dashboard
from tui.widgets.detail import DetailView
from tui.widgets.evaluation import evaluation_options, option_result
from tui.widgets.alerts import AlertBar
from tui.widgets.events_view import EventsView
from tui.widgets.footer import KeyFooter
from tui.widgets.header import HeaderInfo, RunHeader
from tui.widgets.processes import SystemView, show_system


class RunScreen(RunEvaluation, RunActions, Screen):
    """Dashboard of one run, live from its daemon or offline from its directory."""

    BINDINGS = [
        Binding("p", "pause", "Pause", tooltip="Pause training (at the next step boundary)"),
        Binding("p", "resume", "Resume", tooltip="Resume training"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Write a checkpoint now"),
        Binding("s", "stop", "Stop", tooltip="Stop the run (asks first; a final checkpoint is written)"),
        Binding("r", "resume_run", "Resume run", tooltip="Resume a stopped, interrupted or failed run (offline)"),
        Binding("f", "summary", "Summary", tooltip="Final summary: test metrics, calibration, confusion matrix"),
        Binding("t", "per_class", "Per class", show=False, tooltip="Per-class table of the newest evaluation"),
        Binding("a", "acknowledge", "Ack", tooltip="Acknowledge the alert in front (counted until it ends)"),
        Binding("escape", "back", "Runs", key_display="Esc", tooltip="Back to the run list"),
        Binding("tab", "next_view", "View", priority=True, tooltip="Next view"),
        Binding("1", "view('dashboard')", "Dashboard", show=False, tooltip="Dashboard view"),
        Binding("2", "view('detail')", "Detail", show=False, tooltip="Detail view: one metric large"),
        Binding("3", "view('events')", "Events", show=False, tooltip="Events & log view"),
        Binding("4", "view('system')", "System", show=False, tooltip="System view: CPU per process and thread"),
    ]

    link_state: reactive[str] = reactive("connecting")
    """`connecting` (first attempt), `live`, `retrying` (lost the daemon, expects it back) or `offline`."""
    action_status: reactive[tuple[str, str]] = reactive(("", "info"))
    """Feedback of the last request: (text, level)."""

    def __init__(self, run_dir: Path, clock: fmt.Clock, *, refresh_interval: float = refresh_rate.DEFAULT,
                 link_retry_max: float = 5.0, resume_argv: Optional[list[str]] = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.model = RunModel(name=self.run_dir.name, run_dir=self.run_dir)
        self.link = DashboardLink(self.run_dir, self.post_message, retry_max=link_retry_max, hold=refresh_interval)
        self.resume_argv = resume_argv or resume_command(self.run_dir)
        self.pending: dict[int, str] = {}
        self.disconnect: Optional[messages.Disconnected] = None
        self.loaded = False  # the model holds data (a snapshot or the run directory)
        self._offline_loading = False
        self._refresh_pending = False
        self._last_refresh = 0.0
        self._repaint_timer: Optional[Timer] = None
        self.evaluation_watch = EvaluationWatch(self.run_dir)
        self._mounting: dict[str, asyncio.Future] = {}  # view id -> its mount (done or under way)

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield RunHeader(self.clock, id="header")
        yield AlertBar(id="alerts")
        with TabbedContent(initial="dashboard", id="views"):
            with TabPane("1 Dashboard", id="dashboard"):
                yield Dashboard(self.clock, id="dashboard-view")
            # The other views are built when first shown: a smaller DOM at start attaches faster.
            yield TabPane("2 Detail", id="detail")
            yield TabPane("3 Events & log", id="events")
            yield TabPane("4 System", id="system")
        yield KeyFooter()

    def run_state(self) -> str:
        """The run's state from its state.json ("unknown" without a readable one: the offline
        reader reports what is wrong with the file). A run on another host asks there instead."""
        try:
            return effective_state(self.run_dir) if RunDir(self.run_dir).state.exists() else "unknown"
        except StateFileError:
            return "unknown"

    def on_mount(self) -> None:
        state = self.run_state()
        if state not in ACTIVE_STATES:
            self.link_state = "offline"
            self._load_offline_once()
        self.run_worker(self.link.run(), name="daemon-link", group="daemon-link", exclusive=True,
                        exit_on_error=False)
        self.check_evaluation()
        self.set_interval(self.EVALUATION_INTERVAL, self.check_evaluation, name="evaluation")
        self._request_refresh()

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        """A bug in the link must not leave a dashboard that silently stopped updating."""
        if event.worker.name == "daemon-link" and event.state == WorkerState.ERROR:
            self.link_state = "offline"
            self._set_action(f"daemon link failed (a bug, please report): {event.worker.error!r}", "error")

    # ------------------------------------------------------------------ link messages
    @on(messages.Connected)
    def _connected(self, message: messages.Connected) -> None:
        welcome = message.welcome
        self.model.load_snapshot(welcome["snapshot"], welcome.get("run"))
        self.loaded = True
        self.disconnect = None
        self.link_state = "live"
        self.pending.clear()
        self._request_refresh(urgent=True)

    @on(messages.PlanReceived)
    def _plan(self, message: messages.PlanReceived) -> None:
        self.model.load_plan(message.frame)
        self._request_refresh()

    @on(messages.Disconnected)
    def _disconnected(self, message: messages.Disconnected) -> None:
        self.disconnect = message
        if self.pending:
            self._set_action("request lost with the connection (check the events when back)", "warning")
            self.pending.clear()
        if message.was_connected or self.link_state in ("live", "connecting"):
            self.link_state = "retrying"
        self.check_offline()
        self._request_refresh()

    @on(messages.LinkFailed)
    def _link_failed(self, message: messages.LinkFailed) -> None:
        self.link_state = "offline"
        self._set_action(f"cannot attach: {message.message}", "error")
        self._load_offline_once()

    @on(messages.ProgressReceived)
    def _progress(self, message: messages.ProgressReceived) -> None:
        message.take()
        for earlier in message.earlier:
            self.model.add_progress_points(earlier)
        progress = message.progress
        self.model.apply_progress(progress)
        if progress.get("last_eval"):
            self.model.eval_last = progress["last_eval"]
        if progress.get("best_eval"):
            self.model.eval_best = progress["best_eval"]
        self._request_refresh()

    @on(messages.PreparingReceived)
    def _preparing(self, message: messages.PreparingReceived) -> None:
        message.take()
        self.model.apply_preparing(message.preparing)
        self._request_refresh()  # repaints are rate-limited: a few a second at most

    @on(messages.SystemReceived)
    def _system(self, message: messages.SystemReceived) -> None:
        message.take()
        self.model.apply_system(message.system)
        self._request_refresh()

    @on(messages.LogsReceived)
    def _logs(self, message: messages.LogsReceived) -> None:
        message.take()
        for log in message.logs:
            self.model.apply_log(log)
        self._request_refresh()

    @on(messages.EventsReceived)
    def _events(self, message: messages.EventsReceived) -> None:
        message.take()
        for event in message.events:
            self.model.apply_event(event)
            self._confirm_request(event)
            if event.get("kind") == "finished":
                self.app.push_screen(self.summary_screen())
        self.check_evaluation()  # an evaluation at the end of the run may have just been written
        self._update_summary()
        self._request_refresh()

    @on(messages.AckReceived)
    def _ack(self, message: messages.AckReceived) -> None:
        ack = message.ack
        action = self.pending.get(ack.get("id"))
        if action is None:
            return
        if ack.get("ok"):
            self._set_action(f"{action}: accepted, waiting for the trainer… {ack.get('message') or ''}".rstrip(), "info")
        else:
            self.pending.pop(ack["id"], None)
            self._set_action(f"{action} refused: {ack.get('message') or 'no reason given'}", "error")

    def _confirm_request(self, event: dict) -> None:
        """Turn the event that completes one of our requests into "✓ done" feedback."""
        data = event.get("data") or {}
        request_id = protocol.request_id_of(event)
        if request_id is None or request_id not in self.pending:
            return
        action = self.pending.pop(request_id)
        if event.get("level") == "error" or data.get("outcome") == "failed":
            self._set_action(f"✗ {action} failed: {event.get('message', '')}", "error")
        else:
            self._set_action(f"✓ {action}: {event.get('message', 'done')}", "info")

    # ------------------------------------------------------------------ offline
    def _load_offline_once(self) -> None:
        """Read the run directory unless the model already has data or a read is under way."""
        if not self.loaded and not self._offline_loading:
            self._offline_loading = True
            self.load_offline()

    @work(thread=True, exclusive=True, group="offline", name="load-run-dir")
    def load_offline(self) -> None:
        """Read the run directory (thread: a long history takes a moment) and show it."""
        model = load_run_dir(self.run_dir)
        self.app.call_from_thread(self._offline_loaded, model)

    def _offline_loaded(self, model: RunModel) -> None:
        self._offline_loading = False
        if self.link_state == "live":
            return  # a snapshot arrived meanwhile and is newer
        model.generation = self.model.generation + 1
        model.evaluation, model.evaluation_error = self.evaluation_watch.value, self.evaluation_watch.error
        self.model = model
        self.loaded = True
        self._request_refresh(urgent=True)

    @work(thread=True, exclusive=True, group="state-check", name="check-state")
    def check_offline(self) -> None:
        """After losing the daemon: is the run over (offline) or coming back (keep retrying)?"""
        self.app.call_from_thread(self._state_checked, self.run_state())

    def _state_checked(self, state: str) -> None:
        if self.link_state == "live":
            return
        if state in ACTIVE_STATES:
            self.link_state = "retrying"
            return
        self.model.state = state
        self.link_state = "offline"
        self._load_offline_once()
        self._request_refresh()

    # ------------------------------------------------------------------ requests (keys: RunActions)
    async def _send(self, action: str) -> None:
        try:
            request_id = await self.link.request(action)
        except NotConnected as exc:
            self._set_action(f"{action}: {exc}", "error")
            return
        self.pending[request_id] = action
        self._set_action(f"{action}: sent…", "info")

    @on(TabbedContent.TabActivated)
    async def _tab_changed(self, event: TabbedContent.TabActivated) -> None:
        await self._build_view(event.pane)
        if event.pane.id == "detail":
            self.query_one("#metric-list").focus()
        elif event.pane.id == "events":
            self.query_one(EventsView).focus()
        self.refresh_bindings()
        self._request_refresh(urgent=True)

    @on(OptionList.OptionHighlighted, "#metric-list")
    def _metric_picked(self) -> None:
        self._request_refresh(urgent=True)

    async def _build_view(self, pane: TabPane) -> None:
        """Mount the widgets of the detail, events or system view the first time it is shown.
        A second caller (`t` right after `2`) waits for the same mount instead of finding a view
        that is not composed yet."""
        mounting = self._mounting.get(pane.id)
        if mounting is None and not pane.children:
            views = {"detail": lambda: DetailView(id="detail-view", log_metrics=self.query_one(Dashboard).log_metrics),
                     "events": lambda: EventsView(self.clock, id="events-feeds"),
                     "system": lambda: SystemView(id="system-view")}
            if pane.id in views:
                mounting = self._mounting[pane.id] = asyncio.ensure_future(pane.mount(views[pane.id]()))
        if mounting is not None:
            await asyncio.shield(mounting)

    def _set_action(self, text: str, level: str) -> None:
        self.action_status = (text, level)
        self.query_one(AlertBar).set_action(text, level)
        self._request_refresh(urgent=True)  # the answer to a key press must not wait for the next refresh

    def action_acknowledge(self) -> None:
        """`a` (offered only while an alert is in front): it steps aside, counted until it ends."""
        self.query_one(AlertBar).acknowledge()
        self._request_refresh(urgent=True)  # the next alert, and the footer without `a` when none is left

    # ------------------------------------------------------------------ painting
    def watch_link_state(self) -> None:
        self.refresh_bindings()

    def _request_refresh(self, urgent: bool = False) -> None:
        """Repaint soon, but not more often than every `refresh_interval` seconds. `urgent`: what
        must not wait for the throttle: a whole new model (a snapshot or the run directory: the
        first paint at attach), or the answer to a key (another view, the feedback of a request)."""
        if urgent:
            if self._repaint_timer is not None:
                self._repaint_timer.stop()
                self._repaint_timer = None
            self._refresh_pending = True
            self.call_later(self._refresh_now)
            return
        if self._refresh_pending:
            return
        self._refresh_pending = True
        wait = self._last_refresh + self.refresh_interval - time.monotonic()
        if wait > 0:
            self._repaint_timer = self.set_timer(wait, self._refresh_now, name="repaint")
        else:
            self.call_later(self._refresh_now)

    def _apply_held(self, message: messages.MergingMessage) -> None:
        handlers = {messages.ProgressReceived: self._progress, messages.SystemReceived: self._system,
                    messages.PreparingReceived: self._preparing, messages.LogsReceived: self._logs}
        handlers[type(message)](message)

    def set_refresh_interval(self, interval: float) -> None:
        """A new rate (`+`/`-`): repaint now, which also drops a repaint scheduled at the old rate."""
        self.refresh_interval = interval
        self.link.set_hold(interval)
        self._request_refresh(urgent=True)

    def _refresh_now(self) -> None:
        for message in self.link.take_held():  # before the flag: their handlers need no new repaint
            self._apply_held(message)
        self._refresh_pending = False
        self._repaint_timer = None
        self._last_refresh = time.monotonic()
        self.refresh_widgets()

    def refresh_widgets(self) -> None:
        """Push the model into every widget (widgets repaint only what changed)."""
        model = self.model
        self.query_one(RunHeader).info = HeaderInfo.from_model(model, self.link_state, self.clock)
        self.query_one(AlertBar).show(model, self.link_state, self.disconnect, self.clock)
        self.sync_footer()  # after the bar: `a` is offered only while an alert is in front
        active = self.query_one("#views", TabbedContent).active
        if active == "dashboard":
            self.query_one(Dashboard).show(model, live=self.link_state == "live")
        elif active == "detail" and self.query("#detail-chart"):  # the view is built (composed)
            self._refresh_detail()
        elif active == "events" and self.query(EventsView):
            self.query_one(EventsView).show(model)
        elif active == "system" and self.query("#system-view"):
            show_system(self.query_one(SystemView), model, live=self.link_state == "live",
                        alerts=self.query_one(AlertBar).book)

    def _refresh_detail(self) -> None:
        view = self.query_one(DetailView)
        view.set_names(list(self.model.series), evaluation_options(self.model.evaluation))
        if view.shows_evaluation:
            view.show_per_class(*option_result(self.model.evaluation, view.metric), clock=self.clock)
            return
        view.show_run(self.model)
