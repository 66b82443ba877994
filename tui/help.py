"""The key help (`?`), generated from the bindings themselves so it can never drift from them.

Sections, in order: the app's keys (everywhere), the screen the help was opened over, the run
screen, its views (whose keys work while the focus is inside them) and the run list. A class's
keys are the BINDINGS of the class and of its longhaul base classes (mixins like `RunActions`),
not Textual's built-in scrolling and focus keys. A binding's `tooltip`, when it has one, is shown
as the longer explanation; otherwise its description.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Iterable, Optional

from textual.binding import Binding
from textual.keys import format_key

KEY_NAMES = {"escape": "Esc", "enter": "Enter", "tab": "Tab", "space": "Space", "shift+tab": "Shift+Tab"}
"""Keys spelled as on the keyboard (Textual writes `esc`, `⏎`); the footer uses them too."""

SECTIONS = (
    ("Run screen", "tui.screens.run", "RunScreen"),
    ("Detail view (2)", "tui.widgets.detail", "DetailView"),
    ("Events & log view (3)", "tui.widgets.events_view", "EventsView"),
    ("System view (4)", "tui.widgets.processes", "SystemView"),
    ("Run list (longhaul attach without a run)", "tui.screens.picker", "PickerScreen"),
)
"""(title, module, class) of the screens and views whose keys the help lists."""

NOTES = (
    "Leaving (d or q) never stops a run: training goes on in its daemon.",
    "Timeline: █ done, ░ to do, ▼ now, ▏ phase boundary; labels: phase number, name and time "
    "until the phase ends.",
    "Alerts (WARN / ERROR) show in the bar under the header, the most severe first.",
    "Disk free below 10% or 5 GiB is marked LOW.",
)
"""What the screen shows that no key explains."""


@dataclass(frozen=True)
class KeyLine:
    keys: str
    """The keys as shown, e.g. `Esc` or `n Esc` for one binding with several keys."""
    text: str


def key_label(key: str) -> str:
    """One key as a user reads it: `?`, `Esc`, `Enter`, `←`, `ctrl+c`."""
    return KEY_NAMES.get(key) or format_key(key)


def binding_keys(binding: Binding, *, footer: bool = False) -> str:
    """The keys of `binding`, as the help lists them; `footer`: its `key_display` when it has one
    (the footer may show one entry for two bindings, like `+/-`; the help lists each)."""
    if footer and binding.key_display:
        return binding.key_display
    return " ".join(key_label(key.strip()) for key in binding.key.split(","))


def as_binding(entry) -> Binding:
    """A BINDINGS entry: a `Binding` or a (key, action[, description]) tuple."""
    return entry if isinstance(entry, Binding) else Binding(*entry)


def own_bindings(cls: type) -> list[Binding]:
    """The bindings longhaul declares on `cls` and its longhaul base classes, base classes last
    (a subclass's binding of a key replaces the base class's, as in Textual; one class may bind
    a key twice, to actions shown by state like Pause and Resume)."""
    overridden: set[str] = set()
    bindings = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tui."):
            continue
        own = [b for b in map(as_binding, klass.__dict__.get("BINDINGS", ())) if b.key not in overridden]
        overridden |= {b.key for b in own}
        bindings += own
    return bindings


def key_lines(cls: type) -> list[KeyLine]:
    """One line per key: the texts of a key bound twice (Pause, Resume) joined."""
    lines: dict[str, list[str]] = {}
    for binding in own_bindings(cls):
        texts = lines.setdefault(binding_keys(binding), [])
        text = binding.tooltip or binding.description or binding.action
        if text not in texts:
            texts.append(text)
    return [KeyLine(keys, " / ".join(texts)) for keys, texts in lines.items()]


def view_classes() -> list[tuple[str, type]]:
    """(title, class) of every section class that exists (views are added by their own modules;
    a module not written yet is skipped, a module that fails to import is an error)."""
    classes = []
    for title, module_name, class_name in SECTIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            classes.append((title, cls))
    return classes


def help_sections(app_class: type, screen_class: Optional[type] = None) -> list[tuple[str, list[KeyLine]]]:
    """(title, key lines) of every section, the screen the help was opened over first."""
    sections = [("Everywhere", key_lines(app_class))]
    known = view_classes()
    if screen_class is not None and screen_class not in {cls for _, cls in known}:
        lines = key_lines(screen_class)
        if lines:
            sections.append((f"This screen ({screen_class.__name__})", lines))
    ordered = sorted(known, key=lambda item: item[1] is not screen_class)  # stable: the rest keep their order
    sections += [(title, key_lines(cls)) for title, cls in ordered]
    return [(title, lines) for title, lines in sections if lines]


def key_width(sections: list[tuple[str, list[KeyLine]]]) -> int:
    """Columns of the keys column: as wide in every section, so that the descriptions align."""
    return max((len(line.keys) for _, lines in sections for line in lines), default=1)
