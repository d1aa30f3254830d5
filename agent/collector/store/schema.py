"""The SQLite store's file, `<data_dir>/collector.db` (WAL mode): its tables, its time
partitions and the raw record.

The shape is set by the write rate of a fleet (1,000 hosts x 100 points a second on a small
machine): a row per point, or per series and bucket, costs b-tree work scattered over the
whole table, so data is kept a row per *batch* (raw) and a row per *host and bucket*
(rollups).
- `raw_<hour>`: every stored batch as it came (protobuf, zlib-compressed unless
  `compress_raw` is off), keyed by an arrival number that increases across partitions,
  indexed by (host, ts). Queries at raw resolution decode the batches of the hosts and
  hours asked for. Kept briefly.
- `r10_<day>`, `r60_<week>`: 10-second and 1-minute rollups (count, sum, min, max, last;
  avg = sum / count), a row per (host, bucket) holding all that host's series packed, named
  by a `layouts` entry (agent/collector/store/rollup.py says how they are written).
- `series` names every (host, metric, labels) once for the rollups.
- `epochs` holds, per (host, epoch), the highest sequence stored (exactly-once).
- `agents` keeps the latest identity and self-reported status of every host; `events`
  and `recordings` keep what their names say; `meta` the rollups' progress.
Every partitioned table is dropped whole when its retention has passed.
"""
from __future__ import annotations

import json
import sqlite3
import zlib

from agent.proto import collector_pb2
from agent.wire import columns
from agent.wire.columns import Points

# Partition widths and bucket widths of the three point tables.
RAW, R10, R60 = "raw", "r10", "r60"
PARTITION_SECONDS = {RAW: 3600, R10: 86400, R60: 7 * 86400}

TABLES = """
CREATE TABLE IF NOT EXISTS series(id INTEGER PRIMARY KEY, host TEXT NOT NULL, metric TEXT NOT NULL,
    labels TEXT NOT NULL, UNIQUE(host, metric, labels));
CREATE INDEX IF NOT EXISTS series_metric ON series(metric, host);
CREATE TABLE IF NOT EXISTS epochs(host TEXT NOT NULL, epoch INTEGER NOT NULL, max_seq INTEGER NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY(host, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents(host TEXT PRIMARY KEY, labels TEXT NOT NULL, epoch INTEGER, last_seq INTEGER,
    first_seen REAL, last_seen REAL, backlog_records INTEGER, backlog_bytes INTEGER, dropped INTEGER,
    health TEXT, nic TEXT);
CREATE TABLE IF NOT EXISTS events(host TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    labels TEXT NOT NULL, data TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS recordings(host TEXT NOT NULL, received REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS layouts(id INTEGER PRIMARY KEY, sids BLOB NOT NULL);
"""


def labels_text(labels) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


def encode_raw(wire: bytes, compress: bool) -> bytes:
    """A raw record: b"z" + zlib(Batch), or b"p" + Batch when `compress` (store.compress_raw) is off."""
    return b"z" + zlib.compress(wire, 1) if compress else b"p" + wire


def decode_raw(blob: bytes) -> Points:
    """The points of a raw record."""
    body = memoryview(blob)[1:]
    return columns.read(collector_pb2.Batch.FromString(zlib.decompress(body) if blob[:1] == b"z" else bytes(body)))


def partition_names(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND (name GLOB 'raw_*' OR name GLOB 'r10_*' OR name GLOB 'r60_*')")}


class Partitions:
    """The partition tables of a store file, each created when first written to."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.names = partition_names(db)
        _refuse_old_rollups(db, self.names)

    def table(self, kind: str, ts: float) -> str:
        name = f"{kind}_{int(ts // PARTITION_SECONDS[kind])}"
        if name not in self.names:
            if kind == RAW:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {name}(arrival INTEGER PRIMARY KEY, host TEXT NOT NULL, "
                                "ts REAL NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, points BLOB NOT NULL)")
                self.db.execute(f"CREATE INDEX IF NOT EXISTS {name}_ht ON {name}(host, ts)")
            else:  # see agent/collector/store/rollup.py
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {name}(host TEXT NOT NULL, ts INTEGER NOT NULL, "
                                "flush INTEGER NOT NULL, layout INTEGER NOT NULL, data BLOB NOT NULL, "
                                "UNIQUE(host, ts, flush, layout))")
            self.names.add(name)
        return name

    def reload(self) -> None:
        """The names as the file has them: after a rolled-back transaction, a table it created
        is gone again (and would otherwise be written to as if it existed)."""
        self.names = partition_names(self.db)

    def raw(self) -> list[str]:
        return sorted(t for t in self.names if t.startswith("raw_"))

    def drop(self, name: str) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS {name}")
        self.names.discard(name)


def _refuse_old_rollups(db: sqlite3.Connection, tables: set[str]) -> None:
    """Rollup tables of the earlier per-series format cannot be written to; say so."""
    for name in sorted(tables):
        if not name.startswith("raw_"):
            cols = {row[1] for row in db.execute(f"PRAGMA table_info({name})")}
            if "series" in cols:
                raise ValueError(f"rollup table {name} has the per-series format of an earlier build; "
                                 "move this store aside (or drop its r10_*/r60_* tables) and start again")
