"""The run queue of a runs root: runs added with `start --queue` wait their turn, the way pueue's
tasks do, in `ROOT/queue.json`.

There is no scheduler process: the queue is advanced (`dispatch`) at every moment a slot can
free or a run can become startable: `start --queue`, every `queue` command, a run's daemon when
its run ends (finished, failed or stopped), and `resume --all` at boot after the interrupted runs
are back. A box has `slots` (default 1) runs training at once; every live run in the registry
takes one, queued or not (on a 2-core box two runs at once are each more than twice as slow).

An entry names its run directory and the runs it waits for (`after`). A queued run starts when a
slot is free, it is not paused, and every run it waits for has finished; a run it waits for that
failed, stopped or is gone holds it, with the reason, and it is never started blindly (it goes on
waiting: resuming that run to its end releases it). The queued run's own state.json says
`queued` (with `queued_at`, `after`, and once moved or paused its `queue_rank` and
`queue_paused`), and `queue.settings.json` mirrors the slots and the queue's pause, so a queue
file damaged on disk is rebuilt from them without losing a run, its order or its settings; the
rebuild is recorded in the new file (`rebuilt`: when, why, where the damaged file was kept) until
the user's next queue command. Every change is made under an exclusive `flock` of
`ROOT/queue.lock`: two `start --queue` at the same instant both land. No torch.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from trainer.run.errors import RunError
from trainer.run.rundir import RunDir, atomic_write_json, is_run_dir
from trainer.run.state import LIVE_STATES, StateFile, effective_state, read_state

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"
SETTINGS_FILE = "queue.settings.json"
LOCK_FILE = "queue.lock"
QUEUED = "queued"
VERSION = 1


class QueueError(RunError):
    """A queue request that cannot be done (an unknown run, a running run removed...)."""


@dataclass
class Entry:
    """One queued run: its directory, the run directories it waits for, paused or not."""

    run: str
    after: list[str] = field(default_factory=list)
    paused: bool = False
    added: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return {"run": self.run, "after": self.after, "paused": self.paused, "added": self.added}


@dataclass
class Queue:
    """The queue file's content: slots, whether the whole queue is paused, the entries in order."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    slots: int = 1
    paused: bool = False
    rebuilt: Optional[dict] = None
    """{time, problem, damaged_copy}: the file was rebuilt from the run directories (kept until
    the user's next queue command: `acknowledge_rebuild`)."""
    damaged: bool = False  # rebuilt on this read: the damaged file is still in place (kept aside at the write)

    def find(self, run_dir: Path) -> Optional[Entry]:
        return next((e for e in self.entries if e.run == str(run_dir)), None)

    def position(self, run_dir: Path) -> Optional[int]:
        entry = self.find(run_dir)
        return self.entries.index(entry) + 1 if entry else None


# ----------------------------------------------------------------------------- the file
def queue_file(root: Path) -> Path:
    return Path(root) / QUEUE_FILE


@contextmanager
def locked(root: Path) -> Iterator[Queue]:
    """The queue of `root`, read under its exclusive lock and written back when the block ends
    without an error."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(root / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        queue = _read(root)
        yield queue
        _write(queue)


def read_queue(root: Path) -> Queue:
    """The queue as it is now, without the lock (for showing it; a torn read is impossible: the
    file is replaced atomically). A damaged file is rebuilt in memory only."""
    return _read(Path(root).absolute())


def _read(root: Path) -> Queue:
    path = queue_file(root)
    try:
        raw = json.loads(path.read_text())
        entries = [Entry(str(e["run"]), [str(a) for a in e.get("after") or []], bool(e.get("paused")),
                         float(e.get("added") or 0.0)) for e in raw["entries"]]
        rebuilt = raw.get("rebuilt") if isinstance(raw.get("rebuilt"), dict) else None
        return Queue(root, entries, int(raw.get("slots", 1)), bool(raw.get("paused")), rebuilt)
    except FileNotFoundError:  # never made, or deleted: queued runs say where they belong
        return _rebuilt(root, f"{path} was missing", damaged=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return _rebuilt(root, f"{path} was damaged ({type(exc).__name__}: {exc})", damaged=True)


def _rebuilt(root: Path, problem: str, damaged: bool) -> Queue:
    """The queue from the run directories under `root` whose state.json says queued, in the order
    `move` left (`queue_rank`) or else they were queued, paused as they were; their dependencies
    come back from the same file, the slots and the queue's pause from queue.settings.json."""
    found = []
    for path in box_runs(root):
        state = read_state(path)
        if state.get("state") == QUEUED and state.get("queue_root", str(root)) == str(root):
            entry = Entry(str(path.absolute()), list(state.get("after") or []), bool(state.get("queue_paused")),
                          float(state.get("queued_at") or 0.0))
            rank = state.get("queue_rank")
            found.append((rank if isinstance(rank, (int, float)) else entry.added, entry))
    found.sort(key=lambda pair: pair[0])
    queue = Queue(root, [entry for _, entry in found], **_read_settings(root), damaged=damaged)
    if found or damaged:
        log.warning("%s; rebuilt from the run directories", problem)
        queue.rebuilt = {"time": time.time(), "problem": problem, "damaged_copy": None}
    return queue


