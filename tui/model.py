"""What the TUI knows about one run, independent of Textual and of where the data came from.

`RunModel` is filled either from the daemon (a welcome snapshot, then live frames) or from the
run directory (offline mode, see `tui.offline`); the widgets only ever read a `RunModel`. Live
series are kept bounded by the history's `Downsampler`: neighbouring points are merged once a
series grows past its capacity, keeping each bucket's min and max so the detail chart can draw
the envelope.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from trainer.history import Downsampler, LossSmoother
from trainer.history.series import WALL_KEY
from trainer.monitor import Monitor
from trainer.run.evaluation import headline_result
from tui.setup import SetupStages
from tui.xaxis import ElapsedMap

# Progress metrics that become series as progress frames arrive.
PROGRESS_SERIES = ("train_loss", "train_loss_smooth", "lr", "samples_per_s", "grad_norm", "data_share")
ELAPSED_SERIES = "elapsed"
"""The history series of training seconds per step: the detail chart's time axis (`ElapsedMap`), not a metric."""
ACTIVE_STATES = ("starting", "running", "paused", "stopping")
RESUMABLE_STATES = ("interrupted", "stopped", "failed")
EVALUATION_EVENTS = ("evaluation_started", "evaluation", "evaluation_failed")
"""`data.what` of the events that start and end the evaluation after a run (trainer.posthoc.after)."""
MAX_EVENTS = 500
MAX_LOGS = 500


