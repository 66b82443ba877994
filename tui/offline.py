"""Offline mode: a `RunModel` from a run directory when no daemon is serving the run.

The run layer reads the directory (`trainer.run.snapshot.snapshot_from_run_dir`: state.json,
plan.json, the history's downsampled series, the tail of events.jsonl and train.log) into the
same snapshot a daemon sends, so the dashboard loads it the way it loads a live welcome.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainer.run.snapshot import snapshot_from_run_dir
from tui.model import RunModel


def load_run_dir(run_dir: Path, model: Optional[RunModel] = None) -> RunModel:
    """Everything the dashboard shows, from the run directory alone."""
    run_dir = Path(run_dir)
    model = model or RunModel()
    snapshot = snapshot_from_run_dir(run_dir)
    model.last_checkpoint = snapshot["last_checkpoint"]  # checkpoint events among the feeds override it
    model.load_snapshot(snapshot, {"name": snapshot["name"], "dir": str(run_dir)})
    return model
