"""When will a queued run start, and how long will it take? (`longhaul queue`; no torch)

How long: the samples the run's config plans (its phases' epochs times the training examples of
the newest run on the same `data` section, from that run's plan.json; the folds of a
cross-validation count as the same data: `training_examples`; `max_steps` caps it), timed
like the newest finished run of the same model, features and batch size: its wall time (from its
`started_at`, not from when it was queued; set-up and evaluations included) scaled by the
samples; without a finished one, by the samples/s of a live one (a lower bound: no evaluations
counted). Unknown (None) when no run has trained on that data or that model yet.

When: the runs training now free their slots at their own ETA; each queued run, in order, takes
the first free slot, not before the runs it waits for end. A held or paused run gets no time,
nor does anything behind a run whose length is unknown (it would be a guess).
"""
from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Optional

import yaml

from trainer.run.plan import read_plan
from trainer.run.rundir import RunDir
from trainer.run.state import LIVE_STATES, effective_state, read_state, started_at


def queue_etas(queue) -> dict[str, dict]:
    """{run dir: {"takes": seconds or None, "starts_in": seconds or None}} of a `Queue`."""
    from trainer.run.queue import judge

    history = _finished_or_live_runs(queue.root)
    slots = _slot_free_times(history, queue.slots)
    ends: dict[str, Optional[float]] = {}
    etas = {}
    queued = {entry.run for entry in queue.entries}
    pending = list(queue.entries)
    while pending:
        # in order, except that a run waiting for a run queued behind it (moved ahead of it) is
        # timed after that run, as the queue starts them
        entry = next((e for e in pending if all(d in ends or d not in queued for d in e.after)), pending[0])
        pending.remove(entry)
        takes = estimate_seconds(Path(entry.run), history)
        verdict = judge(entry)
        start = None
        if not (verdict.held or entry.paused or queue.paused) and slots and not math.isinf(slots[0]):
            start = _start_time(slots, entry.after, ends, history, queued)
        end = start + takes if start is not None and takes is not None else None
        if start is not None:
            heapq.heapreplace(slots, end if end is not None else math.inf)
        ends[entry.run] = end
        etas[entry.run] = {"takes": takes, "starts_in": start}
    return etas


def _start_time(slots: list[float], after: list[str], ends: dict, history: list[dict],
                queued: set) -> Optional[float]:
    start = slots[0]
    for dep in after:
        if dep in ends:
            dep_end = ends[dep]
        elif dep in queued:  # not timed (a loop of waits): neither is this one
            return None
        else:
            info = next((h for h in history if h["dir"] == dep), None)
            dep_end = 0.0 if info is None or info["state"] == "finished" else info.get("eta")
        if dep_end is None:
            return None
        start = max(start, dep_end)
    return start


def _slot_free_times(history: list[dict], slots: int) -> list[float]:
    """When each slot is free, from now: the live runs' ETAs (unknown: never), the longest first
    when more runs train than there are slots."""
    remaining = sorted(h["eta"] if h.get("eta") is not None else math.inf for h in history
                       if h["state"] in LIVE_STATES)
    times = remaining[-slots:] if len(remaining) >= slots else remaining + [0.0] * (slots - len(remaining))
    heapq.heapify(times)
    return times


def estimate_seconds(run_dir: Path, history: list[dict]) -> Optional[float]:
    """Seconds of training the queued run's config plans, from similar runs (module docstring)."""
    config = _config(run_dir)
    if config is None:
        return None
    n_train = training_examples(config, history)
    if n_train is None:
        return None
    samples = planned_samples(config, n_train)
    same_kind = [h for h in history if _same_model(h["config"], config)]
    finished = [h for h in same_kind if h["state"] == "finished" and h.get("wall") and h.get("n_train")]
    if finished:  # its whole wall time, set-up and evaluations included, scaled by the samples
        model = finished[0]
        return model["wall"] * samples / max(planned_samples(model["config"], model["n_train"]), 1)
    measured = [h for h in same_kind if h.get("samples_per_s")]
    return samples / measured[0]["samples_per_s"] if measured else None


def training_examples(config: dict, history: list[dict]) -> Optional[float]:
    """The examples an epoch of `config` trains on, from the newest run on the same data. The folds
    of a cross-validation differ only in `data.folds.index`, and each trains on as many examples
    (give or take one a class), so `folds` is left out of the comparison; a run cut into another
    number of folds (or none) trains on another share of the pool: its count is scaled by the
    shares (roughly: a held-out validation fraction is not counted)."""
    same_data = [h for h in history if h.get("n_train") and _data_key(h["config"]) == _data_key(config)]
    same_folds = [h for h in same_data if _folds_k(h["config"]) == _folds_k(config)]
    if same_folds:
        return same_folds[0]["n_train"]
    if same_data:
        return same_data[0]["n_train"] * _train_share(config) / _train_share(same_data[0]["config"])
    return None


def _data_key(config: dict) -> dict:
    return {k: v for k, v in (config.get("data") or {}).items() if k != "folds"}


def _folds_k(config: dict) -> Optional[int]:
    return ((config.get("data") or {}).get("folds") or {}).get("k")


def _train_share(config: dict) -> float:
    """The share of the training pool a run trains on: (k-1)/k in a k-fold cross-validation."""
    k = _folds_k(config)
    return (k - 1) / k if isinstance(k, int) and k >= 2 else 1.0


def planned_samples(config: dict, n_train: float) -> int:
    """Training samples a config plans: its phases' epochs times `n_train`, `max_steps` capping it."""
    optim = config.get("optim") or {}
    epochs = sum(int(p.get("epochs") or 0) for p in config.get("phases") or [{"epochs": 10}])
    samples = int(epochs * n_train)
    if config.get("max_steps"):
        samples = min(samples, config["max_steps"] * int(optim.get("batch_size") or 32) * int(optim.get("accum_steps") or 1))
    return samples


def _same_model(theirs: dict, mine: dict) -> bool:
    model = lambda c: (c.get("model") or {}).get("name")
    kind = lambda c: ((c.get("features") or {}).get("kind"), (c.get("optim") or {}).get("batch_size"))
    return model(theirs) == model(mine) and kind(theirs) == kind(mine)


def _finished_or_live_runs(root: Path) -> list[dict]:
    """Every run of the box that trained (newest first): its state, ETA, config, training
    examples (plan.json) and samples/s (the history's tail)."""
    from trainer.history.tail import recent_rate
    from trainer.run.queue import box_runs

    runs = []
    for path in box_runs(root):
        state = read_state(path)
        if state.get("state") == "queued" or not (RunDir(path).plan.exists() or state.get("state") in LIVE_STATES):
            continue  # never trained: nothing to learn from, no slot taken
        try:
            _, summary = read_plan(path)
        except (OSError, ValueError):
            summary = {}
        started = started_at(path, state) or 0.0  # not config.yaml's time: a queued run waited after it
        runs.append({"dir": str(path), "state": effective_state(path, state), "eta": state.get("eta"),
                     "wall": (state.get("updated") or started) - started,
                     "config": _config(path) or {}, "n_train": (summary or {}).get("n_train"),
                     "samples_per_s": recent_rate(RunDir(path).history), "updated": state.get("updated") or 0.0})
    runs.sort(key=lambda r: -r["updated"])
    return runs


def _config(run_dir: Path) -> Optional[dict]:
    try:
        loaded = yaml.safe_load(RunDir(run_dir).config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None