class Series:
    """Bounded, step-ordered points of one metric: value plus the min/max each point stands for.

    A view of a history `Downsampler`, the summary the daemon keeps of the same metric: the
    points of a snapshot are its buckets, live points are appended to it, and neighbours are
    merged once it holds more than `capacity` points.
    """

    def __init__(self, steps: Iterable[float] = (), values: Iterable[float] = (),
                 mins: Optional[Iterable[float]] = None, maxs: Optional[Iterable[float]] = None,
                 capacity: int = 2000):
        steps = [float(s) for s in steps]
        values = [float(v) for v in values]
        if len(steps) != len(values):
            raise ValueError(f"series has {len(steps)} steps but {len(values)} values")
        mins = [float(v) for v in mins] if mins is not None else list(values)
        maxs = [float(v) for v in maxs] if maxs is not None else list(values)
        if not (len(mins) == len(maxs) == len(values)):
            raise ValueError("series min/max lists must be as long as its values")
        self.capacity = capacity
        self._points = Downsampler.from_buckets(steps, values, mins, maxs, max_points=capacity)
        self._lists: Optional[dict[str, list]] = None  # the points as lists, until the next append
        self._numpy: Optional[tuple[np.ndarray, ...]] = None  # the same as arrays (`_arrays`)

    @classmethod
    def from_wire(cls, body: dict, capacity: int = 2000) -> "Series":
        """A series from the snapshot shape `{step:[...], value:[...], min:[...], max:[...]}`."""
        return cls(body.get("step", ()), body.get("value", ()), body.get("min"), body.get("max"), capacity)

    def _view(self) -> dict[str, list]:
        if self._lists is None:
            self._lists = self._points.to_dict()
            self._numpy = None
        return self._lists

    def _arrays(self) -> tuple[np.ndarray, ...]:
        """(steps, values, mins, maxs) as float arrays, built once per change (resample runs
        every repaint of every chart and tile)."""
        view = self._view()
        if self._numpy is None:
            self._numpy = tuple(np.asarray(view[key], dtype=np.float64) for key in ("step", "value", "min", "max"))
        return self._numpy

    @property
    def steps(self) -> list[float]:
        return self._view()["step"]

    @property
    def values(self) -> list[float]:
        return self._view()["value"]

    @property
    def mins(self) -> list[float]:
        return self._view()["min"]

    @property
    def maxs(self) -> list[float]:
        return self._view()["max"]

    def __len__(self) -> int:
        return len(self._points)

    @property
    def last(self) -> Optional[float]:
        return self.values[-1] if len(self) else None

    @property
    def last_step(self) -> Optional[float]:
        return self._points.last_step

    def append(self, step: float, value: Any) -> bool:
        """Add a point after the last one; returns False (and keeps nothing) for older steps or non-numbers."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if not self._points.append(float(step), value):
            return False
        self._lists = None
        return True

    def resample(self, buckets: int, first: Optional[float] = None, last: Optional[float] = None,
                 interpolate: bool = True) -> list[Optional[tuple[float, float, float]]]:
        """Exactly `buckets` (mean, min, max) triples over equal step ranges from `first` to `last`.

        Buckets before the first and after the last point are None; empty buckets in between
        are interpolated (unless not `interpolate`: a sparkline shows few points as few marks),
        so a line drawn from them has no holes.
        """
        if buckets <= 0:
            return []
        if not self.values:
            return [None] * buckets
        steps, values, mins, maxs = self._arrays()
        first = steps[0] if first is None else first
        last = steps[-1] if last is None else last
        span = max(last - first, 1e-9)
        # Steps are increasing: the points inside are one slice, and their buckets never decrease.
        inside = slice(np.searchsorted(steps, first, "left"), np.searchsorted(steps, last, "right"))
        if inside.start >= inside.stop:
            return [None] * buckets
        index = np.minimum(buckets - 1, ((steps[inside] - first) / span * buckets).astype(np.int64))
        counts = np.bincount(index, minlength=buckets)
        means = np.bincount(index, weights=values[inside], minlength=buckets)
        filled = counts > 0
        means[filled] /= counts[filled]
        lows = np.full(buckets, np.inf)
        highs = np.full(buckets, -np.inf)
        starts = np.flatnonzero(np.diff(index, prepend=-1))  # where each bucket's run of points begins
        lows[index[starts]] = np.minimum.reduceat(mins[inside], starts)
        highs[index[starts]] = np.maximum.reduceat(maxs[inside], starts)
        known = np.flatnonzero(filled)
        if interpolate and len(known) >= 2:  # straight lines across empty buckets between two filled ones
            gaps = np.arange(known[0], known[-1] + 1)
            gaps = gaps[~filled[gaps]]
            line = np.interp(gaps, known, means[known])
            means[gaps] = lows[gaps] = highs[gaps] = line
            filled[gaps] = True
        return [(m, lo, hi) if f else None
                for m, lo, hi, f in zip(means.tolist(), lows.tolist(), highs.tolist(), filled.tolist())]

    def smoothed(self, window_fraction: float = 0.02) -> "Series":
        """A copy with an EMA over the values (window ~2% of the points); min/max kept."""
        window = max(1.0, len(self.values) * window_fraction)
        smoother = LossSmoother(beta=1.0 - 2.0 / (window + 1.0))
        return Series(self.steps, [smoother.update(v) for v in self.values], self.mins, self.maxs, self.capacity)

    def trend(self) -> int:
        """+1 rising, -1 falling, 0 flat: the newest tenth of the points against the tenth before it."""
        n = len(self.values)
        if n < 2:
            return 0
        k = max(1, n // 10)
        recent = self.values[-k:]
        before = self.values[-2 * k:-k] or self.values[:1]
        a, b = sum(before) / len(before), sum(recent) / len(recent)
        scale = max(abs(a), abs(b), max(self.values) - min(self.values), 1e-12)
        if abs(b - a) / scale < 0.01:
            return 0
        return 1 if b > a else -1


@dataclass
class RunModel:
    """Everything one dashboard shows, filled from a snapshot + live frames or from the run directory."""

    name: str = ""
    run_dir: Optional[Path] = None
    state: str = "unknown"
    config: dict = field(default_factory=dict)
    plan: Optional[dict] = None
    progress: Optional[dict] = None
    series: dict[str, Series] = field(default_factory=dict)
    eval_last: Optional[dict] = None
    eval_best: Optional[dict] = None
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    logs: deque = field(default_factory=lambda: deque(maxlen=MAX_LOGS))
    system: Optional[dict] = None
    preparing: Optional[dict] = None
    """The latest `preparing` body while the feature store is prepared before training (else None)."""
    setup: SetupStages = field(default_factory=SetupStages)
    """The current worker's setup stages before its first step (tui.setup)."""
    threads_now: Optional[int] = None
    """The torch threads the trainer uses since its last `threads` event (threads_follow_load);
    None while it uses the configured count (a new worker starts with it)."""
    summary: Optional[dict] = None
    evaluation: Optional[dict] = None
    """evaluation.json (`trainer.run.evaluation`; None without one): the run screen reads the file
    itself when it changes, live or offline; a snapshot never carries it."""
    evaluation_error: Optional[str] = None
    """What is wrong with a damaged or unreadable evaluation.json (None when fine or absent)."""
    evaluating: bool = False
    """The newest evaluation event says one started and none says it ended (the evaluation of the
    test split that follows a finished run: trainer.posthoc.after)."""
    daemon_pid: Optional[int] = None
    last_checkpoint: Optional[dict] = None
    generation: int = 0
    """Bumped whenever the model is reloaded wholesale (snapshot or run directory)."""
    events_total: int = 0
    """Events appended since the last reload (the event list widgets append only the new ones)."""
    logs_total: int = 0
    """Log lines appended since the last reload."""
    elapsed: ElapsedMap = field(default_factory=ElapsedMap)
    """Training seconds at a step, from the progress seen (the detail chart's time axis)."""

    # ------------------------------------------------------------------ derived values
    @property
    def monitor(self) -> str:
        return self.config.get("monitor") or "val_f1_macro"

    @property
    def monitor_rule(self) -> Monitor:
        """What counts as a new best, from the config summary (old runs: mode from the metric)."""
        return Monitor.of_summary(self.config)

    @property
    def phases(self) -> list[dict]:
        return list((self.plan or {}).get("phases") or [])

    @property
    def step(self) -> int:
        return int((self.progress or {}).get("step") or 0)

    @property
    def total_steps(self) -> int:
        return int((self.progress or {}).get("total_steps") or (self.plan or {}).get("total_steps") or 0)

    @property
    def world(self) -> Optional[dict]:
        """The ranks of a data-parallel run: the newest progress frame's `world` body (rank 0
        sends it when the world size is above 1); None for a single process, before the first
        step, and offline (a run directory keeps no live world)."""
        world = (self.progress or {}).get("world")
        return world if isinstance(world, dict) and world.get("ranks") else None

    @property
    def best_step(self) -> Optional[int]:
        """Step of the best evaluation during training (what best.pt holds): the final summary's,
        else the best evaluation seen."""
        for best in ((self.summary or {}).get("best"), self.eval_best):
            step = best.get("step") if isinstance(best, dict) else None
            if isinstance(step, int):
                return step
        return None

    @property
    def evaluation_result(self) -> Optional[dict]:
        """The stored evaluation a summary shows (the newest on the test split), or None."""
        return headline_result(self.evaluation)

    @property
    def has_summary(self) -> bool:
        """Whether there is a final summary to show: the run finished, or it was evaluated."""
        return bool(self.summary) or self.evaluation_result is not None

    @property
    def alerts(self) -> list[dict]:
        """Warning and error events, oldest first."""
        return [e for e in self.events if e.get("level") in ("warning", "error")]

    # ------------------------------------------------------------------ loading
    def load_snapshot(self, snapshot: dict, run: Optional[dict] = None) -> None:
        """Replace everything with a daemon snapshot (sent on every (re)connect)."""
        run = run or {}
        self.name = run.get("name") or self.name
        if run.get("dir"):
            self.run_dir = Path(run["dir"])
        self.daemon_pid = run.get("daemon_pid")
        self.state = snapshot.get("state") or self.state
        self.config = dict(snapshot.get("config") or {})
        self.plan = snapshot.get("plan") or self.plan
        self.progress = snapshot.get("progress")
        self.series = {name: Series.from_wire(body) for name, body in (snapshot.get("series") or {}).items()}
        self.elapsed = ElapsedMap.of_series(self.series.pop(ELAPSED_SERIES, None))
        self.series.pop(WALL_KEY, None)  # the comparison's wall-clock axis, not a metric to chart
        self.elapsed.add(self.step, (self.progress or {}).get("elapsed"))
        evals = snapshot.get("eval") or {}
        self.eval_last = evals.get("last")
        self.eval_best = evals.get("best")
        self.system = snapshot.get("system")
        self.preparing = snapshot.get("preparing")
        self.reset_feeds(snapshot.get("events") or (), snapshot.get("logs") or ())

    def load_plan(self, frame: dict) -> None:
        """A plan sent after the snapshot (the trainer started after we attached)."""
        self.plan = frame.get("plan") or self.plan
        self.config = dict(frame.get("config") or self.config)

    def reset_feeds(self, events: Iterable[dict], logs: Iterable[dict]) -> None:
        """Replace the events and log lines (and start a new generation for the widgets)."""
        self.generation += 1
        self.events.clear()
        self.logs.clear()
        self.events_total = self.logs_total = 0
        self.summary = None
        self.evaluating = False
        self.setup.clear()
        for event in events:
            self._remember_event(event)
        for log in logs:
            self.apply_log(log)

    # ------------------------------------------------------------------ live frames
    def apply_progress(self, progress: dict) -> None:
        """A progress frame: new header values and one new point per progress metric."""
        self.progress = progress
        self.preparing = None  # training started
        self.setup.clear(training=True)
        self.add_progress_points(progress)

    def add_progress_points(self, progress: dict) -> None:
        """One new point per progress metric of `progress` (also for frames merged away)."""
        step = progress.get("step")
        metrics = progress.get("metrics") or {}
        if step is None:
            return
        self.elapsed.add(step, progress.get("elapsed"))
        for name in PROGRESS_SERIES:
            if name in metrics:
                self.series.setdefault(name, Series()).append(step, metrics[name])

    def apply_preparing(self, preparing: dict) -> None:
        self.preparing = None if preparing.get("finished") else preparing

    def apply_system(self, system: dict) -> None:
        self.system = system

    def apply_log(self, log: dict) -> None:
        self.logs.append(log)
        self.logs_total += 1

    def apply_event(self, event: dict) -> None:
        """A live event frame: remembered, and folded into state, eval series and summary."""
        if not self._remember_event(event):
            return
        data = event.get("data") or {}
        match event.get("kind"):
            case "state" if data.get("state"):
                self.state = data["state"]
                if self.state != "starting":  # a prepare that failed or was stopped sends no last frame
                    self.preparing = None
            case "eval":
                self._apply_eval(data)
            case "finished":
                self.state = "finished"
                self.preparing = None

    def _remember_event(self, event: dict) -> bool:
        """Keep `event` (False if it was already seen around a reconnect); note checkpoints and the summary."""
        seq = event.get("seq")
        newest = self.events[-1].get("seq") if self.events else None
        if seq is not None and newest is not None and seq <= newest:
            return False
        self.events.append(event)
        self.events_total += 1
        data = event.get("data") or {}
        if event.get("kind") == "checkpoint":
            self.last_checkpoint = {"time": event.get("time"), "step": data.get("step"), "path": data.get("path")}
        elif event.get("kind") == "finished":
            self.summary = data
        if data.get("what") in EVALUATION_EVENTS:
            self.evaluating = data["what"] == "evaluation_started"
        if event.get("kind") == "setup":
            self.setup.apply(event)
        elif event.get("kind") == "state" and data.get("state") in ("starting", "running"):
            self.setup.clear()  # a new worker starts (its stages come next), or the trainer trains
        if event.get("kind") == "threads" and isinstance(data.get("threads"), int):
            self.threads_now = data["threads"]
        elif event.get("kind") == "state" and data.get("state") == "starting":
            self.threads_now = None
        return True

    def _apply_eval(self, data: dict) -> None:
        metrics = dict(data.get("metrics") or {})
        step = data.get("step")
        metrics.setdefault("step", step)
        metrics.setdefault("epoch", data.get("epoch"))
        if step is not None:
            for key, value in metrics.items():
                if key.startswith("val_") and isinstance(value, (int, float)):
                    self.series.setdefault(key, Series()).append(step, value)
        self.eval_last = metrics
        rule = self.monitor_rule
        if rule.better(rule.value(metrics), rule.value(self.eval_best)):
            self.eval_best = metrics
