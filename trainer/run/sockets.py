"""Where a run's daemon socket lives: a private runtime directory (`$XDG_RUNTIME_DIR/longhaul/`,
fallback `/tmp/longhaul-<uid>/`), created 0700 and owner-checked, and a socket file name that is
unique per run directory and fits in sun_path. Durable state never lives there (it is wiped at
boot). No torch.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Optional

from trainer.run.errors import RuntimeDirError
from trainer.run.state import read_state

# Bytes of the run name in a socket file name: leaves room for "<runtime dir>/" and
# "-<hash8>.sock" inside sun_path's 108 bytes.
_SOCKET_NAME_MAX = 40
#: sun_path holds 108 bytes including the terminating NUL.
SUN_PATH_MAX = 107


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
