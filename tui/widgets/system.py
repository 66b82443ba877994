"""System panel: CPU per core, load, memory, swap, trainer RSS, disk free and write rate, temperature,
one line per GPU when the sample has `gpus`, and the top processes when there is room (the whole table is the System view, tui/widgets/processes.py)."""
from __future__ import annotations

from typing import Optional

from rich.text import Text

from tui import braille, fmt
from tui.widgets.drawn import DrawnWidget, drawn
from tui.widgets.processes import load_text, process_line, temperature_text

TOP_PROCESSES = 3
"""Processes the panel lists under the per-core view when its rows allow."""
LOW_DISK_FRACTION = 0.05
LOW_DISK_BYTES = 5 * 1024**3
ROOMY_DISK_BYTES = 20 * 1024**3
"""Above this much free space a small fraction is not low: 25 GiB free of a 252 GiB disk (10%)
read `disk space LOW` on every dashboard of this box."""


def disk_is_low(system: dict) -> bool:
    """True when the run directory's file system has < 5 GiB free, or < 5% and < 20 GiB."""
    free, total = system.get("disk_free"), system.get("disk_total")
    if free is None:
        return False
    if free < LOW_DISK_BYTES:
        return True
    return bool(total and free / total < LOW_DISK_FRACTION and free < ROOMY_DISK_BYTES)


def gpu_line(gpu: dict) -> Text:
    """One GPU: `gpu0 87%  mem 40 GiB/141 GiB  64°C` (n/a for a reading the GPU does not give)."""
    util, temp = gpu.get("util_percent"), gpu.get("temp_c")
    return Text(f"gpu{gpu.get('index', 0)} {'n/a' if util is None else f'{util:.0f}%'}  "
                f"mem {fmt.size(gpu.get('mem_used'))}/{fmt.size(gpu.get('mem_total'))}  "
                f"{'temp n/a' if temp is None else f'{temp:.0f}°C'}")


def gpus_of(system: Optional[dict]) -> list[dict]:
    """The sample's GPUs; none from a box without them (or a daemon older than the field)."""
    return list((system or {}).get("gpus") or ())


class SystemPanel(DrawnWidget):
    """The newest system sample. Shows one bar per core when there is room, a compact line otherwise."""

    DEFAULT_CSS = """
    SystemPanel {
        height: 1;
        padding: 0 1;
    }
    SystemPanel > .system--bar { color: $accent; }
    SystemPanel > .system--low { color: $error; text-style: bold reverse; }
    """
    COMPONENT_CLASSES = {"system--bar", "system--low"}

    system: drawn[Optional[dict]] = drawn(None)
    """The last `system` frame body (None before the first sample)."""
    max_rows: drawn[int] = drawn(6)
    """Rows the panel may use; per-core bars are drawn when they fit."""
    live: drawn[bool] = drawn(False)
    """Connected to a daemon: a missing sample is still to come (offline, none ever comes)."""

    def watch_system(self) -> None:
        self._fit()

    def watch_max_rows(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Size the panel to its lines (a style change re-lays out the column it sits in).

        Only when the line count changes: a layout pass costs far more than a repaint.
        """
        rows = self.rows_needed()
        if self.styles.height is None or self.styles.height.cells != rows:
            self.styles.height = rows

    def _facts(self) -> int:
        """Lines under the cores: five, and one per GPU."""
        return 5 + len(gpus_of(self.system))

    def _use_detailed(self) -> bool:
        return len((self.system or {}).get("cpu_percent") or ()) + self._facts() <= self.max_rows

    def _top_processes(self) -> list[dict]:
        """The first processes of the sample (the trainer, then the busiest) that fit under the
        per-core view; none in the compact view."""
        if not self._use_detailed():
            return []
        room = self.max_rows - len(self.system.get("cpu_percent") or ()) - self._facts()
        return list((self.system.get("processes") or ())[:max(0, min(TOP_PROCESSES, room))])

    def rows_needed(self) -> int:
        """Lines the current sample takes: one per core plus five and one per GPU (and the top
        processes) if that fits `max_rows`, else five and one per GPU."""
        if not self.system:
            return 1
        if not self._use_detailed():
            return self._facts()
        return len(self.system.get("cpu_percent") or ()) + self._facts() + len(self._top_processes())

    def draw(self) -> list[Text]:
        system = self.system
        if not system or not self.live:
            # Short enough for the side column at 80x24. Offline, the last sample a run's directory
            # holds is not shown: a finished run read `cpu0 84%` as if it were still training.
            return [Text("system: waiting for a sample" if self.live else "system: live runs only", style="dim")]
        width = max(20, self.size.width or 40)
        lines = self._detailed(system, width) if self._use_detailed() else self._compact(system)
        for line in lines:
            line.no_wrap = True
            line.overflow = "ellipsis"
        return lines

    def _detailed(self, s: dict, width: int) -> list[Text]:
        """One bar per core, then one fact per line."""
        bar_style = self.component_style("system--bar")
        bar_width = max(4, min(40, width - 13))
        lines = [Text.assemble(f"cpu{i:<3}", (fmt.bar(pct / 100, bar_width), bar_style), f" {pct:4.0f}%")
                 for i, pct in enumerate(s.get("cpu_percent") or ())]
        lines.append(Text(f"{load_text(s)}   {temperature_text(s)}"))
        lines.append(Text(f"ram   {self._used(s, 'mem')}"))
        lines.append(Text(f"swap  {self._used(s, 'swap')}   trainer rss {fmt.size(s.get('trainer_rss'))}"))
        lines.append(self._disk(s, long=True))
        lines.append(Text(f"disk writes {fmt.rate(s.get('disk_write_bps'))}"))
        lines += [gpu_line(gpu) for gpu in gpus_of(s)]
        lines += [process_line(row, width) for row in self._top_processes()]
        return lines

    def _compact(self, s: dict) -> list[Text]:
        """Five short lines: all cores as one glyph each, then memory, process, disk; then one
        line per GPU."""
        cores = [float(c) for c in s.get("cpu_percent") or ()]
        mean = sum(cores) / len(cores) if cores else 0.0
        cpu = Text.assemble("cpu ", (braille.spark(cores, 0.0, 100.0)[:16], self.component_style("system--bar")),
                            f" {mean:.0f}% avg of {len(cores)}")
        return [cpu,
                Text(f"{load_text(s)}  {temperature_text(s)}"),
                Text(f"ram {self._used(s, 'mem')}  swap {fmt.size(s.get('swap_used'))}"),
                Text(f"rss {fmt.size(s.get('trainer_rss'))}  writes {fmt.rate(s.get('disk_write_bps'))}"),
                self._disk(s, long=False)] + [gpu_line(gpu) for gpu in gpus_of(s)]

    @staticmethod
    def _used(s: dict, prefix: str) -> str:
        used, total = s.get(f"{prefix}_used"), s.get(f"{prefix}_total")
        text = f"{fmt.size(used)}/{fmt.size(total)}"
        return text + (f" {100 * (used or 0) / total:.0f}%" if total else "")

    def _disk(self, s: dict, long: bool) -> Text:
        free, total = s.get("disk_free"), s.get("disk_total")
        text = Text(f"disk {fmt.size(free)} free")
        if free is not None and total:
            text.append(f" of {fmt.size(total)} ({100 * free / total:.0f}%)" if long else f" ({100 * free / total:.0f}%)")
        if disk_is_low(s):
            text.append(" ")
            text.append(" LOW ", self.component_style("system--low"))
        return text
