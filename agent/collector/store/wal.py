"""The SQLite store's write-ahead log: how the writer's connections open, and the thread that
checkpoints the log so that it neither stalls the acks nor grows without end."""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Callable

WAL_RESTART_BYTES = 64 << 20


def connect(path: Path, cache_kib: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=30000")
    # Queries and recovery read whole partitions; SQLite's default cache is 2 MB.
    db.execute(f"PRAGMA cache_size=-{cache_kib}")
    db.execute(f"PRAGMA journal_size_limit={WAL_RESTART_BYTES}")  # see Checkpointer
    return db


class Checkpointer:
    """Checkpoints copy the WAL into the database and fsync it; done by the writer they would
    stall the acks waiting on the next commit, so a thread of its own does them (PASSIVE:
    never blocks the writer). The writer's connection is opened with wal_autocheckpoint=0.

    A PASSIVE checkpoint never completes while commits keep coming (there are always newer
    frames), and SQLite starts the WAL over only after one that did: left alone the WAL grew
    by the whole write rate (1.2 GB in a minute at the benchmark's rate). So past
    WAL_RESTART_BYTES one RESTART checkpoint waits for the writer's current commit, copies
    the little the passive ones left, and lets the next commit start the WAL from its
    beginning; journal_size_limit then trims the file."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]):
        self.path, self._connect = path, connect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="egs-checkpoint", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        wal = Path(f"{self.path}-wal")
        db, failing = None, None
        try:
            while not self._stop.wait(1.0):
                try:
                    if db is None:
                        db = self._connect()
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if wal.exists() and wal.stat().st_size > WAL_RESTART_BYTES:
                        db.execute("PRAGMA wal_checkpoint(RESTART)")
                    failing = None
                except (sqlite3.Error, OSError) as e:  # locked, disk full, ...: the next round tries again
                    if str(e) != failing:  # said once, not every second
                        failing = str(e)
                        logging.getLogger("egs-collector").warning(
                            "store: WAL checkpoint failed (retrying every second): %s", e)
        finally:
            if db is not None:
                db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
