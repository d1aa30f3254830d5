"""Where the collector keeps what agents send: the `Store` interface and its SQLite engine.

The servicer talks to a `Store` only, so a distributed time-series engine can be added
beside `SQLiteStore` without touching ingest or consumers.

SQLiteStore (one file, `<data_dir>/collector.db`, WAL mode). The shape is set by the write
rate of a fleet (1,000 hosts x 100 points a second on a small machine): a row per point
costs several microseconds of b-tree work in SQLite, so per-second data is kept a row per
*batch*, and only the rollups are kept a row per (series, bucket).
- `raw_<hour>`: every stored batch as it came (protobuf, zlib-compressed unless
  `compress_raw` is off: that costs ~1.6 us of CPU per point and saves 4x disk), keyed by an arrival
  number that increases across partitions, indexed by (host, ts). Queries at raw resolution
  decode the batches of the hosts and hours asked for. Kept briefly.
- `r10_<day>`, `r60_<week>`: 10-second and 1-minute rollups per series (count, sum, min,
  max, last; avg = sum / count), keyed by (series, bucket). Points are folded into
  in-memory accumulators as they are stored and upserted every `flush_interval` seconds
  (additively, so a bucket flushed twice, or a replay hours late, merges correctly); the
  flush records the arrival number it covers, and on start the batches after that mark are
  folded again, so a crash neither loses nor double-counts a rollup.
- `series` names every (host, metric, labels) once for the rollups.
- `epochs` holds, per (host, epoch), the highest sequence stored. A batch at or below it is
  a duplicate: acknowledged, not stored again. It is updated in the same transaction as the
  batch, so a crash can never store a batch without recording it, or the reverse: that is
  the exactly-once effect.
- `agents` keeps the latest identity and self-reported status of every host; `events`
  and `recordings` keep what their names say.
Every partitioned table is dropped whole when its retention has passed.

`write` is called by one thread (the collector's committer) with a whole group of batches:
one transaction per group, so SQLite's per-commit cost is shared by every batch in it.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import sqlite3
import threading
import time
import zlib
from array import array
from dataclasses import dataclass
from operator import add as _add
from pathlib import Path
from typing import Iterable, Protocol

from agent.proto import collector_pb2
from agent.stream import columns
from agent.stream.columns import Points

# Partition widths and bucket widths of the three point tables.
RAW, R10, R60 = "raw", "r10", "r60"
PARTITION_SECONDS = {RAW: 3600, R10: 86400, R60: 7 * 86400}
BUCKET_SECONDS = {RAW: None, R10: 10, R60: 60}
RESOLUTION_NAMES = {"raw": RAW, "1s": RAW, "10s": R10, "1m": R60, "60s": R60}


@dataclass
class WriteResult:
    duplicate: bool
    points: int = 0
    series: tuple[int, ...] | None = None  # the series id of each point, in order (None for a duplicate)


@dataclass
class StoredSeries:
    host: str
    metric: str
    labels: dict[str, str]
    points: list[tuple[float, int, float, float, float, float]]  # ts, count, sum, min, max, last


class Store(Protocol):
    def write(self, batches: list[collector_pb2.Batch], received: float,
              wire: list[bytes] | None = None, points: list[Points] | None = None) -> list[WriteResult]: ...
    def query(self, metric: str, host: str = "", labels: dict | None = None, start: float = 0,
              end: float = 0, resolution: str = "", limit: int = 10000) -> tuple[str, list[StoredSeries]]: ...
    def agents(self) -> list[dict]: ...
    def events(self, since: float, host: str = "", kinds: Iterable[str] = ()) -> list[dict]: ...
    def cleanup(self, now: float) -> dict: ...
    def close(self) -> None: ...


def _decode(blob: bytes) -> Points:
    """The points of a raw record: b"z" + zlib(Batch) or b"p" + Batch (store.compress_raw off)."""
    body = memoryview(blob)[1:]
    return columns.read(collector_pb2.Batch.FromString(zlib.decompress(body) if blob[:1] == b"z" else bytes(body)))


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
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteStore:
    def __init__(self, data_dir: str | Path, synchronous: str = "normal",
                 retention: dict[str, float] | None = None, cache_mib: int = 256,
                 flush_interval: float = 10.0, compress_raw: bool = True, chunk_rows: int = 1000):
        self.cache_kib = cache_mib * 1024
        self.compress_raw = compress_raw
        self.flush_interval = flush_interval
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "collector.db"
        self.retention = {RAW: 3600.0, R10: 2 * 86400.0, R60: 30 * 86400.0, "events": 90 * 86400.0}
        self.retention.update(retention or {})
        self._db = self._connect()
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self.reader = StoreReader(self.path, self.retention, cache_mib=max(1, cache_mib // 4))
        self._series: dict[tuple[str, str, str], int] = {
            (h, m, l): i for i, h, m, l in self._db.execute("SELECT id, host, metric, labels FROM series")}
        self._max_series = self._max_series_committed = max(self._series.values(), default=0)
        self._max_seq: dict[tuple[str, int], int] = {
            (h, e): s for h, e, s in self._db.execute("SELECT host, epoch, max_seq FROM epochs")}
        self._tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND (name GLOB 'raw_*' OR name GLOB 'r10_*' OR name GLOB 'r60_*')")}
        self._acc: dict[tuple[int, int], array] = {}  # (series, 10 s bucket) -> count, sum, min, max, last, last_ts
        # (series ids of a batch layout, 10 s bucket) -> [count, sum, min, max, last, last_ts] columns
        self._groups: dict[tuple[tuple[int, ...], int], list[array]] = {}
        self._layouts: dict[str, tuple] = {}  # host -> (its last batch's Layout, that layout's series ids)
        self.chunk_rows = chunk_rows
        self._frozen: list | None = None  # a flush being written: [((series, bucket), values)], made as needed
        self._frozen_rest = iter(())  # the frozen rows not yet made
        self._frozen_total = 0
        self._frozen60: dict = {}
        self._frozen60_list: list | None = None
        self._pending_upto = self._pending_done = 0
        self._finished: int | None = None
        self._arrival = max([0] + [self._db.execute(f"SELECT coalesce(max(arrival), 0) FROM {t}").fetchone()[0]
                                   for t in self._tables if t.startswith("raw_")])
        row = self._db.execute("SELECT value FROM meta WHERE key='rollups_through'").fetchone()
        self._rolled_through = row[0] if row else 0
        self._last_flush = time.monotonic()
        self.recovered = self._recover()
        # Checkpoints copy the WAL into the database and fsync it; done by the writer they
        # would stall the acks waiting on the next commit, so a thread of its own does them
        # (PASSIVE: never blocks the writer).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="egs-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = self._connect()
        try:
            while not self._stop_checkpoints.wait(1.0):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or locked: the next round catches up
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        # The rollup tables take ~100k upserts per flush spread over their b-trees; with
        # SQLite's default 2 MB page cache most of them would be disk reads.
        db.execute(f"PRAGMA cache_size=-{self.cache_kib}")
        return db

    # --- writing -------------------------------------------------------------------------

    def _table(self, kind: str, ts: float) -> str:
        name = f"{kind}_{int(ts // PARTITION_SECONDS[kind])}"
        if name not in self._tables:
            if kind == RAW:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name}(arrival INTEGER PRIMARY KEY, host TEXT NOT NULL, "
                                 "ts REAL NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, points BLOB NOT NULL)")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {name}_ht ON {name}(host, ts)")
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
            self._max_series = max(self._max_series, sid)
        return sid

    def is_duplicate(self, host: str, epoch: int, seq: int) -> bool:
        return seq <= self._max_seq.get((host, epoch), 0)

    def write(self, batches: list[collector_pb2.Batch], received: float,
              wire: list[bytes] | None = None, points: list[Points] | None = None) -> list[WriteResult]:
        """Store a group of batches in one transaction. `wire`: their bytes as received,
        kept as the raw record (saves encoding them again); `points`: their columns as
        `columns.read` gave them when the batches were checked (else read here)."""
        results: list[WriteResult] = []
        raw: dict[str, list[tuple]] = {}
        seqs: dict[tuple[str, int], int] = {}
        latest: dict[str, collector_pb2.Batch] = {}
        events, recordings = [], []
        arrival = self._arrival
        db = self._db
        db.execute("BEGIN")
        try:
            for i, batch in enumerate(batches):
                host, key = batch.host_id, (batch.host_id, batch.epoch)
                if batch.seq <= max(self._max_seq.get(key, 0), seqs.get(key, 0)):
                    results.append(WriteResult(True))
                    continue
                seqs[key] = batch.seq
                latest[host] = batch
                cols = points[i] if points is not None else columns.read(batch)
                sids = self._fold(host, cols)
                ts = cols.ts[0] if len(cols) else batch.created
                arrival += 1
                blob = wire[i] if wire is not None else batch.SerializeToString()
                blob = b"z" + zlib.compress(blob, 1) if self.compress_raw else b"p" + blob
                raw.setdefault(self._table(RAW, ts), []).append((arrival, host, ts, batch.epoch, batch.seq, blob))
                for e in batch.events:
                    events.append((host, e.ts, e.kind, labels_text(e.labels), e.data_json or "{}", received))
                if batch.recording_json:
                    recordings.append((host, received, batch.recording_json))
                results.append(WriteResult(False, len(sids), sids))
            for table, rows in raw.items():
                db.executemany(f"INSERT INTO {table} VALUES (?,?,?,?,?,?)", rows)
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
            self._arrival_in_tx = arrival
            self._flush_step()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        self._after_commit()
        self._arrival = arrival
        self._max_series_committed = self._max_series
        # Only once committed do these count as stored.
        for key, seq in seqs.items():
            if seq > self._max_seq.get(key, 0):
                self._max_seq[key] = seq
        return results

    def _fold(self, host: str, points: Points) -> tuple[int, ...]:
        """Add points to the 10 s accumulators; returns their series ids.

        The hot path (100k points/s at the benchmark's target). An agent sends the same
        series in the same order every second, all in one 10 s bucket, so a batch is folded
        column by column into the host's group for that bucket with C-level `map`s, and its
        series ids come from the host's previous batch when the layout (the series table)
        is the same. A batch that spans two buckets goes through `_fold_points` instead.
        Either way the result is a pure function of the batches folded, in order: recovery
        refolds them into the same rows.
        """
        if not len(points):
            return ()
        known = self._layouts.get(host)
        if known is not None and known[0] is points.layout:
            sids = known[1]
        else:
            sids = self._series_ids(host, points.layout)
            self._layouts[host] = (points.layout, sids)
        tss = points.ts
        bucket = int(min(tss) // 10) * 10
        if int(max(tss) // 10) * 10 != bucket:
            self._fold_points(sids, points)
            return sids
        group = self._groups.get((sids, bucket))
        if group is None:
            # The batch's own lists (a group's columns are replaced, never changed in place).
            self._groups[(sids, bucket)] = [points.count, points.sum, points.min, points.max, points.last, tss]
            return sids
        g_count, g_sum, g_min, g_max, g_last, g_ts = group
        group[0] = list(map(_add, g_count, points.count))
        group[1] = list(map(_add, g_sum, points.sum))
        # Comprehensions, not map(min, ...): the builtin costs 3x as much per call.
        group[2] = [v if v < g else g for g, v in zip(g_min, points.min)]
        group[3] = [v if v > g else g for g, v in zip(g_max, points.max)]
        if min(tss) >= max(g_ts):  # the usual case: this batch is the newer one
            group[4], group[5] = points.last, tss
        else:
            newer = [t >= gt for t, gt in zip(tss, g_ts)]
            group[4] = [v if n else gv for n, v, gv in zip(newer, points.last, g_last)]
            group[5] = [t if n else gt for n, t, gt in zip(newer, tss, g_ts)]
        return sids

    def _series_ids(self, host: str, layout: columns.Layout) -> tuple[int, ...]:
        return tuple(self._series_id(host, metric, labels_text(labels))
                     for metric, labels in zip(layout.metrics, layout.labels))

    def _fold_points(self, sids, points: Points) -> None:
        """One point at a time into `_acc` (batches the column-wise fold does not take)."""
        acc = self._acc
        for sid, ts, count, total, lo, hi, last in zip(sids, points.ts, points.count, points.sum,
                                                         points.min, points.max, points.last):
            k = (sid, int(ts // 10) * 10)
            a = acc.get(k)
            if a is None:
                acc[k] = array("d", (count, total, lo, hi, last, ts))
            else:
                a[0] += count
                a[1] += total
                if lo < a[2]:
                    a[2] = lo
                if hi > a[3]:
                    a[3] = hi
                if ts >= a[5]:
                    a[4], a[5] = last, ts

    def _forget_uncommitted(self) -> None:
        # The rolled-back transaction took its new series, its points and its flush step
        # with it; the accumulators cannot be un-added, so they are rebuilt from what is
        # committed, exactly as after a crash.
        self._series = {k: v for k, v in self._series.items() if v <= self._max_series_committed}
        self._series_cache.clear()
        self._layouts.clear()
        self._max_series = self._max_series_committed
        self._acc, self._groups, self._frozen, self._finished = {}, {}, None, None
        self._recover()

    # --- rollups ---------------------------------------------------------------------------
    #
    # Writing 100k rollup rows at once would stall the acks behind it for about a second, so
    # a flush is spread over the following commits. Every `flush_interval` the 10 s
    # accumulators are frozen (a list, in the order their keys first appeared: the order the
    # points arrived) and each later write transaction carries the next `chunk_rows` rows:
    # first the 10 s rows, each also merged into its minute, then the 1 min rows. The
    # progress (A = the last arrival covered, rows done) is kept in `meta` in the same
    # transaction. After a crash the frozen list is rebuilt by folding the stored batches of
    # arrivals (through, A] in arrival order, which gives the same rows in the same order;
    # the rows already written are skipped and the rest written: every point lands in the
    # rollups exactly once.

    @staticmethod
    def _merge_minute(r60: dict, sid: int, bucket: int, v: list) -> None:
        k = (sid, bucket // 60 * 60)
        a = r60.get(k)
        if a is None:
            r60[k] = array("d", v)
        else:
            a[0] += v[0]
            a[1] += v[1]
            if v[2] < a[2]:
                a[2] = v[2]
            if v[3] > a[3]:
                a[3] = v[3]
            if v[5] >= a[5]:
                a[4], a[5] = v[4], v[5]

    def _pending_rows(self, start: int, count: int) -> list[tuple[str, tuple]]:
        """Rows [start, start + count) of the frozen flush: 10 s rows, then 1 min rows."""
        frozen, r60, total = self._frozen, self._frozen60, self._frozen_total
        if len(frozen) < min(start + count, total):
            frozen.extend(itertools.islice(self._frozen_rest, min(start + count, total) - len(frozen)))
        rows = []
        for (sid, bucket), v in frozen[start:start + count]:
            self._merge_minute(r60, sid, bucket, v)
            rows.append((f"{R10}_{bucket // PARTITION_SECONDS[R10]}", (sid, bucket, *v)))
        if start + count > total:
            if self._frozen60_list is None:
                self._frozen60_list = list(r60.items())
            first = max(0, start - total)
            for (sid, bucket), v in self._frozen60_list[first:first + count - len(rows)]:
                rows.append((f"{R60}_{bucket // PARTITION_SECONDS[R60]}", (sid, bucket, *v)))
        return rows

    def _upsert(self, rows: list[tuple[str, tuple]]) -> None:
        grouped: dict[str, list[tuple]] = {}
        for table, row in rows:
            grouped.setdefault(table, []).append(row)
        for table, group in grouped.items():
            kind = table.partition("_")[0]
            self._table(kind, group[0][1])
            self._db.executemany(
                f"INSERT INTO {table} VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(series, ts) DO UPDATE SET "
                "count=count+excluded.count, sum=sum+excluded.sum, min=min(min, excluded.min), "
                "max=max(max, excluded.max), "
                "last=CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END, "
                "last_ts=max(last_ts, excluded.last_ts)", group)

    def _set_meta(self, **values: int) -> None:
        self._db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             list(values.items()))

    def _freeze(self, upto: int) -> None:
        # The rows are made from the columns chunk by chunk as the flush proceeds (making
        # 100k of them here at once would stall the acks waiting on this commit).
        groups, acc = self._groups, self._acc
        self._frozen, self._frozen60, self._frozen60_list = [], {}, None
        self._frozen_rest = itertools.chain(_group_rows(groups), acc.items())
        self._frozen_total = sum(len(sids) for sids, _ in groups) + len(acc)
        self._groups, self._acc = {}, {}
        self._pending_upto, self._pending_done = upto, 0

    def _flush_step(self) -> None:
        """Inside a write transaction: the next chunk of a pending flush, or start one."""
        if self._frozen is None:
            if (self._acc or self._groups) and time.monotonic() - self._last_flush >= self.flush_interval:
                self._freeze(self._arrival_in_tx)
                self._last_flush = time.monotonic()
                self._set_meta(pending_upto=self._pending_upto, pending_done=0)
            return
        rows = self._pending_rows(self._pending_done, self.chunk_rows)
        self._upsert(rows)
        self._pending_done += len(rows)
        if len(rows) < self.chunk_rows and self._frozen60_list is not None:
            self._set_meta(rollups_through=self._pending_upto, pending_upto=0, pending_done=0)
            self._finished = self._pending_upto
        else:
            self._set_meta(pending_done=self._pending_done)

    def _after_commit(self) -> None:
        if self._finished is not None:
            self._frozen, self._rolled_through, self._finished = None, self._finished, None

    def _write_rest(self) -> int:
        """Every remaining row of a frozen flush, in the current transaction."""
        rows = self._pending_rows(self._pending_done, 1 << 62)
        self._upsert(rows)
        self._frozen = None
        return len(rows)

    def flush(self) -> int:
        """Write every rollup now, in one transaction (tests, shutdown)."""
        db = self._db
        db.execute("BEGIN")
        try:
            written = self._write_rest() if self._frozen is not None else 0
            self._freeze(self._arrival)
            written += self._write_rest()
            self._set_meta(rollups_through=self._arrival, pending_upto=0, pending_done=0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._rolled_through = self._arrival
        self._last_flush = time.monotonic()
        return written

    def _fold_stored(self, after: int, upto: int | None) -> int:
        """Fold the stored batches with arrival in (after, upto], in arrival order."""
        def rows(table):
            sql, args = f"SELECT arrival, host, points FROM {table} WHERE arrival > ?", [after]
            if upto is not None:
                sql, args = sql + " AND arrival <= ?", args + [upto]
            yield from self._db.execute(sql + " ORDER BY arrival", args).fetchall()
        folded = 0
        tables = sorted(t for t in self._tables if t.startswith("raw_"))
        for _, host, blob in heapq.merge(*(rows(t) for t in tables)):
            self._fold(host, _decode(blob))
            folded += 1
        return folded

    def _recover(self) -> int:
        """Rebuild what a crash lost: a half-written flush, and the unflushed accumulators."""
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        through = meta.get("rollups_through", 0)
        upto, done = meta.get("pending_upto", 0), meta.get("pending_done", 0)
        self._db.execute("BEGIN")
        folded = 0
        if upto:
            folded += self._fold_stored(through, upto)
            self._freeze(upto)
            # The minute rows need every 10 s row merged, also those written before the crash.
            self._pending_rows(0, done)
            self._pending_done = done
            self._write_rest()
            through = upto
            self._set_meta(rollups_through=upto, pending_upto=0, pending_done=0)
        folded += self._fold_stored(through, None)
        self._db.execute("COMMIT")  # also keeps the series created while folding
        self._max_series_committed = self._max_series
        self._rolled_through = through
        return folded

    # --- reading (what the collector's other side does with a StoreReader of its own) ---

    def query(self, *args, **kwargs) -> tuple[str, list[StoredSeries]]:
        return self.reader.query(*args, **kwargs)

    def agents(self) -> list[dict]:
        return self.reader.agents()

    def events(self, *args, **kwargs) -> list[dict]:
        return self.reader.events(*args, **kwargs)

    def count_raw(self) -> int:
        return self.reader.count_raw()

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
        self._stop_checkpoints.set()
        self._checkpointer.join(10)
        try:
            self.flush()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            # The raw batches are committed already; what is lost is the pending rollup rows,
            # which the next start rebuilds from the raw data it finds unrolled.
            logging.getLogger("egs-collector").error(
                "store: final rollup flush or checkpoint failed at shutdown: %s", e)
        self._db.close()
        self.reader.close()


class StoreReader:
    """Queries over a store file: history, agents, events. Opens its own connection (WAL
    lets it read while the writer, in this process or in `writer.WriterProcess`, writes)."""

    def __init__(self, path: str | Path, retention: dict[str, float], cache_mib: int = 64):
        self.path, self.retention = Path(path), retention
        self._reader_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._reader.execute("PRAGMA busy_timeout=30000")
        self._reader.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")

    def _partitions(self) -> set[str]:
        return {name for (name,) in self._reader.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND (name GLOB 'raw_*' OR name GLOB 'r10_*' OR name GLOB 'r60_*')")}

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
        name = {RAW: "raw", R10: "10s", R60: "1m"}[kind]
        width = PARTITION_SECONDS[kind]
        tables = [f"{kind}_{n}" for n in range(int(start // width), int(end // width) + 1)]
        tables = [t for t in tables if t in self._partitions()]
        with self._reader_lock:
            if kind == RAW:
                return name, self._query_raw(tables, metric, host, want, start, end, limit)
            db = self._reader
            sql, args = "SELECT id, host, labels FROM series WHERE metric=?", [metric]
            if host:
                sql, args = sql + " AND host=?", args + [host]
            found = []
            for sid, h, ltext in db.execute(sql, args).fetchall():
                lab = json.loads(ltext)
                if all(lab.get(k) == v for k, v in want.items()):
                    found.append((sid, h, lab))
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
        return name, out

    def _query_raw(self, tables, metric, host, want, start, end, limit) -> list[StoredSeries]:
        # A batch is filed under its first point's second; its other points may be a little
        # later or earlier (a replayed backlog), hence the margin.
        series: dict[tuple, StoredSeries] = {}
        for table in tables:
            sql, args = f"SELECT host, points FROM {table} WHERE ts >= ? AND ts <= ?", [start - 60, end + 60]
            if host:
                sql, args = sql + " AND host = ?", args + [host]
            for h, blob in self._reader.execute(sql + " ORDER BY ts", args):
                for m, labels, ts, count, total, lo, hi, last in _decode(blob).rows():
                    if m != metric or not start <= ts <= end:
                        continue
                    if any(labels.get(k) != v for k, v in want.items()):
                        continue
                    key = (h, tuple(sorted(labels.items())))
                    s = series.get(key)
                    if s is None:
                        s = series[key] = StoredSeries(h, metric, dict(labels), [])
                    if len(s.points) < limit:
                        s.points.append((ts, int(count), total, lo, hi, last))
        for s in series.values():
            s.points.sort()
        return sorted(series.values(), key=lambda s: (s.host, sorted(s.labels.items())))

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
        """Points kept at raw resolution (tests and the benchmark use it)."""
        with self._reader_lock:
            return sum(len(_decode(blob))
                       for t in sorted(self._partitions()) if t.startswith("raw_")
                       for (blob,) in self._reader.execute(f"SELECT points FROM {t}"))

    def close(self) -> None:
        self._reader.close()


def _group_rows(groups: dict) -> Iterable[tuple[tuple[int, int], tuple]]:
    """The column-wise accumulators as ((series, bucket), values) rows, in a fixed order."""
    for (sids, bucket), cols in groups.items():
        for row in zip(sids, *cols):
            # Tuples of numbers, not lists: the garbage collector stops tracking them, and a
            # flush holds ~100k of these.
            yield (row[0], bucket), row[1:]


def check(batch: collector_pb2.Batch) -> Points:
    """The batch's points when it can be stored as is; ValueError saying why not. (Run
    before it joins a commit group: one bad batch must not fail the others' commit.)"""
    if not batch.host_id:
        raise ValueError("host_id is empty")
    if batch.epoch == 0 or batch.seq == 0:
        raise ValueError("epoch and seq must be > 0")
    points = columns.read(batch)
    for e in batch.events:
        if e.data_json:
            try:
                if not isinstance(json.loads(e.data_json), dict):
                    raise ValueError(f"event {e.kind}: data_json is not a JSON object")
            except json.JSONDecodeError:
                raise ValueError(f"event {e.kind}: data_json is not JSON") from None
    return points


def raw_points(db_path: str | Path, metric: str | None, host: str = "") -> list[tuple[str, collector_pb2.Point]]:
    """Every raw point of `metric` (None: of every metric) in a store file, read-only (tests
    and tools; a running collector may keep writing meanwhile, WAL lets both proceed)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'raw_*'")]
        out = []
        for table in sorted(tables):
            sql, args = f"SELECT host, points FROM {table}", []
            if host:
                sql, args = sql + " WHERE host = ?", [host]
            for h, blob in db.execute(sql + " ORDER BY arrival", args):
                out += [(h, columns.to_point(row, collector_pb2.Point())) for row in _decode(blob).rows()
                        if metric is None or row[0] == metric]
        return out
    finally:
        db.close()
