"""Run registry: run directories, their state file, liveness and socket paths.

A *run directory* (`checkpoints/<name>/`) holds everything durable about one run (see
docs/ARCHITECTURE.md). This module answers "which runs exist, what state are they in, where is
their socket" from files alone, so `longhaul ls/status` and the TUI work with or without a daemon.

No torch here: the TUI imports this module.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"

#: Every state a run can be in. `interrupted` is never written: it is what `effective_state`
#: reports when the file claims a live state but its process is gone.
RUN_STATES = ("starting", "running", "paused", "stopping", "stopped", "finished", "failed", "interrupted")
#: States that promise a live owner process (daemon or foreground trainer).
LIVE_STATES = frozenset({"starting", "running", "paused", "stopping"})
#: States after which nothing runs any more.
FINAL_STATES = frozenset({"stopped", "finished", "failed"})

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Leaves room for "<runtime dir>/" inside sun_path's 108 bytes.
_SOCKET_NAME_MAX = 40


class RunError(Exception):
    """Base of the registry's errors: a message meant for the user, no traceback needed."""


class RunNotFound(RunError, LookupError):
    """No run directory matches the given name or path."""


class RunExists(RunError, FileExistsError):
    """`create_run_dir` was asked for a name that is already taken."""


class RuntimeDirError(RunError):
    """The runtime directory for sockets is missing, foreign or not private."""


class StateFileError(RunError, ValueError):
    """state.json exists but cannot be read as a JSON object."""


# ----------------------------------------------------------------------------- run directories
def runs_root() -> Path:
    """Root of run directories: `$LONGHAUL_ROOT`, else `./checkpoints` (absolute)."""
    root = os.environ.get("LONGHAUL_ROOT") or "checkpoints"
    return Path(root).expanduser().absolute()


