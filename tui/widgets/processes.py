"""The System view (`4`): CPU per core, load, the process table and the trainer's threads.

What it answers is "who takes the cores?": a trainer with more threads than there are free cores
runs many times slower (issue 13: 4-9 samples/s at `threads: 2` beside another busy process on a
2-core box, 18-32 at `threads: 1`). It paints from the newest `system` sample only, so its cost
does not depend on how long the run has been going.
"""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from trainer.contention import ALERT, cores_of
from tui.alerts_model import AlertBook
from tui import braille, fmt

BUSY_THREAD = 10.0
"""% of one core above which a trainer thread counts as busy."""
CORE_CELL = 26
"""Columns of one core's bar, label and percentage in the core grid."""
MAX_CORE_ROWS = 3
"""Rows of per-core bars; more cores are drawn one block each."""
ROLE_STYLE = {"trainer": "bold", "loader": "", "daemon": "dim", "other": ""}


def load_text(system: dict) -> str:
    """`load 1.95 1.85 1.80`, or `load -` without a sample."""
    load = system.get("load") or ()
    return "load " + (" ".join(f"{v:.2f}" for v in load[:3]) if load else fmt.MISSING)


def temperature_text(system: dict) -> str:
    """The CPU temperature, or `temp n/a` where the machine exposes no sensor (an empty field
    would read as a display bug)."""
    temp = system.get("cpu_temp")
    return f"temp {temp:.0f}°C" if temp is not None else "temp n/a"


def process_line(row: dict, width: int) -> Text:
    """One process in one line of `width`: `104% trainer python -m trainer.worker  1.1 GiB` (the
    dashboard's panel); the name takes what the other columns leave."""
    rss = width >= 40
    name_width = max(8, width - 14 - (10 if rss else 0))
    text = Text(f"{row['cpu']:4.0f}% {row.get('role', ''):<8}{fmt.clip(row['name'], name_width):<{name_width}}",
                style=ROLE_STYLE.get(row.get("role"), ""))
    if rss:
        text.append(f" {fmt.size(row.get('rss')):>9}")
    return text


def show_system(view: "SystemView", model, live: bool, alerts: AlertBook) -> None:
    """Push a `RunModel`'s newest sample and configured threads into the view, and the
    oversubscribed alert while `alerts` (the alert bar's book: one rule for when it is on) holds it."""
    view.live = live
    view.threads = (model.config or {}).get("threads")
    view.threads_now = model.threads_now
    view.system = model.system
    alert = alerts.active.get(ALERT)
    view.contention = alert.message if alert is not None else None


