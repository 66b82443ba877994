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
import sys
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
#: Longest run name `start --name` accepts (file systems allow 255 bytes per name; a name is
#: also typed, shown in tables and put into socket names).
NAME_MAX = 100
# Bytes of the run name in a socket file name: leaves room for "<runtime dir>/" and
# "-<hash8>.sock" inside sun_path's 108 bytes.
_SOCKET_NAME_MAX = 40
#: sun_path holds 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107
#: `launch_failures` at which `resume --all` (the boot job) stops retrying a run.
MAX_LAUNCH_FAILURES = 3


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


class InvalidRunName(RunError, ValueError):
    """A run name that cannot be used as a directory name under the runs root."""


# ----------------------------------------------------------------------------- run directories
def runs_root() -> Path:
    """Root of run directories: `$LONGHAUL_ROOT`, else `./checkpoints` (absolute)."""
    root = os.environ.get("LONGHAUL_ROOT") or "checkpoints"
    return Path(root).expanduser().absolute()


def is_run_dir(path: Path) -> bool:
    """True when `path` looks like a run directory (has a config or a state file)."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / STATE_FILE).is_file())


def check_run_name(name: str) -> str:
    """Return `name` if it is a valid run name, else raise InvalidRunName (a ValueError) saying why."""
    if not name or not _NAME_RE.match(name) or name in (".", ".."):
        raise InvalidRunName(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' only")
    if len(name) > NAME_MAX:
        raise InvalidRunName(f"invalid run name {name[:20]!r}... ({len(name)} characters): "
                             f"at most {NAME_MAX} characters")
    return name


def private_umask() -> int:
    """The umask longhaul runs under: 0o077 (run data is private: directories 0700, files 0600)
    unless `$LONGHAUL_UMASK` (octal, e.g. 022) relaxes it."""
    text = os.environ.get("LONGHAUL_UMASK", "").strip()
    if text:
        try:
            value = int(text, 8)
        except ValueError:
            raise RunError(f"LONGHAUL_UMASK={text!r} is not an octal umask such as 077 or 022") from None
        if 0 <= value <= 0o777:
            return value
        raise RunError(f"LONGHAUL_UMASK={text!r} is out of range (000 to 777)")
    return 0o077


def apply_umask() -> int:
    """Set the process umask to `private_umask()` (entry points call this first); returns it."""
    value = private_umask()
    os.umask(value)
    return value


def make_run_dir(path: Path, exist_ok: bool = False) -> None:
    """mkdir a run directory (and its parents) with private permissions, whatever the process
    umask: 0700 unless LONGHAUL_UMASK relaxes it."""
    mode = 0o777 & ~private_umask()
    path = Path(path).absolute()
    existing = next(p for p in path.parents if p.exists())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not exist_ok or not path.is_dir():
            raise
        return
    os.chmod(path, mode)  # mkdir's mode is filtered by the umask; the run's privacy is not
    # A directory entry survives a power cut only once its parent is fsynced: without this the
    # whole run directory was gone after a cut (tests/test_powercut.py).
    for created in [path, *path.parents]:
        fsync_dir(created.parent)
        if created.parent == existing:
            break


def _run_names(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if is_run_dir(p))
    except OSError:  # missing or unreadable root: no runs there
        return []


def resolve_run(name_or_path: str | os.PathLike, root: Optional[Path] = None) -> Path:
    """A run name under `root` (default `runs_root()`) or a run directory path -> absolute path.

    Raises RunNotFound naming the runs that do exist.
    """
    root = Path(root) if root is not None else runs_root()
    text = str(name_or_path)
    # any directory name (spaces, unicode: made with --run-dir) addresses its run
    if text and "/" not in text and text not in (".", "..") and _safe_is_run_dir(root / text):
        return (root / text).absolute()
    path = Path(text).expanduser()
    if _safe_is_run_dir(path):
        return path.absolute()
    if text and "/" not in text:
        found = _registered_named(text)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise RunNotFound(f"several registered runs are named {text!r}: "
                              f"{', '.join(str(p) for p in found)}; give the directory instead")
    names = _run_names(root)
    known = f"runs under {root}: {', '.join(names)}" if names else f"no runs under {root}"
    raise RunNotFound(f"no run named or at {text!r} ({known})")


def _safe_is_run_dir(path: Path) -> bool:
    try:
        return is_run_dir(path)
    except OSError:  # name too long, permission denied on a parent...
        return False


def _registered_named(name: str) -> list[Path]:
    """Registered run directories (see trainer.registry) whose directory name is `name`."""
    from trainer import registry

    return [path for path in registry.registered() if path.name == name and _safe_is_run_dir(path)]


def create_run_dir(root: Path, name: str) -> Path:
    """Create `root/name` (and root), private (make_run_dir). Raises RunExists if it is taken,
    InvalidRunName for bad names and RunError when the file system refuses (read-only root,
    path too long, no permission)."""
    check_run_name(name)
    path = Path(root) / name
    try:
        make_run_dir(path)
    except FileExistsError:
        raise RunExists(f"run {name!r} already exists at {path}; pick another --name or resume it") from None
    except OSError as exc:
        raise RunError(f"cannot create the run directory {path}: {exc.strerror or exc}") from None
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
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written temp file behind
        raise
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
        state = read_state(run_dir)
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


def _runtime_candidates() -> list[Path]:
    """Where sockets may live, preferred first: `$XDG_RUNTIME_DIR/longhaul/`, then
    `/tmp/longhaul-<uid>/`."""
    found = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        found.append(Path(xdg) / "longhaul")
    found.append(Path("/tmp") / f"longhaul-{os.getuid()}")
    return found


def _private_dir(path: Path) -> Path:
    """Create `path` 0700 if missing, then check it is ours and private (RuntimeDirError)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the socket directory {path}: {exc.strerror or exc}") from None
    return check_private_dir(path)


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/longhaul/` (fallback `/tmp/longhaul-<uid>/`), created 0700 and checked
    to be ours and private (RuntimeDirError otherwise)."""
    return _private_dir(_runtime_candidates()[0])


def _cut_bytes(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes (never half a
    character)."""
    return text.encode()[:limit].decode(errors="ignore")


def socket_path(run_dir: Path) -> Path:
    """The daemon socket of a run: `<runtime dir>/<name>-<hash8>.sock`, where the hash is of the
    absolute run directory (so equal names under different roots do not collide) and the name
    is cut to 40 bytes. When that path would not fit in sun_path (a long `$XDG_RUNTIME_DIR`),
    the private `/tmp/longhaul-<uid>/` is used instead. RuntimeDirError when no directory fits
    or the chosen one is not safe."""
    run_dir = Path(run_dir).absolute()
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    filename = f"{_cut_bytes(run_dir.name, _SOCKET_NAME_MAX)}-{digest}.sock"
    candidates = _runtime_candidates()
    for folder in candidates:
        if len(os.fsencode(folder / filename)) <= SUN_PATH_MAX:
            return _private_dir(folder) / filename
    raise RuntimeDirError(f"no socket directory short enough for a Unix socket path ({SUN_PATH_MAX} bytes): "
                          f"tried {', '.join(str(c) for c in candidates)}")


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
        state = read_state(run_dir)
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


# ----------------------------------------------------------------------------- damaged state
def read_state(run_dir: Path) -> dict:
    """state.json's fields, like StateFile.read, except that a damaged file (not JSON, not an
    object, empty) does not block the run: it is rebuilt from the run directory (rebuild_state)."""
    try:
        return StateFile(run_dir).read()
    except StateFileError as exc:
        return rebuild_state(Path(run_dir), str(exc))


_DAEMON_PID = re.compile(r"daemon started \(pid (\d+)\)")


def _daemon_pid(event: dict) -> Optional[int]:
    """The pid a daemon's "starting" event names: in its data, or (events written before the
    data carried it) in its message."""
    pid = (event.get("data") or {}).get("pid")
    if isinstance(pid, int):
        return pid
    match = _DAEMON_PID.search(str(event.get("message") or ""))
    return int(match.group(1)) if match else None


def _events_summary(run_dir: Path) -> dict:
    """Fields of state.json that the tail of events.jsonl tells: the last `state` event's state,
    the pid of the daemon that last started, the last evaluation, the last stop reason."""
    from trainer import eventlog  # (it imports this module)

    found: dict = {}
    for event in reversed(eventlog.read_tail(run_dir / "events.jsonl", 2000)):  # torn lines skipped
        kind, data = event.get("kind"), event.get("data") or {}
        if not isinstance(data, dict):
            continue
        if kind == "state" and "state" not in found and data.get("state") in RUN_STATES:
            found["state"] = data["state"]
        if kind == "state" and "pid" not in found and data.get("state") == "starting":
            pid = _daemon_pid(event)
            if pid is not None:
                found["pid"] = pid
        if kind == "eval" and "last_eval" not in found and isinstance(data.get("metrics"), dict):
            found["last_eval"] = {"step": data.get("step"), "epoch": data.get("epoch"), **data["metrics"]}
        if {"state", "pid", "last_eval"} <= set(found):
            break
    if found.get("state") not in LIVE_STATES:
        found.pop("pid", None)  # only a live state needs an owner
    return found


def _newest_checkpoint(run_dir: Path) -> Optional[dict]:
    best = None
    try:
        for entry in os.scandir(run_dir / "ckpt"):
            match = re.match(r"^step-(\d{10})$", entry.name)
            if match and entry.is_dir(follow_symlinks=False) and (best is None or int(match.group(1)) > best[0]):
                best = (int(match.group(1)), entry.path)
    except OSError:
        return None
    if best is None:
        return None
    return {"step": best[0], "path": best[1], "time": os.stat(best[1]).st_mtime}


def _last_history_record(run_dir: Path) -> Optional[dict]:
    path = run_dir / "history.msgpack"
    if not path.is_file():
        return None
    try:
        from trainer import history  # numpy, no torch; only needed on this rare path

        last = None
        for record in history.read_history(path):
            if record.get("kind") == "train":
                last = record
        return last
    except Exception:  # a damaged history must not make the rebuild fail as well
        return None


def _total_steps(run_dir: Path) -> Optional[int]:
    try:
        plan = json.loads((run_dir / "plan.json").read_text()).get("plan") or {}
        return plan.get("total_steps") if isinstance(plan.get("total_steps"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def rebuild_state(run_dir: Path, problem: str) -> dict:
    """Rebuild a damaged state.json from what the run directory holds: the last `state` event of
    events.jsonl (a live state whose daemon is gone then shows as interrupted), the newest
    ckpt/step-* and the last history record. The damaged file is kept as
    state.json.corrupt-<unix time>; the new one records how it was made under `rebuilt`; a
    warning goes to stderr. Returns the rebuilt fields (also when they cannot be written)."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    sources = []
    state: dict = {"name": run_dir.name}
    events = _events_summary(run_dir)
    if events:
        sources.append("events.jsonl")
        state.update(events)
    state.setdefault("state", "stopped")  # no events: nothing ran far enough to be resumed
    record = _last_history_record(run_dir)
    if record is not None:
        sources.append("history.msgpack")
        state.update({k: record[k] for k in ("step", "epoch", "phase") if k in record})
    checkpoint = _newest_checkpoint(run_dir)
    if checkpoint is not None:
        sources.append("ckpt/")
        state["last_checkpoint"] = checkpoint
        state["step"] = max(state.get("step") or 0, checkpoint["step"])
    total = _total_steps(run_dir)
    if total is not None:
        state["total_steps"] = total
    now = time.time()
    copy = run_dir / f"{STATE_FILE}.corrupt-{int(now)}"
    state["rebuilt"] = {"time": now, "problem": problem, "from": sources, "corrupt_copy": str(copy)}
    state["updated"] = now
    try:
        damaged = path.read_bytes()
        try:
            StateFile(run_dir).read()
            return read_state(run_dir)  # someone else rebuilt or rewrote it meanwhile
        except StateFileError:
            pass
        copy.write_bytes(damaged)
        atomic_write_json(path, state)
    except OSError as exc:
        print(f"longhaul: warning: {problem}; cannot rebuild it ({exc.strerror or exc}): showing the state "
              f"rebuilt from {', '.join(sources) or 'nothing'} without saving it", file=sys.stderr)
        return state
    print(f"longhaul: warning: {problem}; rebuilt {path} from {', '.join(sources) or 'nothing'} "
          f"(state {state['state']}, step {state.get('step') or 0}); the damaged file is kept as {copy}",
          file=sys.stderr)
    return state


# ----------------------------------------------------------------------------- status
def status(run_dir: Path) -> dict:
    """The `longhaul status --json` object of one run, from its files alone (a damaged
    state.json is rebuilt first: see rebuild_state)."""
    run_dir = Path(run_dir).absolute()
    state = read_state(run_dir)
    current = effective_state(run_dir, state)
    live = current in LIVE_STATES
    found = find_socket(run_dir, state) if live else None
    sock = str(found) if found is not None else None
    checkpoint = state.get("last_checkpoint") or {}
    age = time.time() - checkpoint["time"] if isinstance(checkpoint.get("time"), (int, float)) else None
    return {
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
        "pause_reason": state.get("pause_reason") if current == "paused" else None,
        "launch_failures": state.get("launch_failures") or 0,
        "rebuilt": state.get("rebuilt"),
        "dir": str(run_dir),
    }


def missing_status(run_dir: Path) -> dict:
    """The status of a registered run whose directory is gone (moved or deleted)."""
    run_dir = Path(run_dir)
    info = dict.fromkeys(("step", "total_steps", "epoch", "phase", "phase_name", "last_eval", "best_eval", "pid",
                          "socket", "eta", "last_checkpoint_age", "updated", "stop_reason", "pause_reason",
                          "rebuilt"))
    info.update(name=run_dir.name, state="missing", launch_failures=0, dir=str(run_dir),
                error=f"the registered run directory {run_dir} is gone (moved or deleted)")
    return info


def eval_summary(ev: Optional[dict]) -> Optional[dict]:
    """An evaluation with the short names scripts rely on (accuracy, f1_macro, loss) added to
    its full val_* metrics."""
    if not isinstance(ev, dict):
        return None
    short = {key: ev.get(f"val_{key}") for key in ("accuracy", "f1_macro", "loss")}
    return {**short, **ev}


def list_runs(root: Optional[Path] = None) -> list[dict]:
    """`status()` of every run directory directly under `root` (default `runs_root()`), by name,
    then of every other run in the user's registry (trainer.registry), by path; a registered
    run whose directory is gone has state "missing"."""
    from trainer import registry

    root = Path(root) if root is not None else runs_root()
    infos = [status(root / name) for name in _run_names(root)]
    seen = {info["dir"] for info in infos}
    for path in registry.registered():
        if str(path) in seen:
            continue
        if _safe_is_run_dir(path):
            infos.append(status(path))
        elif not path.exists():
            infos.append(missing_status(path))
    return infos


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
