"""Where the collector keeps what agents send: the `Store` interface and its SQLite engine.

The servicer talks to a `Store` only, so a distributed time-series engine can be added
beside `SQLiteStore` without touching ingest or consumers.

SQLiteStore (one file, `<data_dir>/collector.db`, WAL mode). The shape is set by the write
rate of a fleet (1,000 hosts x 100 points a second on a small machine): a row per point, or
per series and bucket, costs b-tree work scattered over the whole table, so data is kept a
row per *batch* (raw) and a row per *host and bucket* (rollups).
- `raw_<hour>`: every stored batch as it came (protobuf, zlib-compressed unless
  `compress_raw` is off), keyed by an arrival number that increases across partitions,
  indexed by (host, ts). Queries at raw resolution decode the batches of the hosts and
  hours asked for. Kept briefly.
- `r10_<day>`, `r60_<week>`: 10-second and 1-minute rollups (count, sum, min, max, last;
  avg = sum / count), a row per (host, bucket) holding all that host's series packed, named
  by a `layouts` entry. Points are folded into in-memory accumulators as they are stored;
  a bucket's row is written once the bucket has closed ("rollups" below says how, and how
  a crash neither loses nor double-counts a point).
- `series` names every (host, metric, labels) once for the rollups.
- `epochs` holds, per (host, epoch), the highest sequence stored. A batch at or below it is
  a duplicate: acknowledged, not stored again. It is updated in the same transaction as the
  batch, so a crash can never store a batch without recording it, or the reverse: that is
  the exactly-once effect.
- `agents` keeps the latest identity and self-reported status of every host; `events`
  and `recordings` keep what their names say.
Every partitioned table is dropped whole when its retention has passed.

`write` is called by one thread (in the collector, the writer process of
agent/collector/writer.py) with a whole group of batches: one transaction per group, so
SQLite's per-commit cost is shared by every batch in it.
"""
from __future__ import annotations

import functools
import heapq
import json
import logging
import math
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
from agent.wire import columns
from agent.wire.columns import Points

# Partition widths and bucket widths of the three point tables.
RAW, R10, R60 = "raw", "r10", "r60"
PARTITION_SECONDS = {RAW: 3600, R10: 86400, R60: 7 * 86400}
RESOLUTION_NAMES = {"raw": RAW, "1s": RAW, "10s": R10, "1m": R60, "60s": R60}


@dataclass
class WriteResult:
    duplicate: bool
    points: int = 0
    series: tuple[int, ...] | None = None  # the series id of each point, in order (None for a duplicate)


GRACE = 5.0  # seconds after its end before a bucket is written (points still arriving for it)


@dataclass(frozen=True)
class Marks:
    """What the completed rollup flushes have written (see SQLiteStore, "rollups")."""
    arrival: int = 0  # the last flush covered the batches up to this arrival number...
    cut10: int = 0    # ...and their 10 s buckets before this...
    cut60: int = 0    # ...and their minutes before this
    held: int = 1     # the first arrival still in an open accumulator then

    def covers(self, arrival: int, bucket: int, width: int) -> bool:
        return arrival <= self.arrival and bucket < (self.cut10 if width == 10 else self.cut60)

    @classmethod
    def load(cls, db: sqlite3.Connection) -> "Marks":
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return cls(meta.get("rolled_arrival", 0), meta.get("rolled_cut10", 0), meta.get("rolled_cut60", 0),
                   meta.get("held_from", 1))


@dataclass
class Flush:
    """A rollup flush under way: its bounds, the 10 s accumulators it closed (key, columns,
    first arrival), its progress."""
    arrival: int
    cut10: int
    cut60: int
    closed10: list
    done10: int = 0
    closed60: list | None = None
    done60: int = 0

    @property
    def finished(self) -> bool:
        return self.closed60 is not None and self.done60 == len(self.closed60)


@dataclass(frozen=True)
class QueryBounds:
    """What one query may make the collector do (docs/collector.md, "Bounds"). The time range
    is checked first (ValueError); the rest while the query runs (`QueryTooLarge`), so an
    answer past a bound is never built in memory whole."""
    max_span: float = 6 * 3600.0    # seconds a raw-resolution query may cover (consumers.max_query_span)
    max_points: int = 500_000       # points returned, all series together (consumers.max_query_points)
    max_series: int = 20_000        # series matched (consumers.max_query_series)
    max_raw_batches: int = 100_000  # stored batches a raw query may decode (~40 us each)
    max_future: float = 86400.0     # how far past now `end` may lie


