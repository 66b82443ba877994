"""Pilot scaffolding of the TUI tests: the app under test on the recording's frozen clock
(tests/tui_fakes.py), and async test functions without a pytest asyncio plugin."""
from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Optional

import tui_fakes
from tui import fmt
from tui.app import LonghaulApp


def async_test(fn):
    """Run an async test function in a fresh event loop (no pytest asyncio plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def make_app(run_dir: Optional[Path], **options) -> LonghaulApp:
    """The app attached to `run_dir` (its parent is the runs root), at the recording's time,
    painting every frame at once and retrying a lost daemon within 0.2 s."""
    options.setdefault("refresh_interval", 0.0)
    options.setdefault("link_retry_max", 0.2)
    return LonghaulApp(run_dir, run_dir.parent if run_dir else None, clock=fmt.frozen_clock(tui_fakes.T0), **options)
