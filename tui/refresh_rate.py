"""How often the run screen repaints, and the `+`/`-` keys that change it (like btop's).

Every repaint of the dashboard costs the training CPU: the default of 2 s (btop's too) keeps an
attached, idle TUI under 1% of one core (bench/tui.py). Frames that arrive between repaints are
not lost, only shown together at the next one; `+` trades CPU for fresher numbers.

`RefreshKeys` is a mixin of the app, which declares the bindings (`plus`, `minus`) and holds
`refresh_interval`: the chosen rate outlives the run screen, so a run opened from the picker
later in the session gets it too.
"""
from __future__ import annotations

import dataclasses

STEPS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""The refresh intervals `+`/`-` step through, in seconds."""
DEFAULT = 2.0


def faster(interval: float) -> float:
    """The next shorter step (the shortest stays), from any interval, also one between steps."""
    shorter = [s for s in STEPS if s < interval]
    return shorter[-1] if shorter else STEPS[0]


def slower(interval: float) -> float:
    """The next longer step (the longest stays)."""
    longer = [s for s in STEPS if s > interval]
    return longer[0] if longer else STEPS[-1]


def label(interval: float) -> str:
    """`2000ms`: the rate as btop shows it."""
    return f"{round(interval * 1000)}ms"


class RefreshKeys:
    """`action_refresh_faster`/`_slower` of the app; the `plus` binding's description is the rate."""

    refresh_interval: float

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The keys act on run screens only (the picker keeps its own pace)."""
        if action in ("refresh_faster", "refresh_slower"):
            return hasattr(self.screen, "set_refresh_interval")
        return True

    def action_refresh_faster(self) -> None:
        self.set_refresh_interval(faster(self.refresh_interval))

    def action_refresh_slower(self) -> None:
        self.set_refresh_interval(slower(self.refresh_interval))

    def set_refresh_interval(self, interval: float) -> None:
        """Use `interval` from now on: in the footer, in every open run screen, and in those opened later."""
        self.refresh_interval = interval
        self.show_refresh_interval()
        for screen in self.screen_stack:
            if hasattr(screen, "set_refresh_interval"):
                screen.set_refresh_interval(interval)

    def show_refresh_interval(self) -> None:
        """Write the rate into the footer entry of `+` (`+/- 2000ms`)."""
        bindings = self._bindings.key_to_bindings
        bindings["plus"] = [dataclasses.replace(b, description=label(self.refresh_interval)) for b in bindings["plus"]]
        self.refresh_bindings()
