"""Where the collector keeps what agents send: the `Store` interface and its SQLite engine.

The servicer talks to a `Store` only, so a distributed time-series engine can be added
beside `SQLiteStore` without touching ingest or consumers.

SQLiteStore (one file, `<data_dir>/collector.db`, WAL mode):
- `series` names every (host, metric, labels) once; points refer to its integer id.
- Points are kept three ways, each in time-partitioned tables so retention is a
  `DROP TABLE` instead of a scan: per-second points in `raw_<hour>`, 10-second rollups in
  `r10_<day>`, 1-minute rollups in `r60_<week>` (count, sum, min, max, last per bucket;
  avg = sum / count). Rollups are upserted as points arrive, so replays that arrive hours
  late still land in the right bucket.
- `epochs` holds, per (host, epoch), the highest sequence stored. A batch at or below it is
  a duplicate: acknowledged, not stored again. It is updated in the same transaction as the
  points, so a crash can never store a batch without recording it, or the reverse: that is
  the exactly-once effect.
- `agents` keeps the latest identity and self-reported status of every host; `events`
  and `recordings` keep what their names say.

`write` is called by one thread (the collector's committer) with a whole group of batches:
one transaction per group, so SQLite's per-commit cost is shared by every batch in it.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from agent.proto import collector_pb2

# Partition widths and bucket widths of the three point tables.
RAW, R10, R60 = "raw", "r10", "r60"
PARTITION_SECONDS = {RAW: 3600, R10: 86400, R60: 7 * 86400}
BUCKET_SECONDS = {RAW: None, R10: 10, R60: 60}
RESOLUTION_NAMES = {"raw": RAW, "1s": RAW, "10s": R10, "1m": R60, "60s": R60}


@dataclass
class WriteResult:
    duplicate: bool
    points: int = 0


@dataclass
class StoredSeries:
    host: str
    metric: str
    labels: dict[str, str]
    points: list[tuple[float, int, float, float, float, float]]  # ts, count, sum, min, max, last


class Store(Protocol):
    def write(self, batches: list[collector_pb2.Batch], received: float) -> list[WriteResult]: ...
    def query(self, metric: str, host: str = "", labels: dict | None = None, start: float = 0,
              end: float = 0, resolution: str = "", limit: int = 10000) -> tuple[str, list[StoredSeries]]: ...
    def agents(self) -> list[dict]: ...
    def events(self, since: float, host: str = "", kinds: Iterable[str] = ()) -> list[dict]: ...
    def cleanup(self, now: float) -> dict: ...
    def close(self) -> None: ...


def labels_text(labels) -> str:
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


_SCHEMA = """
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
"""


class SQLiteStore:
    def __init__(self, data_dir: str | Path, synchronous: str = "normal",
                 retention: dict[str, float] | None = None):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "collector.db"
        self.retention = {RAW: 3600.0, R10: 2 * 86400.0, R60: 30 * 86400.0, "events": 90 * 86400.0}
        self.retention.update(retention or {})
        self._db = self._connect()
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self._series: dict[tuple[str, str, str], int] = {
            (h, m, l): i for i, h, m, l in self._db.execute("SELECT id, host, metric, labels FROM series")}
        self._max_seq: dict[tuple[str, int], int] = {
            (h, e): s for h, e, s in self._db.execute("SELECT host, epoch, max_seq FROM epochs")}
        self._tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND (name GLOB 'raw_*' OR name GLOB 'r10_*' OR name GLOB 'r60_*')")}
        self._reader_lock = threading.Lock()
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    # --- writing -------------------------------------------------------------------------

    def _table(self, kind: str, ts: float) -> str:
        name = f"{kind}_{int(ts // PARTITION_SECONDS[kind])}"
        if name not in self._tables:
            if kind == RAW:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name}(series INTEGER NOT NULL, ts REAL NOT NULL, "
                                 "count INTEGER, sum REAL, min REAL, max REAL, last REAL)")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {name}_st ON {name}(series, ts)")
            else:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name}(series INTEGER NOT NULL, ts INTEGER NOT NULL, "
                                 "count INTEGER, sum REAL, min REAL, max REAL, last REAL, last_ts REAL, "
                                 "PRIMARY KEY(series, ts)) WITHOUT ROWID")
            self._tables.add(name)
        return name

    def _series_id(self, host: str, metric: str, labels: str) -> int:
        key = (host, metric, labels)
        sid = self._series.get(key)
        if sid is None:
            sid = self._db.execute("INSERT INTO series(host, metric, labels) VALUES (?,?,?)", key).lastrowid
            self._series[key] = sid
        return sid

    def is_duplicate(self, host: str, epoch: int, seq: int) -> bool:
        return seq <= self._max_seq.get((host, epoch), 0)

    def write(self, batches: list[collector_pb2.Batch], received: float) -> list[WriteResult]:
        results: list[WriteResult] = []
        raw: dict[str, list[tuple]] = {}
        rollups: dict[tuple[str, int, int], list[float]] = {}
        seqs: dict[tuple[str, int], int] = {}
        latest: dict[str, collector_pb2.Batch] = {}
        events, recordings = [], []
        db = self._db
        db.execute("BEGIN")
        try:
            for batch in batches:
                host, key = batch.host_id, (batch.host_id, batch.epoch)
                if batch.seq <= max(self._max_seq.get(key, 0), seqs.get(key, 0)):
                    results.append(WriteResult(True))
                    continue
                seqs[key] = batch.seq
                latest[host] = batch
                label_cache: dict[str, int] = {}
                for p in batch.points:
                    # Labels of one metric repeat across a batch's points only per device,
                    # so the JSON key is built once per distinct (metric, labels) here.
                    lkey = p.metric + "\0" + "\0".join(f"{k}\1{v}" for k, v in sorted(p.labels.items()))
                    sid = label_cache.get(lkey)
                    if sid is None:
                        sid = label_cache[lkey] = self._series_id(host, p.metric, labels_text(p.labels))
                    ts = p.ts
                    raw.setdefault(self._table(RAW, ts), []).append((sid, ts, p.count, p.sum, p.min, p.max, p.last))
                    for kind, width in ((R10, 10), (R60, 60)):
                        bucket = int(ts // width) * width
                        acc = rollups.get((kind, sid, bucket))
                        if acc is None:
                            rollups[(kind, sid, bucket)] = [p.count, p.sum, p.min, p.max, p.last, ts]
                        else:
                            acc[0] += p.count
                            acc[1] += p.sum
                            acc[2] = min(acc[2], p.min)
                            acc[3] = max(acc[3], p.max)
                            if ts >= acc[5]:
                                acc[4], acc[5] = p.last, ts
                for e in batch.events:
                    events.append((host, e.ts, e.kind, labels_text(e.labels), e.data_json or "{}", received))
                if batch.recording_json:
                    recordings.append((host, received, batch.recording_json))
                results.append(WriteResult(False, len(batch.points)))
            for table, rows in raw.items():
                db.executemany(f"INSERT INTO {table} VALUES (?,?,?,?,?,?,?)", rows)
            grouped: dict[str, list[tuple]] = {}
            for (kind, sid, bucket), (c, s, lo, hi, last, last_ts) in rollups.items():
                grouped.setdefault(self._table(kind, bucket), []).append((sid, bucket, c, s, lo, hi, last, last_ts))
            for table, rows in grouped.items():
                db.executemany(
                    f"INSERT INTO {table} VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(series, ts) DO UPDATE SET "
                    "count=count+excluded.count, sum=sum+excluded.sum, min=min(min, excluded.min), "
                    "max=max(max, excluded.max), last=CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END, "
                    "last_ts=max(last_ts, excluded.last_ts)", rows)
            if events:
                db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", events)
            if recordings:
                db.executemany("INSERT INTO recordings VALUES (?,?,?)", recordings)
            db.executemany("INSERT INTO epochs VALUES (?,?,?,?) ON CONFLICT(host, epoch) DO UPDATE SET "
                           "max_seq=max(max_seq, excluded.max_seq), updated=excluded.updated",
                           [(h, e, s, received) for (h, e), s in seqs.items()])
            db.executemany(
                "INSERT INTO agents VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(host) DO UPDATE SET "
                "labels=excluded.labels, epoch=excluded.epoch, last_seq=excluded.last_seq, last_seen=excluded.last_seen, "
                "backlog_records=excluded.backlog_records, backlog_bytes=excluded.backlog_bytes, dropped=excluded.dropped, "
                "health=excluded.health, nic=coalesce(excluded.nic, nic)",
                [(h, labels_text(b.labels), b.epoch, b.seq, received, received, b.status.spool_backlog_records,
                  b.status.spool_backlog_bytes, b.status.dropped_records, b.status.health, b.nic_json or None)
                 for h, b in latest.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # Only once committed do these count as stored.
        for key, seq in seqs.items():
            if seq > self._max_seq.get(key, 0):
                self._max_seq[key] = seq
        return results

    # --- reading -------------------------------------------------------------------------

    def _pick(self, resolution: str, start: float, now: float) -> str:
        if resolution:
            if resolution not in RESOLUTION_NAMES:
                raise ValueError(f"unknown resolution {resolution!r} (raw, 10s, 1m)")
            return RESOLUTION_NAMES[resolution]
        for kind in (RAW, R10, R60):
            if now - start <= self.retention[kind] + 60:  # "the last hour" asked a moment later
                return kind
        return R60

    def query(self, metric: str, host: str = "", labels: dict | None = None, start: float = 0,
              end: float = 0, resolution: str = "", limit: int = 10000) -> tuple[str, list[StoredSeries]]:
        now = time.time()
        end = end or now
        start = start or end - 3600
        kind = self._pick(resolution, start, now)
        want = dict(labels or {})
        with self._reader_lock:
            db = self._reader
            sql, args = "SELECT id, host, labels FROM series WHERE metric=?", [metric]
            if host:
                sql, args = sql + " AND host=?", args + [host]
            found = []
            for sid, h, ltext in db.execute(sql, args).fetchall():
                lab = json.loads(ltext)
                if all(lab.get(k) == v for k, v in want.items()):
                    found.append((sid, h, lab))
            width = PARTITION_SECONDS[kind]
            tables = [f"{kind}_{n}" for n in range(int(start // width), int(end // width) + 1)]
            tables = [t for t in tables if t in self._tables]
            out = []
            for sid, h, lab in found:
                points = []
                for table in tables:
                    points += db.execute(f"SELECT ts, count, sum, min, max, last FROM {table} "
                                         "WHERE series=? AND ts>=? AND ts<=? ORDER BY ts LIMIT ?",
                                         (sid, start, end, limit - len(points))).fetchall()
                    if len(points) >= limit:
                        break
                out.append(StoredSeries(h, metric, lab, points))
        name = {RAW: "raw", R10: "10s", R60: "1m"}[kind]
        return name, out

    def agents(self) -> list[dict]:
        with self._reader_lock:
            rows = self._reader.execute("SELECT host, labels, epoch, last_seq, first_seen, last_seen, backlog_records, "
                                        "backlog_bytes, dropped, health, nic FROM agents ORDER BY host").fetchall()
        keys = ("host", "labels", "epoch", "last_seq", "first_seen", "last_seen", "backlog_records",
                "backlog_bytes", "dropped", "health", "nic")
        out = []
        for row in rows:
            item = dict(zip(keys, row))
            item["labels"] = json.loads(item["labels"])
            item["nic"] = json.loads(item["nic"]) if item["nic"] else None
            out.append(item)
        return out

    def events(self, since: float, host: str = "", kinds: Iterable[str] = ()) -> list[dict]:
        sql, args = "SELECT host, ts, kind, labels, data FROM events WHERE ts>=?", [since]
        if host:
            sql, args = sql + " AND host=?", args + [host]
        kinds = list(kinds)
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        with self._reader_lock:
            rows = self._reader.execute(sql + " ORDER BY ts", args).fetchall()
        return [{"host": h, "ts": ts, "kind": k, "labels": json.loads(l), "data": json.loads(d)}
                for h, ts, k, l, d in rows]

    def count_raw(self) -> int:
        """Rows in the per-second tables (tests and the benchmark use it)."""
        with self._reader_lock:
            return sum(self._reader.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in sorted(self._tables) if t.startswith("raw_"))

    # --- retention -----------------------------------------------------------------------

    def cleanup(self, now: float) -> dict:
        """Drop partitions wholly older than their retention; delete old events."""
        dropped = []
        for name in sorted(self._tables):
            kind, _, number = name.partition("_")
            width = PARTITION_SECONDS[kind]
            if (int(number) + 1) * width < now - self.retention[kind]:
                self._db.execute(f"DROP TABLE IF EXISTS {name}")
                self._tables.discard(name)
                dropped.append(name)
        events = self._db.execute("DELETE FROM events WHERE ts < ?", (now - self.retention["events"],)).rowcount
        self._db.execute("DELETE FROM recordings WHERE received < ?", (now - self.retention["events"],))
        return {"dropped_tables": dropped, "deleted_events": events}

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._db.close()
        self._reader.close()


def finite_problem(batch: collector_pb2.Batch) -> str | None:
    """Why a batch cannot be stored as is, or None. (Run before it joins a commit group.)"""
    if not batch.host_id:
        return "host_id is empty"
    if batch.epoch == 0 or batch.seq == 0:
        return "epoch and seq must be > 0"
    for p in batch.points:
        if not p.metric:
            return "a point has no metric name"
        if not (math.isfinite(p.ts) and math.isfinite(p.sum) and math.isfinite(p.min)
                and math.isfinite(p.max) and math.isfinite(p.last)):
            return f"point {p.metric} has a non-finite value"
    for e in batch.events:
        if e.data_json:
            try:
                if not isinstance(json.loads(e.data_json), dict):
                    return f"event {e.kind}: data_json is not a JSON object"
            except ValueError:
                return f"event {e.kind}: data_json is not JSON"
    return None