def is_run_dir(path: Path) -> bool:
    """True when `path` looks like a run directory (has a config or a state file)."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / STATE_FILE).is_file())


def check_run_name(name: str) -> str:
    """Return `name` if it is a valid run name, else raise ValueError saying why."""
    if not name or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _run_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if is_run_dir(p))


def resolve_run(name_or_path: str | os.PathLike, root: Optional[Path] = None) -> Path:
    """A run name under `root` (default `runs_root()`) or a run directory path -> absolute path.

    Raises RunNotFound naming the runs that do exist.
    """
    root = Path(root) if root is not None else runs_root()
    text = str(name_or_path)
    if _NAME_RE.match(text) and text not in (".", "..") and is_run_dir(root / text):
        return (root / text).absolute()
    path = Path(text).expanduser()
    if is_run_dir(path):
        return path.absolute()
    names = _run_names(root)
    known = f"runs under {root}: {', '.join(names)}" if names else f"no runs under {root}"
    raise RunNotFound(f"no run named or at {text!r} ({known})")


def create_run_dir(root: Path, name: str) -> Path:
    """Create `root/name` (and root). Raises RunExists if it is taken, ValueError for bad names."""
    check_run_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    try:
        path.mkdir()
    except FileExistsError:
        raise RunExists(f"run {name!r} already exists at {path}; pick another --name or resume it") from None
    return path.absolute()


# ----------------------------------------------------------------------------- atomic files
def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


class StateFile:
    """`RUN_DIR/state.json`: the run's durable status, merged and rewritten atomically.

    Fields: name, state, pid (daemon or foreground process), step, total_steps, epoch, phase,
    phase_name, elapsed, eta, last_eval, best_eval, last_checkpoint {time, step, path}, updated;
    the daemon also writes socket and stop_reason. One process writes it at a time (the daemon
    in daemon mode, the foreground trainer otherwise), so read-merge-write needs no lock.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE

    def read(self) -> dict:
        """The current fields; {} when the file does not exist yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateFileError(f"{self.path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StateFileError(f"{self.path}: expected a JSON object, found {type(data).__name__}")
        return data

    def update(self, **fields: Any) -> dict:
        """Merge `fields` into the file (atomic write, fsync'ed) and return the new content."""
        data = self.read()
        data.update(fields)
        data["updated"] = time.time()
        atomic_write_json(self.path, data)
        return data


# ----------------------------------------------------------------------------- liveness
def pid_alive(pid: Optional[int]) -> bool:
    """True when a process with this pid exists (zombies count as dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # state letter follows the parenthesised command name, which may contain spaces
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def process_cmdline(pid: int) -> list[str]:
    """argv of a process ([] when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        try:
            import psutil  # only where /proc is missing (macOS)

            return psutil.Process(pid).cmdline()
        except Exception:
            return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_longhaul_process(pid: Optional[int]) -> bool:
    """True when `pid` is alive and is longhaul (daemon, worker or `longhaul ...`), not a
    recycled pid now used by another program."""
    if not pid_alive(pid):
        return False
    argv = process_cmdline(pid)
    if not argv:
        return True  # cannot tell (no permission): believe the state file
    return any("longhaul" in arg or arg.startswith("trainer.") for arg in argv)


def effective_state(run_dir: Path, state: Optional[dict] = None) -> str:
    """The state to show: the file's, except `interrupted` when it claims a live state
    (starting/running/paused/stopping) but its process is gone or is another program."""
    if state is None:
        state = StateFile(run_dir).read()
    written = state.get("state") or "stopped"  # never started: nothing to resume, nothing live
    if written in LIVE_STATES and not is_longhaul_process(state.get("pid")):
        return "interrupted"
    return written


# ----------------------------------------------------------------------------- runtime dir
def check_private_dir(path: Path, uid: Optional[int] = None) -> Path:
    """Raise RuntimeDirError unless `path` is a real directory owned by `uid` (default: us)
    with no group/other permissions. Returns `path`."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RuntimeDirError(f"runtime directory {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"refusing to use {path} for sockets: it is not a directory (a symlink or file?)")
    if st.st_uid != uid:
        raise RuntimeDirError(
            f"refusing to use {path} for sockets: it is owned by uid {st.st_uid}, not by you (uid {uid}); "
            f"remove it or set XDG_RUNTIME_DIR to a private directory")
    if st.st_mode & 0o077:
        raise RuntimeDirError(
            f"refusing to use {path} for sockets: its permissions {stat.S_IMODE(st.st_mode):04o} let other users "
            f"in; run `chmod 700 {path}`")
    return path


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/longhaul/` (fallback `/tmp/longhaul-<uid>/`), created 0700 and checked
    to be ours and private (RuntimeDirError otherwise)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        path = Path(xdg) / "longhaul"
    else:
        path = Path("/tmp") / f"longhaul-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return check_private_dir(path)


def socket_path(run_dir: Path) -> Path:
    """The daemon socket of a run: `<runtime dir>/<name>-<hash8>.sock`, where the hash is of the
    absolute run directory (so equal names under different roots do not collide)."""
    run_dir = Path(run_dir).absolute()
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    return runtime_dir() / f"{run_dir.name[:_SOCKET_NAME_MAX]}-{digest}.sock"


def find_socket(run_dir: Path, state: Optional[dict] = None) -> Optional[Path]:
    """The socket of the run's daemon if one exists: the usual `socket_path`, else the path the
    daemon recorded in state.json (a daemon started with another XDG_RUNTIME_DIR, e.g. by cron
    at boot), provided that directory is private to us."""
    try:
        path = socket_path(run_dir)
        if path.exists():
            return path
    except RuntimeDirError:
        pass
    if state is None:
        try:
            state = StateFile(run_dir).read()
        except StateFileError:
            return None
    recorded = state.get("socket")
    if not isinstance(recorded, str):
        return None
    path = Path(recorded)
    try:
        if path.exists():
            check_private_dir(path.parent)
            return path
    except RuntimeDirError:
        pass
    return None


# ----------------------------------------------------------------------------- status
def status(run_dir: Path) -> dict:
    """The `longhaul status --json` object of one run, from its files alone."""
    run_dir = Path(run_dir).absolute()
    error = None
    try:
        state = StateFile(run_dir).read()
    except StateFileError as exc:
        state, error = {}, str(exc)
    current = effective_state(run_dir, state) if error is None else "unknown"
    live = current in LIVE_STATES
    found = find_socket(run_dir, state) if live else None
    sock = str(found) if found is not None else None
    checkpoint = state.get("last_checkpoint") or {}
    age = time.time() - checkpoint["time"] if isinstance(checkpoint.get("time"), (int, float)) else None
    result = {
        "name": state.get("name") or run_dir.name,
        "state": current,
        "step": state.get("step"),
        "total_steps": state.get("total_steps"),
        "epoch": state.get("epoch"),
        "phase": state.get("phase"),
        "phase_name": state.get("phase_name"),
        "last_eval": eval_summary(state.get("last_eval")),
        "best_eval": eval_summary(state.get("best_eval")),
        "pid": state.get("pid") if live else None,
        "socket": sock,
        "eta": state.get("eta") if live else None,
        "last_checkpoint_age": age,
        "updated": state.get("updated"),
        "stop_reason": state.get("stop_reason"),
        "dir": str(run_dir),
    }
    if error:
        result["error"] = error
    return result


def eval_summary(ev: Optional[dict]) -> Optional[dict]:
    """An evaluation with the short names scripts rely on (accuracy, f1_macro, loss) added to
    its full val_* metrics."""
    if not isinstance(ev, dict):
        return None
    short = {key: ev.get(f"val_{key}") for key in ("accuracy", "f1_macro", "loss")}
    return {**short, **ev}


def list_runs(root: Optional[Path] = None) -> list[dict]:
    """`status()` of every run directory directly under `root` (default `runs_root()`), by name."""
    root = Path(root) if root is not None else runs_root()
    return [status(root / name) for name in _run_names(root)]


def tail_lines(path: Path, count: int, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
    """The last `count` lines of a text file (reads at most `max_bytes` from its end).

    A torn JSON line at the end (no newline and not valid JSON: events.jsonl after a crash or a
    full disk) is skipped; an unfinished text line (a log being written) is kept."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - max_bytes)
            block = 64 * 1024
            data = b""
            pos = size
            while pos > start and data.count(b"\n") <= count:
                step = min(block, pos - start)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if pos > 0 and lines:
        lines = lines[1:]  # first line is probably cut
    if lines and not data.endswith(b"\n") and _torn_json(lines[-1]):
        lines.pop()
    return lines[-count:]


def _torn_json(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def last_event_seq(run_dir: Path) -> int:
    """Highest seq in RUN_DIR/events.jsonl (0 if none), so every writer continues the numbering."""
    from trainer import eventlog  # eventlog reads through tail_lines: imported late, no cycle

    return eventlog.last_seq(Path(run_dir) / "events.jsonl")


STATE_PROGRESS_KEYS = ("step", "total_steps", "epoch", "phase", "phase_name", "elapsed", "eta",
                       "last_eval", "best_eval")


def progress_fields(body: dict) -> dict:
    """The state.json fields a progress body updates."""
    return {k: body[k] for k in STATE_PROGRESS_KEYS if k in body}