class QueryTooLarge(Exception):
    """A query that would pass one of its bounds while running (RESOURCE_EXHAUSTED)."""


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
CREATE TABLE IF NOT EXISTS layouts(id INTEGER PRIMARY KEY, sids BLOB NOT NULL);
"""


class SQLiteStore:
    def __init__(self, data_dir: str | Path, synchronous: str = "normal",
                 retention: dict[str, float] | None = None, cache_mib: int = 256,
                 flush_interval: float = 10.0, compress_raw: bool = True, chunk_rows: int = 50,
                 clock=time.time):
        self.clock = clock  # closes rollup buckets (tests move it)
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
        self._series: dict[tuple[str, str, str], int] = {
            (h, m, l): i for i, h, m, l in self._db.execute("SELECT id, host, metric, labels FROM series")}
        self._max_series = self._max_series_committed = max(self._series.values(), default=0)
        self._max_seq: dict[tuple[str, int], int] = {
            (h, e): s for h, e, s in self._db.execute("SELECT host, epoch, max_seq FROM epochs")}
        self._tables = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND (name GLOB 'raw_*' OR name GLOB 'r10_*' OR name GLOB 'r60_*')")}
        _refuse_old_rollups(self._db, self._tables)
        # Open accumulators (see "rollups" below), each [count, sum, min, max, last, last_ts]
        # columns for one (host, series ids of a batch layout, bucket), with the arrival
        # number of the first batch folded into it.
        self._groups: dict[tuple[str, tuple[int, ...], int], list[list]] = {}  # 10 s buckets
        self._minutes: dict[tuple[str, tuple[int, ...], int], list[list]] = {}  # minutes, from closed 10 s ones
        self._first: dict[tuple, int] = {}  # (10 or 60, key) -> first arrival
        self._layout_ids: dict[tuple[int, ...], int] = {
            tuple(array("q", blob)): i for i, blob in self._db.execute("SELECT id, sids FROM layouts")}
        self._max_layout = self._max_layout_committed = max(self._layout_ids.values(), default=0)
        self._layouts: dict[str, tuple] = {}  # host -> (its last batch's Layout, that layout's series ids)
        self.chunk_rows = chunk_rows
        self._flushing: Flush | None = None  # a flush being written over several commits
        self._finished: Marks | None = None  # a flush completed in the open transaction
        self._arrival = max([0] + [self._db.execute(f"SELECT coalesce(max(arrival), 0) FROM {t}").fetchone()[0]
                                   for t in self._tables if t.startswith("raw_")])
        self._marks = Marks.load(self._db)
        self._last_flush = time.monotonic()
        self.recovered = self._recover()
        # Checkpoints copy the WAL into the database and fsync it; done by the writer they
        # would stall the acks waiting on the next commit, so a thread of its own does them
        # (PASSIVE: never blocks the writer).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="egs-checkpoint", daemon=True)
        self._checkpointer.start()

    WAL_RESTART_BYTES = 64 << 20

    def _checkpoint_loop(self) -> None:
        # A PASSIVE checkpoint never completes while commits keep coming (there are always
        # newer frames), and SQLite starts the WAL over only after one that did: left alone
        # the WAL grew by the whole write rate (1.2 GB in a minute at the benchmark's rate).
        # So past WAL_RESTART_BYTES one RESTART checkpoint waits for the writer's current
        # commit, copies the little the passive ones left, and lets the next commit start the
        # WAL from its beginning; journal_size_limit then trims the file.
        wal = Path(f"{self.path}-wal")
        db, failing = None, None
        try:
            while not self._stop_checkpoints.wait(1.0):
                try:
                    if db is None:
                        db = self._connect()
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if wal.exists() and wal.stat().st_size > self.WAL_RESTART_BYTES:
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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        # Queries and recovery read whole partitions; SQLite's default cache is 2 MB.
        db.execute(f"PRAGMA cache_size=-{self.cache_kib}")
        db.execute(f"PRAGMA journal_size_limit={self.WAL_RESTART_BYTES}")  # see _checkpoint_loop
        return db

    # --- writing -------------------------------------------------------------------------

    def _table(self, kind: str, ts: float) -> str:
        name = f"{kind}_{int(ts // PARTITION_SECONDS[kind])}"
        if name not in self._tables:
            if kind == RAW:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name}(arrival INTEGER PRIMARY KEY, host TEXT NOT NULL, "
                                 "ts REAL NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, points BLOB NOT NULL)")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {name}_ht ON {name}(host, ts)")
            else:  # see "rollups" below
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {name}(host TEXT NOT NULL, ts INTEGER NOT NULL, "
                                 "flush INTEGER NOT NULL, layout INTEGER NOT NULL, data BLOB NOT NULL, "
                                 "UNIQUE(host, ts, flush, layout))")
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
                arrival += 1
                sids = self._fold(host, cols, arrival)
                ts = cols.ts[0] if len(cols) else (batch.created or received)
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
        self._max_layout_committed = self._max_layout
        # Only once committed do these count as stored.
        for key, seq in seqs.items():
            if seq > self._max_seq.get(key, 0):
                self._max_seq[key] = seq
        return results

    def _fold(self, host: str, points: Points, arrival: int, written: Marks | None = None) -> tuple[int, ...]:
        """Add a batch's points to the open 10 s accumulators; returns their series ids.

        The hot path (100k points/s at the benchmark's target). An agent sends the same
        series in the same order every second, all in one 10 s bucket, so a batch is folded
        column by column into the host's group for that bucket with C-level `map`s, and its
        series ids come from the host's previous batch when the layout (the series table)
        is the same. A batch that spans buckets is split by bucket first, each part folded
        as a group of its own. `written` (recovery only): the marks of the last flush; what
        of this batch they say is written already is left out.
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
        cols = [points.count, points.sum, points.min, points.max, points.last, tss]
        bucket = int(min(tss) // 10) * 10
        if int(max(tss) // 10) * 10 == bucket:
            parts = {bucket: None}  # the usual case: the whole batch, one group
        else:
            parts = {}
            for i, t in enumerate(tss):
                parts.setdefault(int(t // 10) * 10, []).append(i)
        for b, where in parts.items():
            key_sids, part = (sids, cols) if where is None else (tuple(sids[i] for i in where),
                                                                 [[c[i] for i in where] for c in cols])
            if written is None or not written.covers(arrival, b, 10):
                self._add(self._groups, 10, (host, key_sids, b), part, arrival)
            elif not written.covers(arrival, b // 60 * 60, 60):
                # Its 10 s row is written, its minute is not: straight into the minute, under
                # the key the 10 s group would have merged into it with.
                self._add(self._minutes, 60, (host, key_sids, b // 60 * 60), part, arrival)
        return sids

    def _add(self, accumulators: dict, width: int, key: tuple, cols: list[list], first: int) -> None:
        old = accumulators.get(key)
        if old is None:
            # The batch's own lists: accumulated columns are replaced by `_merged`, never
            # changed in place.
            accumulators[key] = cols
            self._first[(width, key)] = first
        else:
            accumulators[key] = _merged(old, cols)
            # A minute may take a 10 s group older than the ones it holds (a bucket that
            # closed later); `held` must still see the oldest arrival in it.
            if first < self._first[(width, key)]:
                self._first[(width, key)] = first

    def _series_ids(self, host: str, layout: columns.Layout) -> tuple[int, ...]:
        return tuple(self._series_id(host, metric, labels_text(labels))
                     for metric, labels in zip(layout.metrics, layout.labels))

    def _forget_uncommitted(self) -> None:
        # The rolled-back transaction took its new series and layouts, its points and its
        # flush step with it; the accumulators cannot be un-added, so they are rebuilt from
        # what is committed, exactly as after a crash.
        self._series = {k: v for k, v in self._series.items() if v <= self._max_series_committed}
        self._layout_ids = {k: v for k, v in self._layout_ids.items() if v <= self._max_layout_committed}
        self._layouts.clear()
        self._max_series = self._max_series_committed
        self._max_layout = self._max_layout_committed
        self._groups, self._minutes, self._first = {}, {}, {}
        self._flushing, self._finished = None, None
        self._marks = Marks.load(self._db)
        self._recover()

    # --- rollups ---------------------------------------------------------------------------
    #
    # A rollup row holds one host's series for one bucket: `r10_<day>` and `r60_<week>` rows
    # are (host, bucket ts, flush, layout, data), where `layout` names the tuple of series
    # ids (table `layouts`) and `data` packs count, sum, min, max, last and last_ts column
    # after column as doubles. Why not a row per (series, bucket): a fleet of 1,000 hosts
    # has ~100k series, so every flush would touch ~100k b-tree pages scattered over a table
    # that grows all day (measured: 2.8 us an upsert into an empty table, 35 us after 25
    # minutes, then disk reads once past the page cache). A row per host and bucket is
    # written once, touching ~1,000 index entries a flush; a query for a host reads only
    # that host's rows.
    #
    # Buckets are written when they close: every `flush_interval` the 10 s buckets that
    # ended more than GRACE seconds ago are frozen, merged into their minutes, and the
    # minutes that closed likewise; the rows go out over the next write transactions,
    # `chunk_rows` at a time (packing them all in one would stall the acks waiting on that
    # commit). A point arriving for a bucket already written (a replay, a skewed clock) goes
    # into a new accumulator and a later flush writes another row for that bucket: queries
    # merge rows of the same (host, ts) (counts and sums add, min, max, the last by last_ts).
    #
    # Crash safety rests on `Marks` (in `meta`, updated in the transaction that completes a
    # flush): after flush (A, c10, c60), what is written is exactly the contributions of the
    # batches with arrival <= A to the 10 s buckets before c10 and to the minutes before c60
    # (both cut-offs only grow), and `held` is the first arrival still in an open accumulator.
    # On start the stored batches from `held` on are folded again, leaving out what the marks
    # say is written. A flush cut short by a crash is redone from the same batches (its
    # arrival bound is in `meta` too) before the later ones are folded, and (host, ts, flush,
    # layout) is unique, so a row written before the crash is not written twice.

    def _layout_id(self, sids: tuple[int, ...]) -> int:
        lid = self._layout_ids.get(sids)
        if lid is None:
            lid = self._db.execute("INSERT INTO layouts(sids) VALUES (?)", (array("q", sids).tobytes(),)).lastrowid
            self._layout_ids[sids] = lid
            self._max_layout = max(self._max_layout, lid)
        return lid

    def _insert(self, rows: list[tuple[str, tuple]], flush: int) -> None:
        grouped: dict[str, list[tuple]] = {}
        for kind, (host, sids, ts), cols in rows:
            data = array("d")
            for c in cols:
                data.fromlist(c if type(c) is list else list(c))
            table = self._table(kind, ts)
            grouped.setdefault(table, []).append((host, ts, flush, self._layout_id(sids), data.tobytes()))
        for table, group in grouped.items():
            # OR IGNORE: a row rewritten after a crash mid-flush is already there.
            self._db.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?,?,?,?,?)", group)

    def _freeze(self, arrival: int, now: float | None) -> None:
        """Start a flush of what has closed by `now` (None: of everything) and of the
        batches up to `arrival`."""
        last = self._marks
        if now is None:
            cut10 = cut60 = 1 << 62
        else:  # never below the last cut-offs (a wall clock stepped back)
            cut10 = max(last.cut10, int((now - GRACE) // 10) * 10)
            cut60 = max(last.cut60, int((now - GRACE) // 60) * 60)
        self._flushing = Flush(arrival, cut10, cut60, self._close(cut10))
        self._set_meta(flush_arrival=arrival, flush_cut10=cut10, flush_cut60=cut60)

    def _close(self, cut10: int) -> list[tuple]:
        """Take the 10 s accumulators of buckets before `cut10` out, with their first
        arrivals (a point arriving meanwhile for one of those buckets starts a new one)."""
        closed = [(k, v, self._first.pop((10, k))) for k, v in self._groups.items() if k[2] < cut10]
        for k, _, _ in closed:
            del self._groups[k]
        return closed

    def _flush_rows(self, count: int) -> list:
        """The next `count` rows of the flush under way: 10 s rows (each merged into its
        minute as it goes), then, once they are all out, the minutes that closed."""
        f = self._flushing
        rows = []
        while len(rows) < count and f.done10 < len(f.closed10):
            (host, sids, bucket), cols, first = f.closed10[f.done10]
            f.done10 += 1
            rows.append((R10, (host, sids, bucket), cols))
            self._add(self._minutes, 60, (host, sids, bucket // 60 * 60), cols, first)
        if f.done10 == len(f.closed10):
            if f.closed60 is None:
                f.closed60 = [(k, v) for k, v in self._minutes.items() if k[2] < f.cut60]
                for k, _ in f.closed60:
                    del self._minutes[k]
                    self._first.pop((60, k))
            while len(rows) < count and f.done60 < len(f.closed60):
                key, cols = f.closed60[f.done60]
                f.done60 += 1
                rows.append((R60, key, cols))
        return rows

    def _flush_step(self) -> None:
        """Inside a write transaction: the next chunk of a flush under way, or start one."""
        if self._flushing is None:
            if time.monotonic() - self._last_flush >= self.flush_interval and (self._groups or self._minutes):
                self._freeze(self._arrival_in_tx, self.clock())
                self._last_flush = time.monotonic()
            return
        self._insert(self._flush_rows(self.chunk_rows), self._flushing.arrival)
        if self._flushing.finished:
            self._finished = self._complete(self._flushing)

    def _complete(self, f: Flush) -> Marks:
        """The marks once `f` is written (set in the transaction that writes its last rows)."""
        held = min(self._first.values(), default=f.arrival + 1)
        marks = Marks(f.arrival, f.cut10 if f.cut10 < 1 << 62 else 0, f.cut60 if f.cut60 < 1 << 62 else 0,
                      min(held, f.arrival + 1))
        self._set_meta(rolled_arrival=marks.arrival, rolled_cut10=marks.cut10, rolled_cut60=marks.cut60,
                       held_from=marks.held, flush_arrival=0)
        return marks

    def _after_commit(self) -> None:
        if self._finished is not None:
            self._marks, self._flushing, self._finished = self._finished, None, None

    def _write_flush(self) -> int:
        """All the remaining rows of the flush under way, in the open transaction."""
        f = self._flushing
        rows = self._flush_rows(1 << 62)
        self._insert(rows, f.arrival)
        self._marks, self._flushing = self._complete(f), None
        return len(rows)

    def flush(self) -> int:
        """Write every rollup now, open buckets included, in one transaction (tests, shutdown)."""
        db = self._db
        db.execute("BEGIN")
        try:
            written = self._write_flush() if self._flushing is not None else 0
            self._freeze(self._arrival, None)
            written += self._write_flush()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        self._last_flush = time.monotonic()
        return written

    def _set_meta(self, **values: int) -> None:
        self._db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             list(values.items()))

    def _fold_stored(self, first: int, upto: int | None, written: Marks | None) -> int:
        """Fold the stored batches with arrival in [first, upto], in arrival order."""
        def rows(table):
            sql, args = f"SELECT arrival, host, points FROM {table} WHERE arrival >= ?", [first]
            if upto is not None:
                sql, args = sql + " AND arrival <= ?", args + [upto]
            yield from self._db.execute(sql + " ORDER BY arrival", args).fetchall()
        folded = 0
        tables = sorted(t for t in self._tables if t.startswith("raw_"))
        for arrival, host, blob in heapq.merge(*(rows(t) for t in tables)):
            self._fold(host, _decode(blob), arrival, written if written and arrival <= written.arrival else None)
            folded += 1
        return folded

    def _recover(self) -> int:
        """Rebuild the open accumulators a crash lost, and finish a flush it cut short."""
        marks = self._marks
        pending = dict(self._db.execute("SELECT key, value FROM meta WHERE key GLOB 'flush_*'"))
        self._db.execute("BEGIN")
        folded = 0
        if pending.get("flush_arrival"):
            upto = pending["flush_arrival"]
            folded += self._fold_stored(marks.held, upto, marks)
            # Redo it whole with its own bounds: what it had written is ignored, the rest written.
            self._flushing = Flush(upto, pending["flush_cut10"], pending["flush_cut60"], self._close(pending["flush_cut10"]))
            self._write_flush()
            folded += self._fold_stored(upto + 1, None, None)
        else:
            folded += self._fold_stored(marks.held, None, marks)
        self._db.execute("COMMIT")  # also keeps the series and layouts created while folding
        self._max_series_committed = self._max_series
        self._max_layout_committed = self._max_layout
        return folded

    # --- reading (what the collector's other side does with a StoreReader of its own) ---

    @functools.cached_property
    def reader(self) -> StoreReader:
        """Opened when first used (the collector's writer process never reads)."""
        return StoreReader(self.path, self.retention, cache_mib=max(1, self.cache_kib // 4096))

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
        if "reader" in self.__dict__:
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
              end: float = 0, resolution: str = "", limit: int = 10000,
              bounds: QueryBounds = QueryBounds()) -> tuple[str, list[StoredSeries]]:
        """Stored history of one metric. ValueError for a range it will not look at,
        `QueryTooLarge` when the answer would pass `bounds`."""
        now = time.time()
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError("start and end must be finite unix seconds")
        end = end or now
        start = start or end - 3600
        if not 0 <= start <= end <= now + bounds.max_future:
            raise ValueError(f"the range must satisfy 0 <= start <= end <= now + {bounds.max_future:g} s "
                             f"(got start {start:.0f}, end {end:.0f}, now {now:.0f})")
        kind = self._pick(resolution, start, now)
        if kind == RAW and end - start > bounds.max_span:
            raise ValueError(f"a raw-resolution query may cover at most {bounds.max_span:g} s "
                             f"(consumers.max_query_span); ask for resolution 10s or 1m")
        want = dict(labels or {})
        name = {RAW: "raw", R10: "10s", R60: "1m"}[kind]
        width = PARTITION_SECONDS[kind]
        first, last = int(start // width), int(end // width)
        # Only partitions that exist: however wide the range, what is read is bounded by retention.
        tables = sorted((t for t in self._partitions() if t.startswith(kind + "_")
                         and first <= int(t.partition("_")[2]) <= last), key=lambda t: int(t.partition("_")[2]))
        budget = _Budget(bounds, max(1, min(limit, bounds.max_points)))
        with self._reader_lock:
            if kind == RAW:
                return name, self._query_raw(tables, metric, host, want, start, end, budget)
            db = self._reader
            sql, args = "SELECT id, host, labels FROM series WHERE metric=?", [metric]
            if host:
                sql, args = sql + " AND host=?", args + [host]
            found = []
            for sid, h, ltext in db.execute(sql, args):
                lab = json.loads(ltext)
                if all(lab.get(k) == v for k, v in want.items()):
                    found.append((sid, h, lab))
                    budget.series(len(found))
            return name, self._query_rollups(tables, metric, found, start, end, budget)

    def _query_rollups(self, tables, metric, found, start, end, budget: "_Budget") -> list[StoredSeries]:
        """The series `found` ((id, host, labels)) from rollup rows: each row holds a host's
        series for one bucket (see SQLiteStore, "rollups"); rows of the same bucket merge."""
        db = self._reader
        wanted = {sid: i for i, (sid, _, _) in enumerate(found)}
        merged: list[dict[int, list]] = [{} for _ in found]  # per series: bucket -> count, sum, min, max, last, last_ts
        positions: dict[int, list[tuple[int, int]]] = {}  # layout -> [(position, index in found)]
        for host in sorted({h for _, h, _ in found}):
            for table in tables:
                for ts, layout, data in db.execute(f"SELECT ts, layout, data FROM {table} WHERE host=? AND ts>=? AND ts<=?",
                                                   (host, start, end)):
                    where = positions.get(layout)
                    if where is None:
                        sids = array("q", db.execute("SELECT sids FROM layouts WHERE id=?", (layout,)).fetchone()[0])
                        where = positions[layout] = [(p, wanted[sid]) for p, sid in enumerate(sids) if sid in wanted]
                    if not where:
                        continue
                    values = array("d", data)
                    n = len(values) // 6
                    for p, k in where:
                        v = values[p::n]
                        old = merged[k].get(ts)
                        if old is None:
                            budget.point()
                            merged[k][ts] = list(v)
                        else:
                            old[0] += v[0]
                            old[1] += v[1]
                            old[2], old[3] = min(old[2], v[2]), max(old[3], v[3])
                            if v[5] >= old[5]:
                                old[4], old[5] = v[4], v[5]
        out = []
        for (_, h, lab), buckets in zip(found, merged):
            points = [(ts, int(c), total, lo, hi, last) for ts, (c, total, lo, hi, last, _) in sorted(buckets.items())]
            out.append(StoredSeries(h, metric, lab, points[:budget.limit]))
        return out

    def _query_raw(self, tables, metric, host, want, start, end, budget: "_Budget") -> list[StoredSeries]:
        # A batch is filed under its first point's second; its other points may be a little
        # later or earlier (a replayed backlog), hence the margin.
        series: dict[tuple, StoredSeries] = {}
        for table in tables:
            sql, args = f"SELECT host, points FROM {table} WHERE ts >= ? AND ts <= ?", [start - 60, end + 60]
            if host:
                sql, args = sql + " AND host = ?", args + [host]
            for h, blob in self._reader.execute(sql + " ORDER BY ts", args):
                budget.raw_batch()
                for m, labels, ts, count, total, lo, hi, last in _decode(blob).rows():
                    if m != metric or not start <= ts <= end:
                        continue
                    if any(labels.get(k) != v for k, v in want.items()):
                        continue
                    key = (h, tuple(sorted(labels.items())))
                    s = series.get(key)
                    if s is None:
                        s = series[key] = StoredSeries(h, metric, dict(labels), [])
                        budget.series(len(series))
                    if len(s.points) < budget.limit:
                        budget.point()
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
            item["nic"] = _json_or_invalid(item["nic"])
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


class _Budget:
    """One query's running counts against its bounds."""

    def __init__(self, bounds: QueryBounds, limit: int):
        self.bounds, self.limit = bounds, limit  # limit: points per series
        self.points = self.batches = 0

    def series(self, n: int) -> None:
        if n > self.bounds.max_series:
            raise QueryTooLarge(f"the query matches more than {self.bounds.max_series} series "
                                "(consumers.max_query_series); narrow it by host or labels")

    def point(self) -> None:
        self.points += 1
        if self.points > self.bounds.max_points:
            raise QueryTooLarge(f"the answer would hold more than {self.bounds.max_points} points "
                                "(consumers.max_query_points); narrow the range, the series or the resolution")

    def raw_batch(self) -> None:
        self.batches += 1
        if self.batches > self.bounds.max_raw_batches:
            raise QueryTooLarge(f"a raw query may read at most {self.bounds.max_raw_batches} stored batches; "
                                "narrow it by host or time, or ask for resolution 10s or 1m")


def _json_or_invalid(text: str | None):
    """A host's stored JSON, or {"invalid": why} when it does not parse (stored by an older
    collector that did not check it): one host's bad row never fails a fleet-wide listing."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        return {"invalid": f"stored value is not JSON ({e})"}


def _merged(old: list, new: list) -> list:
    """Two accumulations of the same series (count, sum, min, max, last, last_ts columns) as one."""
    o_count, o_sum, o_min, o_max, o_last, o_ts = old
    n_count, n_sum, n_min, n_max, n_last, n_ts = new
    out = [list(map(_add, o_count, n_count)), list(map(_add, o_sum, n_sum)),
           # Comprehensions, not map(min, ...): the builtin costs 3x as much per call.
           [v if v < o else o for o, v in zip(o_min, n_min)],
           [v if v > o else o for o, v in zip(o_max, n_max)]]
    if min(n_ts) >= max(o_ts):  # the usual case: the new points are the newer ones
        return out + [n_last, n_ts]
    newer = [t >= ot for t, ot in zip(n_ts, o_ts)]
    return out + [[v if k else ov for k, v, ov in zip(newer, n_last, o_last)],
                  [t if k else ot for k, t, ot in zip(newer, n_ts, o_ts)]]


def _refuse_old_rollups(db: sqlite3.Connection, tables: set[str]) -> None:
    """Rollup tables of the earlier per-series format cannot be written to; say so."""
    for name in sorted(tables):
        if not name.startswith("raw_"):
            cols = {row[1] for row in db.execute(f"PRAGMA table_info({name})")}
            if "series" in cols:
                raise ValueError(f"rollup table {name} has the per-series format of an earlier build; "
                                 "move this store aside (or drop its r10_*/r60_* tables) and start again")


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
