"""Is a run's owner process alive, and is it longhaul (not a recycled pid)? No torch."""
from __future__ import annotations

import os
from typing import Optional


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
