"""System samples for the `system` protocol message (psutil; no torch, safe for the TUI side).

One ``SystemSampler`` lives in the daemon (or the foreground trainer) and is sampled every
``daemon.system_interval`` seconds. Every call is non-blocking: CPU usage and the disk write
rate are measured between consecutive calls rather than by sleeping.

The process table (`processes`, `trainer_threads`) is trainer/proctable.py; its scan also gives
the trainer's RSS with its children. `gpus` comes from NVIDIA's management library (`pynvml`, the
`nvidia-ml-py` package of the `gpu` extra) when it and a GPU are there (`NvidiaGpus`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Optional

import psutil

from trainer.proctable import ProcessTable

# hwmon/thermal names of CPU package or core sensors, most specific first; acpitz (an ACPI
# thermal zone, usually the CPU on laptops and small boards) only when nothing better exists.
_CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal")
_FALLBACK_SENSOR = "acpitz"


class SystemSampler:
    """Takes `system` samples for one run.

    Args:
        run_dir: the run directory; disk_free/disk_total are of the filesystem holding it.
        trainer_pid_fn: returns the pid of the training process (the worker child in daemon
            mode), or None while there is none.
    """

    def __init__(self, run_dir: Path, trainer_pid_fn: Callable[[], Optional[int]]):
        self.run_dir = Path(run_dir)
        self.trainer_pid_fn = trainer_pid_fn
        self._last_io: Optional[tuple[float, int]] = None  # (monotonic time, bytes written)
        self.processes = ProcessTable()
        self.gpus = NvidiaGpus()
        psutil.cpu_percent(interval=None, percpu=True)  # starts the interval the first sample reads

    def sample(self) -> dict:
        """One `system` message body (see docs/ARCHITECTURE.md); sizes in bytes, rates per second.

        ``mem_used`` is total minus available (memory that cannot be handed out without
        swapping), ``trainer_rss`` the summed RSS of the trainer and all its descendants (pages
        shared by forked workers count once per process); None where a value is unavailable.
        """
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        disk_free, disk_total = self._disk_space()
        trainer_pid = self.trainer_pid_fn()
        cpu_percent = [float(p) for p in psutil.cpu_percent(interval=None, percpu=True)]
        processes, threads = self.processes.sample(trainer_pid)
        sample = {
            "time": time.time(),
            "cpu_percent": cpu_percent,
            "load": [float(v) for v in os.getloadavg()],
            "mem_total": int(vm.total),
            "mem_used": int(vm.total - vm.available),
            "swap_total": int(swap.total),
            "swap_used": int(swap.used),
            "trainer_rss": self._trainer_rss(trainer_pid),
            "disk_free": disk_free,
            "disk_total": disk_total,
            "disk_write_bps": self._disk_write_bps(),
            "cpu_temp": cpu_temperature(),
            "processes": processes,
            "trainer_threads": threads,
            "cores": len(cpu_percent) or (psutil.cpu_count() or 1),
        }
        gpus = self.gpus.sample()
        if gpus:
            sample["gpus"] = gpus
        return sample

    def _trainer_rss(self, pid: Optional[int]) -> Optional[int]:
        if pid is None:
            return None
        scanned = self.processes.family_rss(pid)
        if scanned is not None:
            return scanned
        try:
            proc = psutil.Process(pid)
            total = proc.memory_info().rss
            children = proc.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        for child in children:
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited since it was listed
                pass
        return int(total)

    def _disk_space(self) -> tuple[Optional[int], Optional[int]]:
        try:
            usage = psutil.disk_usage(str(self.run_dir))
        except OSError:  # run directory deleted or filesystem gone
            return None, None
        return int(usage.free), int(usage.total)

    def _disk_write_bps(self) -> Optional[float]:
        """Bytes written per second to all physical disks since the previous call."""
        try:
            counters = psutil.disk_io_counters()
        except (OSError, RuntimeError):
            counters = None
        now = monotonic()
        if counters is None:  # no disk statistics on this system (some containers)
            self._last_io = None
            return None
        previous, self._last_io = self._last_io, (now, counters.write_bytes)
        if previous is None:
            return None
        elapsed, written = now - previous[0], counters.write_bytes - previous[1]
        if elapsed <= 0 or written < 0:  # clock did not advance, or the counters were reset
            return None
        return written / elapsed


def cpu_temperature() -> Optional[float]:
    """Hottest current reading of the CPU sensor in °C, or None where none is exposed."""
    read = getattr(psutil, "sensors_temperatures", None)  # absent on macOS/Windows builds
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    names = [n for n in _CPU_SENSORS if n in sensors]
    names = names or [n for n in sensors if "cpu" in n.lower()]
    names = names or [n for n in (_FALLBACK_SENSOR,) if n in sensors]
    if not names:
        return None
    readings = [entry.current for entry in sensors[names[0]] if entry.current is not None]
    return float(max(readings)) if readings else None


class NvidiaGpus:
    """Each GPU's utilisation, memory and temperature from NVIDIA's management library.

    `pynvml` is imported and NVML initialised at the first sample, once: a box without the
    library, the driver or a GPU gives None from then on at no cost (the daemon samples every
    2 s). A reading that fails later (a GPU fallen off the bus) is null, or leaves that GPU
    out when even its memory cannot be read.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._gpus: Optional[list[tuple[int, str, Any]]] = None  # (index, name, handle)
        self._failed = False

    def sample(self) -> Optional[list[dict]]:
        """[{index, name, util_percent, mem_used, mem_total, temp_c}, ...], or None."""
        if self._failed or (self._gpus is None and not self._open()):
            return None
        rows = [self._read(index, name, handle) for index, name, handle in self._gpus]
        return [row for row in rows if row is not None] or None

    def _open(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._gpus = [(i, _text(pynvml.nvmlDeviceGetName(h)), h) for i, h in enumerate(handles)]
        except Exception:  # ImportError, NVMLError (no driver, no GPU), an old library's OSError
            self._failed = True
            return False
        self._nvml = pynvml
        self._failed = not self._gpus
        return not self._failed

    def _read(self, index: int, name: str, handle: Any) -> Optional[dict]:
        nvml = self._nvml
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:
            return None
        return {"index": index, "name": name,
                "util_percent": _reading(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                "mem_used": int(memory.used), "mem_total": int(memory.total),
                "temp_c": _reading(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))}


def _reading(read: Callable[[], Any]) -> Optional[float]:
    try:
        return float(read())
    except Exception:  # NVMLError_NotSupported and the like: that value is unknown
        return None


def _text(name: Any) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
