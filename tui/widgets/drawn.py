"""Widgets repainted only when what they draw changes.

Textual repaints a widget whenever one of its reactives changes, and a repaint rebuilds the
widget's whole content. On an idle dashboard most changes do not change a single cell: the step
range of a validation tile grows, a value moves in its fourth digit, a sample repeats the last
one. `DrawnWidget` draws its look as lines of `Text` (`draw`), and a change of a `drawn`
reactive repaints it only when, and only where, those lines differ from the ones on the screen
(issue 13: the idle cost).
"""
from __future__ import annotations

from typing import Any, Optional, TypeVar
from weakref import WeakKeyDictionary

from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.widget import Widget


T = TypeVar("T")


class drawn(reactive[T]):
    """A reactive whose change asks its `DrawnWidget` to repaint if the drawn lines changed
    (instead of repainting at once, as `reactive` does)."""

    def __init__(self, default: T, *, layout: bool = False) -> None:
        super().__init__(default, repaint=False, layout=layout)

    def _set(self, obj: "DrawnWidget", value: T, always: bool = False) -> None:
        before = getattr(obj, self.name)
        super()._set(obj, value, always)
        if always or getattr(obj, self.name) != before:
            obj.redraw()


_waiting: "WeakKeyDictionary[App, list[DrawnWidget]]" = WeakKeyDictionary()
"""Per app: the widgets whose drawn state changed since the last check."""


def _check_waiting(app: App) -> None:
    for widget in _waiting.pop(app, []):
        if widget.is_mounted:
            widget._repaint_if_changed()
        else:
            widget._check_queued = False


class DrawnWidget(Widget):
    """A widget whose look is the lines its `draw` returns (for the widget's current size)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: Optional[list[Text]] = None
        self._shown_size = Size(0, 0)
        self._check_queued = False
        # The lines the last check drew, for the repaint it asked for (drawing twice per change
        # was a third of the dashboard's idle cost).
        self._next: Optional[tuple[Size, list[Text]]] = None
        self._kept_styles: dict[str, Style] = {}

    def draw(self) -> list[Text]:
        """The widget's lines, top to bottom."""
        raise NotImplementedError

    def component_style(self, name: str) -> Style:
        """`get_component_rich_style(name)`, kept until the styles change (Textual drops its own
        copy at every repaint, and resolving one cost more than the rest of a tile's drawing)."""
        style = self._kept_styles.get(name)
        if style is None:
            style = self._kept_styles[name] = self.get_component_rich_style(name)
        return style

    def notify_style_update(self) -> None:
        self._kept_styles.clear()
        super().notify_style_update()

    def render(self) -> Text:
        ready, self._next = self._next, None
        self._shown = ready[1] if ready is not None and ready[0] == self.size else self.draw()
        self._shown_size = self.size
        return self._shown[0] if len(self._shown) == 1 else Text("\n").join(self._shown)

    def redraw(self) -> None:
        """Repaint soon, if the lines differ from those shown. Several changes in a row (one
        frame sets value, trend and series) are compared once, after the last of them, and all
        widgets changed by one message are compared in one callback (not one message each)."""
        if self._check_queued or not self.is_mounted:
            return
        self._check_queued = True
        waiting = _waiting.setdefault(self.app, [])
        if not waiting:
            self.app.call_later(_check_waiting, self.app)
        waiting.append(self)

    def _repaint_if_changed(self) -> None:
        self._check_queued = False
        lines = self.draw()
        if self._shown is None or self._shown_size != self.size or len(lines) != len(self._shown):
            self._next = (self.size, lines)
            self.refresh()
            return
        width = self.size.width
        # Only the lines that changed: Textual then composes and writes only these (a tile whose
        # value changed repaints one row of three).
        changed = [Region(0, y, width, 1) for y, (before, after) in enumerate(zip(self._shown, lines))
                   if before != after]
        if changed:
            self._next = (self.size, lines)
            self.refresh(*changed)
