"""Who uses the CPU: the busiest processes of the box and the trainer's threads (no torch).

The `system` frame's `processes` and `trainer_threads` (trainer/sysmon.py samples them every
`daemon.system_interval` seconds). CPU is measured between two calls, never by sleeping, in % of
one core (like top: a process with two busy threads shows 200).

Cost matters: the daemon scans every process of the box each sample. On Linux one read of
/proc/PID/stat per process gives its CPU time, parent, RSS and name; going through psutil for
the same took 3-4 times as long (a `Process` per pid, `cpu_count()` on every `cpu_percent`, a
second scan for the trainer's children). Elsewhere psutil does it, reading name and memory only
for the rows shown.
"""
from __future__ import annotations

import os
from time import monotonic
from typing import NamedTuple, Optional

import psutil

MAX_PROCESSES = 8
"""Rows of the `processes` field: enough to name what competes with the trainer."""
MAX_THREADS = 16
_PROC = "/proc"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
INTERPRETERS = ("python", "node", "java", "ruby", "perl", "bash", "sh")
"""Names that say little ("python" is every trainer, test and script): a shown row of one of them
is named by its command line instead."""
NAME_WIDTH = 40


class Proc(NamedTuple):
    """One process as scanned: name, parent, % of one core since the previous scan, RSS bytes
    (None where only the top rows get their details: the psutil path)."""

    name: Optional[str]
    ppid: Optional[int]
    cpu: float
    rss: Optional[int]


