"""Alarm state that survives a restart, in `<state_dir>/alarms/state.json`.

Written with `agent.fsio.atomic_write`, so a crash or power loss leaves either the old state
or the new, never half of one. A file that cannot be read is moved aside and reported, not
fatal: the agent starts from scratch rather than refusing to monitor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.fsio import atomic_write

VERSION = 1


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
