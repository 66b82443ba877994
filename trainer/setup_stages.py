"""What the trainer does before its first step, as `setup` events (docs/PROTOCOL.md, event kinds).

Setting up took from seconds to minutes (torch's import on a busy box, a data check over
thousands of files, verifying a large checkpoint) while the TUI could only say "phase plan not
known yet". Each stage is announced as it begins: `start` (the worker, before torch), `scan` (the
data files listed), `data` (the in-RAM data decoded and checked, with its file count), `store`
(the feature store opened, prepared if needed), `model`, `checkpoint` (verified and loaded), then
`ready` just before the first step; a compiled run then says `compile` (trainer/compiling.py) while its
first step compiles. A stage lasts until the next one (`compile` until the first progress); the TUI
shows the newest and how long it has taken.

Torch-free: the worker announces `start` before it imports the engine.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

EventSink = Callable[..., None]  # event(kind, level, message, **data): Trainer.event or a publisher's


def announce(event: EventSink, stage: str, message: str, **data: Any) -> None:
    event("setup", "info", message, stage=stage, started=time.time(), **data)


@contextmanager
def data_stages(event: EventSink, in_ram: bool) -> Iterator[None]:
    """Around the data set-up: in-RAM data is `scan` (files listed), then `data` when the decode
    pass begins and its file count is known (`checking data: 1,234 files`). A run from the
    feature store announces `store` itself (store_setup): its data is decoded elsewhere."""
    if not in_ram:
        yield
        return
    from trainer.data import DECODING

    def count(done: int, total: int) -> None:
        if done == 1:
            announce(event, "data", f"checking data: {total:,} files", files=total)

    announce(event, "scan", "listing the data files")
    with DECODING.watch(count):
        yield


def ready(event: EventSink, name: str, model, step: int, total_steps: int) -> None:
    """The set-up is over: the first step comes next."""
    params = sum(p.numel() for p in model.parameters())
    announce(event, "ready", f"ready: {name} ({params:,} parameters), training from step {step:,} of {total_steps:,}",
             parameters=params, step=step)
