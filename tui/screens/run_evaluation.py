"""The run screen's side of the stored evaluation (evaluation.json): follow the file, put it in the
model, keep an open final summary up to date.

`RunEvaluation` is a mixin of `RunScreen`, which holds `evaluation_watch` (a
`trainer.run.evaluation.EvaluationWatch` of its run directory), `model`, `link_state`, `clock`,
`_set_action` (the feedback line) and `_request_refresh`, calls `check_evaluation` at mount, every
`EVALUATION_INTERVAL` seconds and after every batch of events, and `_update_summary` after events.
A check costs one stat; the file is read, in a thread, only when it changed.
"""
from __future__ import annotations

from textual import work

from tui.screens.dialogs import SummaryScreen


class RunEvaluation:
    """evaluation.json followed for `RunScreen`: the model's `evaluation` and the final summary."""

    EVALUATION_INTERVAL = 2.0
    """Seconds between two checks of evaluation.json (a stat each)."""
    _evaluation_reading = False
    """A read is under way in a thread (no second one is started)."""

    def check_evaluation(self) -> None:
        """Read evaluation.json again (in a thread) if it changed since the last read."""
        if not self._evaluation_reading and self.evaluation_watch.changed():
            self._evaluation_reading = True
            self.read_evaluation()

    @work(thread=True, group="evaluation", name="read-evaluation")
    def read_evaluation(self) -> None:
        changed = self.evaluation_watch.poll()
        self.app.call_from_thread(self._evaluation_read, changed)

    def _evaluation_read(self, changed: bool) -> None:
        self._evaluation_reading = False
        if not changed:
            return
        watch, model = self.evaluation_watch, self.model
        model.evaluation, model.evaluation_error = watch.value, watch.error
        if watch.error:
            self._set_action(f"evaluation not shown: {watch.error}", "warning")
        self._update_summary()
        self.refresh_bindings()  # the summary may have become available
        self._request_refresh()

    def summary_screen(self) -> SummaryScreen:
        """The final summary of the model as it is now."""
        return SummaryScreen(self.model.name, self.model.summary or {}, self.model.evaluation,
                             best_step=self.model.best_step, clock=self.clock, evaluating=self._evaluating)

    @property
    def _evaluating(self) -> bool:
        return self.model.evaluating and self.link_state == "live"

    def _update_summary(self) -> None:
        """The open summary shows the model's evaluation as it is now."""
        if isinstance(self.app.screen, SummaryScreen):
            self.app.screen.set_evaluation(self.model.evaluation, self.model.best_step, self._evaluating)
