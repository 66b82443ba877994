"""Power cuts: the harness's own model (fast), then a real run cut many times (slow).

tests/powercut.py mounts a FUSE file system that drops, at a simulated power cut, every write not
fsynced yet (see its docstring for the model).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.powercut import mount_or_skip


@pytest.fixture
def powercut(tmp_path):
    """(mount, cut): the power-cut file system over an empty directory, and a function that
    cuts the power and returns the directory that survived."""
    (tmp_path / "live").mkdir()
    mount = mount_or_skip(tmp_path / "live", tmp_path / "mnt", tmp_path / "fs.log")
    cuts = iter(range(1000))
    yield mount.mountpoint, lambda: mount.cut(tmp_path / f"after-cut-{next(cuts)}")
    mount.unmount()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# ============================================================================ the model itself
def test_a_write_never_fsynced_is_lost(powercut):
    mnt, cut = powercut
    (mnt / "f").write_bytes(b"unsynced")
    fsync_path(mnt)                       # the name is durable, the content is not
    assert (mnt / "f").read_bytes() == b"unsynced"   # programs see normal files until the cut
    assert (cut() / "f").read_bytes() == b""


def test_a_new_file_fsynced_without_its_directory_is_absent(powercut):
    mnt, cut = powercut
    write_synced(mnt / "f", b"content")
    assert not (cut() / "f").exists()
    fsync_path(mnt)
    assert (cut() / "f").read_bytes() == b"content"


def test_temp_file_fsync_rename_fsync_dir_gives_the_new_content(powercut):
    mnt, cut = powercut
    write_synced(mnt / "config", b"old")
    fsync_path(mnt)
    write_synced(mnt / ".config.tmp", b"new")
    os.replace(mnt / ".config.tmp", mnt / "config")
    after = cut()
    assert (after / "config").read_bytes() == b"old"    # rename not durable yet: old name, old content
    assert (after / ".config.tmp").exists() is False    # and the temp name was never durable
    fsync_path(mnt)
    after = cut()
    assert (after / "config").read_bytes() == b"new"
    assert sorted(os.listdir(after)) == ["config"]


def test_a_rename_without_fsyncing_the_content_leaves_0_bytes(powercut):
    mnt, cut = powercut
    (mnt / ".config.tmp").write_bytes(b"name: run\n")
    os.replace(mnt / ".config.tmp", mnt / "config")
    fsync_path(mnt)
    assert (cut() / "config").read_bytes() == b""


def test_append_fsync_append_keeps_the_first_part_only(powercut):
    mnt, cut = powercut
    with open(mnt / "log", "ab") as fh:
        fh.write(b"first\n")
        fh.flush()
        os.fsync(fh.fileno())
        fh.write(b"second\n")
        fh.flush()
    fsync_path(mnt)
    assert (mnt / "log").read_bytes() == b"first\nsecond\n"
    assert (cut() / "log").read_bytes() == b"first\n"


def test_an_unlink_is_undone_unless_the_directory_is_fsynced(powercut):
    mnt, cut = powercut
    write_synced(mnt / "f", b"kept")
    fsync_path(mnt)
    (mnt / "f").unlink()
    assert (cut() / "f").read_bytes() == b"kept"
    fsync_path(mnt)
    assert not (cut() / "f").exists()


def test_a_new_directory_needs_its_parent_fsynced_and_its_own_entries_need_it(powercut):
    mnt, cut = powercut
    (mnt / "run").mkdir()
    write_synced(mnt / "run" / "state", b"{}")
    fsync_path(mnt / "run")
    assert not (cut() / "run").exists()
    fsync_path(mnt)
    assert (cut() / "run" / "state").read_bytes() == b"{}"


def test_an_o_sync_write_is_durable_at_once(powercut):
    mnt, cut = powercut
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_SYNC)
    os.write(fd, b"synced")
    os.close(fd)
    fsync_path(mnt)
    assert (cut() / "f").read_bytes() == b"synced"