class SystemView(Widget, can_focus=True):
    """Who uses the CPU: per-core bars, load, the busiest processes and the trainer's threads."""

    DEFAULT_CSS = """
    SystemView { height: 1fr; padding: 0 1; }
    SystemView > .system-view--bar { color: $accent; }
    SystemView > .system-view--warn { color: $warning; text-style: bold; }
    SystemView > .system-view--title { text-style: bold; }
    """
    COMPONENT_CLASSES = {"system-view--bar", "system-view--warn", "system-view--title"}

    system: reactive[Optional[dict]] = reactive(None)
    """The newest `system` body (None before the first)."""
    threads: reactive[Optional[int]] = reactive(None)
    """The run's configured `threads:` (None when the config summary lacks it)."""
    threads_now: reactive[Optional[int]] = reactive(None)
    """The torch threads in use when threads_follow_load changed them (None: the configured count)."""
    live: reactive[bool] = reactive(False)
    contention: reactive[Optional[str]] = reactive(None)
    """The active oversubscribed alert's message (the daemon's diagnosis), None when there is none."""

    def __init__(self, *, id: Optional[str] = None) -> None:
        super().__init__(id=id)

    def render(self) -> Text:
        s = self.system
        if not s:
            why = "waiting for the first system sample" if self.live else "system samples come from a live run"
            return Text(why, style="dim")
        width = max(30, self.size.width or 78)  # the content width (inside the padding)
        lines = [self._summary(s), *self._cores(s, width), Text(""), *self._table(s, width)]
        if self.contention:
            lines += [Text(""), Text(self.contention, style=self.get_component_rich_style("system-view--warn"))]
        threads = s.get("trainer_threads")
        if threads:
            lines += [Text(""), *self._threads(threads, width)]
        # every line but the alert's is laid out to fit `width`; the alert wraps, whole
        return Text("\n").join(lines)

    def _summary(self, s: dict) -> Text:
        cores = cores_of(s)
        load = (s.get("load") or [0.0])[0]
        text = Text(f"{cores} cores  ", style=self.get_component_rich_style("system-view--title"))
        text.append(load_text(s), self.get_component_rich_style("system-view--warn") if load > cores else "")
        text.append(f"  {temperature_text(s)}")
        used, total = s.get("mem_used"), s.get("mem_total")
        text.append(f"  ram {fmt.size(used)}/{fmt.size(total)}")
        return text

    def _cores(self, s: dict, width: int) -> list[Text]:
        """A grid of per-core bars, as many per row as fit; a many-core box gets one block per
        core instead, so the process table stays on screen at 80x24."""
        values = [float(v) for v in s.get("cpu_percent") or ()]
        per_row = max(1, width // CORE_CELL)
        bar_style = self.get_component_rich_style("system-view--bar")
        if len(values) > per_row * MAX_CORE_ROWS:
            per_line = max(8, width - 17)  # the label and the average after the last block
            mean = sum(values) / len(values)
            lines = [Text.assemble(f"cpu{start:<4} ", (braille.spark(values[start:start + per_line], 0.0, 100.0), bar_style))
                     for start in range(0, len(values), per_line)]
            lines[-1].append(f" {mean:.0f}% avg")
            return lines
        rows = []
        for start in range(0, len(values), per_row):
            row = Text()
            for i, pct in enumerate(values[start:start + per_row], start):
                row.append(f"cpu{i:<3}")
                row.append(fmt.bar(pct / 100, CORE_CELL - 13), bar_style)
                row.append(f" {pct:3.0f}%  ")
            rows.append(row)
        return rows

    def _table(self, s: dict, width: int) -> list[Text]:
        """The process table: CPU in % of one core, its bar as a share of the whole machine."""
        rows = s.get("processes")
        if rows is None:
            return [Text("no process table (the daemon is older than this TUI)", style="dim")]
        cores = cores_of(s)
        others = sum(r["cpu"] for r in rows if r.get("role") == "other")
        fixed = 34  # pid, role, cpu, rss and the gaps
        name_width = max(8, min(max(len(r["name"]) for r in rows) + 1 if rows else 8, width - fixed - 8))
        bar_width = max(0, min(30, width - fixed - name_width))
        title = self.get_component_rich_style("system-view--title")
        lines = [Text(f"{'PID':>7}  {'ROLE':<8}{'NAME':<{name_width}}{'CPU%':>6}  {'':<{bar_width}}{'RSS':>9}", style=title)]
        bar_style = self.get_component_rich_style("system-view--bar")
        for row in rows:
            line = Text(f"{row['pid']:>7}  {row.get('role', ''):<8}{fmt.clip(row['name'], name_width - 1):<{name_width}}{row['cpu']:>6.1f}  ",
                        style=ROLE_STYLE.get(row.get("role"), ""))
            if bar_width:
                line.append(fmt.bar(min(1.0, row["cpu"] / (100 * cores)), bar_width, empty=" "), bar_style)
            line.append(f"{fmt.size(row.get('rss')):>9}")
            lines.append(line)
        lines.append(Text(f"other processes: {others:.0f}% of one core, {max(0.0, cores - others / 100):.1f} of "
                          f"{cores} cores left for the trainer", style="dim"))
        return lines

    def _threads(self, threads: list[dict], width: int) -> list[Text]:
        busy = sum(1 for t in threads if t["cpu"] >= BUSY_THREAD)
        config = f", `threads: {self.threads}` in the config" if self.threads is not None else ""
        if self.threads_now is not None and self.threads is not None and self.threads_now != self.threads:
            config = f", using {self.threads_now} of `threads: {self.threads}`: the box is busy"
        lines = [Text(f"trainer threads: {busy} busy of {len(threads)} shown{config}",
                      style=self.get_component_rich_style("system-view--title"))]
        cell = 22
        per_row = max(1, width // cell)
        bar_style = self.get_component_rich_style("system-view--bar")
        for start in range(0, len(threads), per_row):
            line = Text()
            for t in threads[start:start + per_row]:
                line.append(f"{t['tid']:>7} ")
                line.append(fmt.bar(min(1.0, t["cpu"] / 100), 6), bar_style)
                line.append(f" {t['cpu']:3.0f}%   ")
            lines.append(line)
        return lines
