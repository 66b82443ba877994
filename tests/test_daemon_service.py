"""install-service: systemd user unit or crontab @reboot line, against fake tools on PATH."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trainer import service

FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
if [ "$2" = "show-environment" ] && [ -n "$FAKE_NO_SYSTEMD" ]; then
    echo "Failed to connect to bus" >&2; exit 1
fi
exit 0
"""
FAKE_LOGINCTL = """#!/bin/sh
echo "loginctl $*" >> "$FAKE_LOG"
echo "Linger=$FAKE_LINGER"
"""
FAKE_CRONTAB = """#!/bin/sh
echo "crontab $*" >> "$FAKE_LOG"
if [ "$1" = "-l" ]; then
    if [ -f "$FAKE_CRONTAB_FILE" ]; then cat "$FAKE_CRONTAB_FILE"; exit 0; fi
    echo "no crontab for $USER" >&2; exit 1
fi
if [ "$1" = "-" ]; then cat > "$FAKE_CRONTAB_FILE"; exit 0; fi
exit 2
"""


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def install(name, text):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    install("systemctl", FAKE_SYSTEMCTL)
    install("loginctl", FAKE_LOGINCTL)
    install("crontab", FAKE_CRONTAB)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("FAKE_LINGER", "no")
    monkeypatch.setenv("FAKE_CRONTAB_FILE", str(tmp_path / "crontab.txt"))
    return tmp_path


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


COMMAND = ["/opt/long haul/bin/longhaul"]


def test_systemd_unit_install_and_uninstall(fake_tools):
    tmp = fake_tools
    message = service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND, user="ana")
    unit = tmp / "cfg" / "systemd" / "user" / "longhaul-resume.service"
    text = unit.read_text()
    assert "Type=oneshot" in text and "WantedBy=default.target" in text
    assert f'ExecStart="/opt/long haul/bin/longhaul" --root {tmp / "runs"} resume --all' in text
    assert calls(tmp) == ["systemctl --user show-environment", "systemctl --user daemon-reload",
                          "systemctl --user enable longhaul-resume.service",
                          "loginctl show-user ana --property=Linger"]
    assert "loginctl enable-linger ana" in message and str(unit) in message
    # reinstalling is harmless; with lingering on there is nothing more to do
    os.environ["FAKE_LINGER"] = "yes"
    message = service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND, user="ana")
    assert "enable-linger" not in message and unit.read_text() == text
    message = service.install_service(uninstall=True, root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert not unit.exists() and message == f"removed {unit}"
    assert "systemctl --user disable longhaul-resume.service" in calls(tmp)
    message = service.install_service(uninstall=True, root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert message.startswith("nothing to remove")


def test_cron_fallback_is_idempotent_and_uninstall_removes_only_its_line(fake_tools, monkeypatch):
    tmp = fake_tools
    monkeypatch.setenv("FAKE_NO_SYSTEMD", "1")
    (tmp / "crontab.txt").write_text("0 * * * * backup.sh\n")
    message = service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert "crontab" in message
    lines = (tmp / "crontab.txt").read_text().splitlines()
    assert lines[0] == "0 * * * * backup.sh" and len(lines) == 2
    assert lines[1].startswith(f"@reboot '/opt/long haul/bin/longhaul' --root {tmp / 'runs'} resume --all >> ")
    assert lines[1].endswith(service.CRON_MARKER)
    service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert (tmp / "crontab.txt").read_text().splitlines() == lines  # no duplicate line
    assert not (tmp / "cfg").exists()
    message = service.install_service(uninstall=True, root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert "removed" in message
    assert (tmp / "crontab.txt").read_text() == "0 * * * * backup.sh\n"
    message = service.install_service(uninstall=True, root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
    assert message.startswith("nothing to remove")


def test_cron_without_existing_crontab(fake_tools, monkeypatch):
    tmp = fake_tools
    monkeypatch.setenv("FAKE_NO_SYSTEMD", "1")
    service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=["/usr/bin/longhaul"])
    assert (tmp / "crontab.txt").read_text().count("@reboot /usr/bin/longhaul --root") == 1


def test_no_systemd_and_no_cron_is_a_clear_error(fake_tools, monkeypatch):
    tmp = fake_tools
    (tmp / "bin" / "crontab").unlink()
    monkeypatch.setenv("FAKE_NO_SYSTEMD", "1")
    with pytest.raises(service.ServiceError, match=r"neither a systemd user manager .* nor `crontab`.*resume --all"):
        service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)


def test_failing_systemctl_is_reported(fake_tools):
    tmp = fake_tools
    (tmp / "bin" / "systemctl").write_text('#!/bin/sh\n[ "$2" = "enable" ] && { echo "Access denied" >&2; exit 1; }\nexit 0\n')
    with pytest.raises(service.ServiceError, match="enable longhaul-resume.service` failed .*Access denied"):
        service.install_service(root=tmp / "runs", config_home=tmp / "cfg", command=COMMAND)
