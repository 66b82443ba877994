"""`longhaul install-service`: resume interrupted runs at boot.

Where a systemd user manager is reachable, a oneshot user unit
(~/.config/systemd/user/longhaul-resume.service) runs `longhaul --root ROOT resume --all` at
start-up; user units start at boot only with lingering on, so the message says how to turn it on.
Elsewhere a crontab `@reboot` line does the same, marked with a comment so that reinstalling
replaces it and uninstalling removes exactly it.

The runs root is fixed at install time (absolute), since a boot-time job has no useful working
directory. Paths and commands are injectable so tests run against a temporary home and fake
systemctl/crontab/loginctl programs.
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from trainer.run.errors import RunError
from trainer.run.locate import runs_root
from trainer.run.rundir import atomic_write_bytes

UNIT_NAME = "longhaul-resume.service"
CRON_MARKER = "# longhaul-resume (installed by `longhaul install-service`)"


class ServiceError(RunError):
    """The boot-time job could not be installed or removed; the message says what to do."""


def longhaul_command() -> list[str]:
    """Absolute argv prefix that runs the longhaul CLI from any directory."""
    found = shutil.which("longhaul")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "trainer.cli"]


def unit_text(command: Sequence[str]) -> str:
    """The systemd user unit that runs `command` once at start-up."""
    exec_start = " ".join(_systemd_quote(arg) for arg in command)
    return (
        "[Unit]\n"
        "Description=Resume interrupted longhaul training runs\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={exec_start}\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _systemd_quote(arg: str) -> str:
    if arg and not any(c in arg for c in " \t\"'\\%$;"):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def cron_line(command: Sequence[str], log_file: Path) -> str:
    return f"@reboot {shlex.join(command)} >> {shlex.quote(str(log_file))} 2>&1 {CRON_MARKER}"


class _Tools:
    """Runs the external programs (systemctl, crontab, loginctl) found on PATH."""

    def __init__(self, runner: Callable[..., subprocess.CompletedProcess]):
        self.runner = runner

    def available(self, name: str) -> bool:
        return shutil.which(name) is not None

    def run(self, argv: list[str], stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        try:
            return self.runner(argv, input=stdin, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 127, "", str(exc))


def systemd_user_available(tools: _Tools) -> bool:
    """True when `systemctl --user` can reach a user service manager."""
    if not tools.available("systemctl"):
        return False
    return tools.run(["systemctl", "--user", "show-environment"]).returncode == 0


def linger_enabled(tools: _Tools, user: str) -> Optional[bool]:
    """Whether logind starts this user's services at boot (None when it cannot be told)."""
    if not tools.available("loginctl"):
        return None
    result = tools.run(["loginctl", "show-user", user, "--property=Linger"])
    if result.returncode != 0:
        return None
    return result.stdout.strip() == "Linger=yes"


def install_service(uninstall: bool = False, *, root: Optional[Path] = None, config_home: Optional[Path] = None,
                    command: Optional[Sequence[str]] = None,
                    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                    user: Optional[str] = None) -> str:
    """Install (or remove) the boot-time `longhaul resume --all` job; returns what was done and
    what the user still has to do. Raises ServiceError when neither systemd nor cron works."""
    tools = _Tools(runner)
    root = Path(root).absolute() if root is not None else runs_root()
    config_home = Path(config_home) if config_home is not None else Path(
        os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit_path = config_home / "systemd" / "user" / UNIT_NAME
    user = user or getpass.getuser()
    argv = [*(command or longhaul_command()), "--root", str(root), "resume", "--all"]
    if systemd_user_available(tools):
        if uninstall:
            return _uninstall_unit(tools, unit_path)
        return _install_unit(tools, unit_path, argv, user)
    if tools.available("crontab"):
        if uninstall:
            return _uninstall_cron(tools)
        return _install_cron(tools, argv, root)
    if uninstall and unit_path.exists():
        unit_path.unlink()
        return f"removed {unit_path} (systemd is not reachable, nothing to disable)"
    raise ServiceError("neither a systemd user manager (`systemctl --user`) nor `crontab` is available; "
                       f"run `{shlex.join(argv)}` from your own boot script instead")


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise ServiceError(f"`{shlex.join(result.args)}` failed while {what}: {detail or f'exit {result.returncode}'}")


def _install_unit(tools: _Tools, unit_path: Path, argv: list[str], user: str) -> str:
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(unit_path, unit_text(argv).encode())
    _check(tools.run(["systemctl", "--user", "daemon-reload"]), "reloading systemd")
    _check(tools.run(["systemctl", "--user", "enable", UNIT_NAME]), f"enabling {UNIT_NAME}")
    lines = [f"installed {unit_path}", f"  runs at start-up: {shlex.join(argv)}"]
    linger = linger_enabled(tools, user)
    if linger is False:
        lines.append(f"lingering is off for {user}: user services start only at login. To resume runs at "
                     f"boot, run:\n  loginctl enable-linger {user}")
    elif linger is None:
        lines.append(f"could not tell whether lingering is on; if runs should resume at boot without a login, "
                     f"run:\n  loginctl enable-linger {user}")
    return "\n".join(lines)


def _uninstall_unit(tools: _Tools, unit_path: Path) -> str:
    if not unit_path.exists():
        return f"nothing to remove: {unit_path} is not installed"
    tools.run(["systemctl", "--user", "disable", UNIT_NAME])  # fine if it was never enabled
    unit_path.unlink()
    _check(tools.run(["systemctl", "--user", "daemon-reload"]), "reloading systemd")
    return f"removed {unit_path}"


def _read_crontab(tools: _Tools) -> list[str]:
    result = tools.run(["crontab", "-l"])
    if result.returncode != 0:
        if "no crontab" in (result.stderr or "").lower():
            return []
        _check(result, "reading your crontab")
    return result.stdout.splitlines()


def _write_crontab(tools: _Tools, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    _check(tools.run(["crontab", "-"], stdin=text), "writing your crontab")


def _install_cron(tools: _Tools, argv: list[str], root: Path) -> str:
    kept = [line for line in _read_crontab(tools) if CRON_MARKER not in line]
    line = cron_line(argv, root / "resume-at-boot.log")
    _write_crontab(tools, kept + [line])
    return (f"systemd user services are not available here; added to your crontab:\n  {line}\n"
            f"(remove it with `longhaul install-service --uninstall`)")


def _uninstall_cron(tools: _Tools) -> str:
    lines = _read_crontab(tools)
    kept = [line for line in lines if CRON_MARKER not in line]
    if len(kept) == len(lines):
        return "nothing to remove: no longhaul line in your crontab"
    _write_crontab(tools, kept)
    return "removed the longhaul @reboot line from your crontab"
