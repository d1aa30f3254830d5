"""Alarm state that survives a restart, in `<state_dir>/alarms/state.json`.

Written atomically (a temporary file in the same directory, fsync'd, renamed over the old
one, then the directory fsync'd), so a crash or power loss leaves either the old state or
the new, never half of one. A file that cannot be read is moved aside and reported, not
fatal: the agent starts from scratch rather than refusing to monitor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

VERSION = 1


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new content, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself must reach the disk too
    finally:
        os.close(dir_fd)


class StateStore:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "alarms" / "state.json"

    def load(self) -> tuple[dict[str, Any], str | None]:
        """(saved state, a note for the log or None). A missing file is an empty state."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None
        try:
            saved = json.loads(raw)
            if not isinstance(saved, dict) or saved.get("version") != VERSION:
                raise ValueError(f"unknown format version {saved.get('version') if isinstance(saved, dict) else None!r}")
        except ValueError as e:
            aside = self.path.with_suffix(".corrupt")
            os.replace(self.path, aside)
            return {}, f"alarm state {self.path} unreadable ({e}); moved to {aside}, starting fresh"
        return saved, None

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps({"version": VERSION, **state}, sort_keys=True).encode())