class ProcessTable:
    """The process table of one daemon (or foreground trainer), kept between samples."""

    def __init__(self, own_pid: Optional[int] = None, use_proc: Optional[bool] = None) -> None:
        self.own_pid = own_pid if own_pid is not None else os.getpid()
        self.use_proc = os.path.exists(f"{_PROC}/self/stat") if use_proc is None else use_proc
        self._times: dict[int, tuple[int, float]] = {}  # pid -> (start time, CPU seconds): /proc
        self._procs: dict[int, psutil.Process] = {}  # kept so cpu_percent has a previous call
        self._clock: Optional[float] = None
        self._thread_times: dict[int, float] = {}  # tid -> CPU seconds at the previous call
        self._thread_clock: Optional[tuple[int, float]] = None  # (trainer pid, monotonic time)
        self.procs: dict[int, Proc] = {}
        """The last scan: every process, by pid."""

    def sample(self, trainer_pid: Optional[int]) -> tuple[list[dict], list[dict]]:
        """(processes, trainer_threads): at most MAX_PROCESSES rows, the trainer first then by
        CPU (idle processes other than the trainer and the daemon are left out); at most
        MAX_THREADS threads of the trainer, busiest first. The first call reads 0% CPU for
        everything: there is nothing to measure against yet."""
        self.procs = self._scan_proc() if self.use_proc else self._scan_psutil()
        busy = sorted((pid for pid, p in self.procs.items() if p.cpu > 0 or pid in (trainer_pid, self.own_pid)),
                      key=lambda pid: (pid != trainer_pid, -self.procs[pid].cpu))
        rows = []
        for pid in busy:
            row = self._row(pid, trainer_pid)
            if row is not None:
                rows.append(row)
            if len(rows) == MAX_PROCESSES:
                break
        return rows, self._threads(trainer_pid)

    def family_rss(self, pid: int) -> Optional[int]:
        """RSS of `pid` and all its descendants from the last /proc scan (None on the psutil
        path, or when `pid` was not running)."""
        if not self.use_proc or pid not in self.procs:
            return None
        children: dict[int, list[int]] = {}
        for child, proc in self.procs.items():
            children.setdefault(proc.ppid, []).append(child)
        total, todo, seen = 0, [pid], set()
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                total += self.procs[current].rss or 0
                todo.extend(children.get(current, ()))
        return total

    def _scan_proc(self) -> dict[int, Proc]:
        now = monotonic()
        elapsed = now - self._clock if self._clock is not None else 0.0
        self._clock = now
        previous, self._times = self._times, {}
        procs = {}
        for entry in os.listdir(_PROC):
            if not entry.isdigit():
                continue
            stat = _read_stat(int(entry))
            if stat is None:  # exited since the listing
                continue
            name, ppid, started, spent, rss = stat
            pid = int(entry)
            self._times[pid] = (started, spent)
            before = previous.get(pid)
            cpu = 100.0 * (spent - before[1]) / elapsed if before and before[0] == started and elapsed > 0 else 0.0
            procs[pid] = Proc(name, ppid, max(0.0, cpu), rss)
        return procs

    def _scan_psutil(self) -> dict[int, Proc]:
        alive = set(psutil.pids())
        for pid in set(self._procs) - alive:
            del self._procs[pid]
        procs = {}
        for pid in alive:
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                procs[pid] = Proc(None, None, float(proc.cpu_percent(interval=None)), None)
            except _GONE:
                self._procs.pop(pid, None)
        return procs

    def _row(self, pid: int, trainer_pid: Optional[int]) -> Optional[dict]:
        """One shown process. A data loader is a child of the trainer (torch starts its workers
        from the training process); a rank of a data-parallel run is a child of its agent."""
        name, ppid, cpu, rss = self.procs[pid]
        if name is None:
            try:
                proc = self._procs[pid]
                with proc.oneshot():
                    name, rss, ppid = proc.name(), int(proc.memory_info().rss), proc.ppid()
            except _GONE:
                return None  # exited since it was measured
        if name.rstrip("0123456789.") in INTERPRETERS:
            name = _command(pid, name)
        if pid == trainer_pid:
            role = "trainer"
        elif trainer_pid is not None and ppid == trainer_pid:
            role = "trainer" if is_rank(pid) else "loader"  # the ranks of a data-parallel run's agent
        else:
            role = "daemon" if pid == self.own_pid else "other"
        return {"pid": pid, "name": name, "cpu": round(cpu, 1), "rss": int(rss or 0), "role": role}

    def _threads(self, trainer_pid: Optional[int]) -> list[dict]:
        """The trainer's threads by CPU since the previous call (0 for a thread seen first)."""
        if trainer_pid is None:
            self._thread_clock, self._thread_times = None, {}
            return []
        now = monotonic()
        try:
            threads = psutil.Process(trainer_pid).threads()
        except _GONE:
            threads = []
        previous, clock = self._thread_times, self._thread_clock
        self._thread_times = {t.id: t.user_time + t.system_time for t in threads}
        self._thread_clock = (trainer_pid, now)
        if clock is None or clock[0] != trainer_pid or now <= clock[1]:
            return [{"tid": tid, "cpu": 0.0} for tid in list(self._thread_times)[:MAX_THREADS]]
        elapsed = now - clock[1]
        rows = [{"tid": tid, "cpu": round(max(0.0, 100.0 * (spent - previous[tid]) / elapsed), 1) if tid in previous else 0.0}
                for tid, spent in self._thread_times.items()]
        rows.sort(key=lambda row: -row["cpu"])
        return rows[:MAX_THREADS]


def is_rank(pid: int) -> bool:
    """A trainer worker: under a data-parallel run's torchrun agent (the daemon's child), each
    rank is the agent's child, and it is the trainer, not a data loader."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as fh:
            return b"trainer.worker" in fh.read()
    except OSError:
        return False


def _command(pid: int, name: str) -> str:
    """`python -m pytest -q` rather than `python`: the command line without the interpreter's
    path, cut to NAME_WIDTH; `name` when it cannot be read."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        try:
            args = [a.encode() for a in psutil.Process(pid).cmdline()]
        except _GONE:
            return name
    words = [a.decode(errors="replace") for a in args if a]
    if not words:
        return name
    text = " ".join([os.path.basename(words[0]), *words[1:]])
    return text if len(text) <= NAME_WIDTH else text[:NAME_WIDTH - 1] + "…"


def _read_stat(pid: int) -> Optional[tuple[str, int, int, float, int]]:
    """(name, parent pid, start time in ticks, CPU seconds, RSS bytes) from /proc/PID/stat, or
    None when the process is gone. The name is in parentheses and may hold spaces or ')'."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    left, right = data.find(b"("), data.rfind(b")")
    fields = data[right + 2:].split()
    try:  # fields after the name, from `state` (man 5 proc, field 3 = index 0)
        return (data[left + 1:right].decode(errors="replace"), int(fields[1]), int(fields[19]),
                (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE)
    except (IndexError, ValueError):
        return None
