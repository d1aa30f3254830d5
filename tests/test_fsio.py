"""`atomic_write`: a file is replaced whole or not at all, and the rename reaches the disk."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from agent.fsio import atomic_write


def test_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "d" / "state.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["state.json"]


def test_atomic_write_removes_its_temporary_when_the_rename_fails(tmp_path):
    target = tmp_path / "d" / "state.json"
    target.mkdir(parents=True)  # a directory where the file should go: the rename fails
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.is_dir() and list(target.parent.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_content_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "ack"
    atomic_write(target, b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["ack"]


@pytest.mark.parametrize("durable", [True, False])
def test_durable_fsyncs_the_file_and_then_its_directory(tmp_path, monkeypatch, durable):
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "stream-epoch", b"1", durable=durable)
    assert synced == (["file", "dir"] if durable else [])


def test_the_file_gets_the_mode_asked_for(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "ack", b"x", mode=0o600)
        atomic_write(tmp_path / "state.json", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ack").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o640
