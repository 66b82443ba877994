"""What the trainer does before its first step, as `setup` events (docs/PROTOCOL.md, event kinds).

Setting up took from seconds to minutes (torch's import on a busy box, a data check over
thousands of files, verifying a large checkpoint) while the TUI could only say "phase plan not
known yet". Each stage is announced as it begins: `start` (the worker, before torch), `data`,
`store`, `model`, `checkpoint`, then `ready` just before the first step. A stage lasts until the
next one; the TUI shows the newest and how long it has taken.

Torch-free: the worker announces `start` before it imports the engine.
"""
from __future__ import annotations

import time
from typing import Any, Callable

EventSink = Callable[..., None]  # event(kind, level, message, **data): Trainer.event or a publisher's


def announce(event: EventSink, stage: str, message: str, **data: Any) -> None:
    event("setup", "info", message, stage=stage, started=time.time(), **data)


def file_count_watcher(event: EventSink) -> Callable[[int, int], None]:
    """A DECODING watcher: when the decode pass of the in-RAM data begins, its file count names
    the data stage anew (`checking data: 1,234 files`); later files say nothing."""

    def watch(done: int, total: int) -> None:
        if done == 1:
            announce(event, "data", f"checking data: {total:,} files", files=total)

    return watch


def ready(event: EventSink, name: str, model, step: int, total_steps: int) -> None:
    """The set-up is over: the first step comes next."""
    params = sum(p.numel() for p in model.parameters())
    announce(event, "ready", f"ready: {name} ({params:,} parameters), training from step {step:,} of {total_steps:,}",
             parameters=params, step=step)