def _read_settings(root: Path) -> dict:
    """The slots and the queue's pause as queue.settings.json mirrors them (defaults without it)."""
    try:
        raw = json.loads((Path(root) / SETTINGS_FILE).read_text())
        return {"slots": max(int(raw.get("slots", 1)), 1), "paused": bool(raw.get("paused"))}
    except (OSError, ValueError, TypeError, AttributeError):
        return {"slots": 1, "paused": False}


def box_runs(root: Path) -> list[Path]:
    """The box's run directories as a queue of `root` sees them: those under it (by name), then
    the registered ones. Where a queue's runs may be, which runs take slots, whose speed tells
    how long a queued run takes."""
    from trainer.run import registry

    root = Path(root)
    paths = [p for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    return [p for p in dict.fromkeys(paths + registry.registered()) if is_run_dir(p)]


def _write(queue: Queue) -> None:
    path = queue_file(queue.root)
    if queue.damaged and path.exists():  # the damaged file is kept for a look, not overwritten
        kept = path.with_name(f"{QUEUE_FILE}.damaged-{int(time.time())}")
        os.replace(path, kept)
        queue.rebuilt = {**(queue.rebuilt or {}), "damaged_copy": str(kept)}
    queue.damaged = False
    atomic_write_json(path, {"version": VERSION, "slots": queue.slots, "paused": queue.paused,
                             "entries": [e.to_json() for e in queue.entries], "rebuilt": queue.rebuilt})
    settings = {"slots": queue.slots, "paused": queue.paused}
    if _read_settings(queue.root) != settings or not (queue.root / SETTINGS_FILE).exists():
        atomic_write_json(queue.root / SETTINGS_FILE, settings)


def settled(root: Path) -> Queue:
    """The queue, a damaged file set aside and the rebuilt one written (what `longhaul queue`
    shows: where the damaged file was kept); without damage, as `read_queue`."""
    queue = read_queue(root)
    if not queue.damaged:
        return queue
    with locked(root) as queue:
        pass
    return queue


def acknowledge_rebuild(root: Path) -> None:
    """The user gave a queue command: a rebuild said so far is not said any more."""
    if read_queue(root).rebuilt is None:
        return
    with locked(root) as queue:
        if not queue.damaged:  # damaged again since: that rebuild is news
            queue.rebuilt = None


# ----------------------------------------------------------------------------- adding
def enqueue(root: Path, run_dir: Path, after: Sequence[str] = ()) -> int:
    """Add the run directory `run_dir` (config written, never started) to the queue of `root`,
    waiting for the run directories `after`; returns its position (from 1). Its state.json says
    `queued` from now on."""
    run_dir = Path(run_dir).absolute()
    after = [str(Path(a).absolute()) for a in after]
    for dep in after:
        if not is_run_dir(Path(dep)):
            raise QueueError(f"--after {dep}: no such run")
    now = time.time()
    with locked(root) as queue:
        if queue.find(run_dir) is None:
            queue.entries.append(Entry(str(run_dir), after, added=now))
        # written under the lock, after the queue was read: a queue rebuilt from the run
        # directories (a missing file) must not count this run twice
        StateFile(run_dir).update(state=QUEUED, name=run_dir.name, queued_at=now, after=after,
                                  queue_root=str(Path(root).absolute()))
        return queue.position(run_dir)


# ----------------------------------------------------------------------------- starting
@dataclass
class Verdict:
    """Whether a queued run may start now: `ready`, or why not (`waiting` or `held`)."""

    ready: bool
    waiting: Optional[str] = None
    held: Optional[str] = None


def judge(entry: Entry) -> Verdict:
    """May `entry` start, slots aside? A run it waits for that did not finish holds it."""
    if entry.paused:
        return Verdict(False, waiting="paused")
    for dep in entry.after:
        name = Path(dep).name
        if not is_run_dir(Path(dep)):
            return Verdict(False, held=f"waits for {name}, which is gone ({dep})")
        state = effective_state(dep)
        if state in ("failed", "stopped", "interrupted"):
            return Verdict(False, held=f"waits for {name}, which is {state}: it starts once {name} finishes "
                                       f"(`longhaul resume {name}`), or remove it from the queue")
        if state != "finished":
            return Verdict(False, waiting=f"waits for {name} ({state})")
    return Verdict(True)


def busy_slots(runs: Sequence[Path]) -> int:
    """Runs that train now (a live daemon or foreground trainer): each takes a slot."""
    return sum(1 for run in runs if effective_state(run) in LIVE_STATES)


def dispatch(root: Path, known_runs: Callable[[], list[Path]],
             launch: Callable[[Path], int]) -> list[tuple[Path, Optional[str]]]:
    """Start the queued runs of `root` that may start while slots are free. `known_runs()`: every
    run directory of the box (the live ones take slots); `launch(run_dir)`: start its daemon.
    Returns (run dir, None) for each run started and (run dir, error) for each that could not
    start (it leaves the queue: its state says why)."""
    started: list[tuple[Path, Optional[str]]] = []
    if not read_queue(root).entries:
        return started
    with locked(root) as queue:
        if queue.paused:
            return started
        free = queue.slots - busy_slots(known_runs())
        for entry in list(queue.entries):
            if effective_state(entry.run) != QUEUED:  # started or removed by hand since: not ours
                log.warning("%s is %s: dropped from the queue", entry.run, effective_state(entry.run))
                queue.entries.remove(entry)
                continue
            if free <= 0:
                break
            if not judge(entry).ready:
                continue
            queue.entries.remove(entry)
            started.append(_start(Path(entry.run), launch))
            free -= 1
    return started


def _start(run_dir: Path, launch: Callable[[Path], int]) -> tuple[Path, Optional[str]]:
    try:
        launch(run_dir)
    except (RunError, OSError) as exc:
        log.error("queued run %s did not start: %s", run_dir, exc)
        return run_dir, str(exc)
    return run_dir, None


def queued_status(run_dir: Path, state: dict) -> dict:
    """What `status --json` says of a queued run (`queue`): its position, what it waits for,
    and why it does not start (held: a run it waits for did not finish; waiting; paused)."""
    root = Path(state.get("queue_root") or Path(run_dir).parent)
    queue = read_queue(root)
    entry = queue.find(Path(run_dir).absolute())
    if entry is None:
        return {"position": None, "root": str(root), "after": [], "held": f"not in the queue of {root}",
                "waiting": None, "paused": False}
    verdict = judge(entry)
    waiting = verdict.waiting or ("the queue is paused" if queue.paused else None)
    return {"position": queue.entries.index(entry) + 1, "root": str(root), "after": [Path(a).name for a in entry.after],
            "held": verdict.held, "waiting": waiting, "paused": entry.paused or queue.paused}


# ----------------------------------------------------------------------------- changing
def move(root: Path, run_dir: Path, position: int) -> int:
    """Put a queued run at `position` (from 1; past the end: last); returns where it went."""
    with locked(root) as queue:
        entry = _queued(queue, run_dir)
        queue.entries.remove(entry)
        index = min(max(position, 1), len(queue.entries) + 1) - 1
        queue.entries.insert(index, entry)
        for rank, each in enumerate(queue.entries):  # a rebuild of a damaged file keeps the order
            _keep(Path(each.run), queue_rank=rank)
        return index + 1


def remove(root: Path, run_dir: Path) -> None:
    """Take a queued run out of the queue; its directory (a config, never trained) is removed,
    as a `start` that never ran leaves nothing. A run that already started is refused."""
    with locked(root) as queue:
        entry = queue.find(Path(run_dir).absolute())
        if entry is None:
            state = effective_state(run_dir)
            hint = f"stop it first (`longhaul stop {Path(run_dir).name}`)" if state in LIVE_STATES else "it is not queued"
            raise QueueError(f"{Path(run_dir).name} is {state}, not in the queue: {hint}")
        queue.entries.remove(entry)
        _forget(Path(entry.run))


def _forget(run_dir: Path) -> None:
    files = RunDir(run_dir)
    if files.history.exists() or files.checkpoints.exists():  # defensive: it trained after all
        StateFile(run_dir).update(state="stopped", stop_reason="removed from the queue")
        return
    for child in run_dir.iterdir():
        child.unlink()
    run_dir.rmdir()


def set_paused(root: Path, paused: bool, run_dir: Optional[Path] = None) -> None:
    """Pause (or let go on) one queued run, or the whole queue when `run_dir` is None: a paused
    entry is passed over, a paused queue starts nothing; runs already training go on."""
    with locked(root) as queue:
        if run_dir is None:
            queue.paused = paused
        else:
            _queued(queue, run_dir).paused = paused
            _keep(Path(run_dir), queue_paused=paused)


def set_slots(root: Path, slots: int) -> None:
    if slots < 1:
        raise QueueError(f"slots must be at least 1, found {slots}")
    with locked(root) as queue:
        queue.slots = slots


def _keep(run_dir: Path, **fields) -> None:
    """Queue fields in a queued run's own state.json, which a rebuild reads (nothing else writes it
    while the run is queued; one that started meanwhile is left alone). Best effort: the queue
    file holds them anyway."""
    try:
        if read_state(run_dir).get("state") == QUEUED:
            StateFile(run_dir).update(**fields)
    except OSError as exc:
        log.warning("cannot keep %s in %s: %s", ", ".join(fields), RunDir(run_dir).state, exc)


def _queued(queue: Queue, run_dir: Path) -> Entry:
    entry = queue.find(Path(run_dir).absolute())
    if entry is None:
        raise QueueError(f"{Path(run_dir).name} is not in the queue ({effective_state(run_dir)})")
    return entry
