"""System samples for the `system` protocol message (psutil; no torch, safe for the TUI side).

One ``SystemSampler`` lives in the daemon (or the foreground trainer) and is sampled every
``daemon.system_interval`` seconds. Every call is non-blocking: CPU usage and the disk write
rate are measured between consecutive calls rather than by sleeping.

The process table (`processes`, `trainer_threads`) is the costly part: one read of
/proc/PID/stat per process on the box, plus /proc/PID/task/*/stat of the trainer. `Process`
objects are kept between samples because psutil measures `cpu_percent` against the previous call
on the same object; name and memory are read only for the few processes that are shown.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from time import monotonic
from typing import Callable, Optional

import psutil

# hwmon/thermal names of CPU package or core sensors, most specific first; acpitz (an ACPI
# thermal zone, usually the CPU on laptops and small boards) only when nothing better exists.
_CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal")
_FALLBACK_SENSOR = "acpitz"
MAX_PROCESSES = 8
"""Rows of the `processes` field: enough to name what competes with the trainer."""
MAX_THREADS = 16


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
        return {
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

    def _trainer_rss(self, pid: Optional[int]) -> Optional[int]:
        if pid is None:
            return None
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


class ProcessTable:
    """The busiest processes of the box and the trainer's busiest threads, between two calls.

    CPU is in % of one core (like top: a process running two busy threads shows 200).
    """

    def __init__(self, own_pid: Optional[int] = None) -> None:
        self.own_pid = own_pid if own_pid is not None else os.getpid()
        self._procs: dict[int, psutil.Process] = {}
        self._thread_times: dict[int, float] = {}  # tid -> CPU seconds at the previous call
        self._thread_clock: Optional[tuple[int, float]] = None  # (trainer pid, monotonic time)

    def sample(self, trainer_pid: Optional[int]) -> tuple[list[dict], list[dict]]:
        """(processes, trainer_threads): at most MAX_PROCESSES rows, the trainer first then by
        CPU (idle processes other than the trainer's and the daemon are left out); at most
        MAX_THREADS threads of the trainer, busiest first. The first call reads 0% CPU for
        everything: there is nothing to measure against yet."""
        usage = self._cpu_by_pid()
        busy = sorted((pid for pid, cpu in usage.items() if cpu > 0 or pid in (trainer_pid, self.own_pid)),
                      key=lambda pid: (pid != trainer_pid, -usage[pid]))
        rows = []
        for pid in busy:
            row = self._row(pid, usage[pid], trainer_pid)
            if row is not None:
                rows.append(row)
            if len(rows) == MAX_PROCESSES:
                break
        return rows, self._threads(trainer_pid)

    def _cpu_by_pid(self) -> dict[int, float]:
        """pid -> % CPU since the previous call, for every process still alive."""
        alive = set(psutil.pids())
        for pid in set(self._procs) - alive:
            del self._procs[pid]
        usage = {}
        for pid in alive:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                # one read of /proc/PID/stat; anything more per process (oneshot, ppid) doubles
                # the cost of a sample on a box with many processes
                usage[pid] = float(proc.cpu_percent(interval=None))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
        return usage

    def _row(self, pid: int, cpu: float, trainer_pid: Optional[int]) -> Optional[dict]:
        """One shown process. A data loader is a child of the trainer (torch starts its workers
        from the training process)."""
        proc = self._procs[pid]
        try:
            with proc.oneshot():
                name, rss, ppid = proc.name(), int(proc.memory_info().rss), proc.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None  # exited since it was measured
        if pid == trainer_pid:
            role = "trainer"
        elif trainer_pid is not None and ppid == trainer_pid:
            role = "loader"
        else:
            role = "daemon" if pid == self.own_pid else "other"
        return {"pid": pid, "name": name, "cpu": round(cpu, 1), "rss": rss, "role": role}

    def _threads(self, trainer_pid: Optional[int]) -> list[dict]:
        """The trainer's threads by CPU since the previous call (0 for a thread seen first)."""
        if trainer_pid is None:
            self._thread_clock, self._thread_times = None, {}
            return []
        now = monotonic()
        try:
            threads = self._procs[trainer_pid].threads() if trainer_pid in self._procs else []
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            threads = []
        previous, clock = self._thread_times, self._thread_clock
        self._thread_times = {t.id: t.user_time + t.system_time for t in threads}
        self._thread_clock = (trainer_pid, now)
        if clock is None or clock[0] != trainer_pid or now <= clock[1]:
            previous = {}  # a new trainer (a restart): its thread ids mean nothing against the old
        elapsed = now - clock[1] if clock else 1.0
        rows = [{"tid": tid, "cpu": round(max(0.0, 100.0 * (spent - previous[tid]) / elapsed), 1) if tid in previous else 0.0}
                for tid, spent in self._thread_times.items()]
        rows.sort(key=lambda row: -row["cpu"])
        return rows[:MAX_THREADS]


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
