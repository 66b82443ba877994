"""The key footer of every screen: Textual's Footer, compact below 120 columns so the keys that
work now fit an 80-column terminal (the run screen's full set is about 85 cells spaced out)."""
from __future__ import annotations

from textual.events import Resize
from textual.widgets import Footer

COMPACT_BELOW = 120  # the app's -narrow/-wide breakpoint


class KeyFooter(Footer):
    def on_resize(self, event: Resize) -> None:
        self.compact = event.size.width < COMPACT_BELOW
