"""The SQLite store: one file, `<data_dir>/collector.db` (its format: agent/collector/store/schema.py).

`write` is called by one thread (in the collector, the writer process of
agent/collector/writer.py) with a whole group of batches: one transaction per group, so
SQLite's per-commit cost is shared by every batch in it. The transaction stores each batch's
raw record, advances `epochs` (per (host, epoch), the highest sequence stored: a batch at or
below it is a duplicate, acknowledged and not stored again), updates `agents`, adds events
and recordings, and carries the next step of a rollup flush. Because `epochs` changes in the
same transaction as the batch, a crash can never store a batch without recording it, or the
reverse: that is the exactly-once effect.
"""
from __future__ import annotations

import functools
import logging
import sqlite3
import time
from pathlib import Path

from agent.collector.store import ReadsThroughReader, WriteResult, wal
from agent.collector.store import ledger as ledger_rows
from agent.collector.store.reader import SQLiteReader
from agent.collector.store.retention import DEFAULT_RETENTION, drop_expired
from agent.collector.store.rollup import Rollups
from agent.collector.store.schema import RAW, TABLES, Partitions, encode_raw
from agent.proto import collector_pb2
from agent.wire import columns
from agent.wire.columns import Points


class SQLiteStore(ReadsThroughReader):
    """A `Store` (agent/collector/store) in one SQLite file."""

    def __init__(self, data_dir: str | Path, synchronous: str = "normal",
                 retention: dict[str, float] | None = None, cache_mib: int = 256,
                 flush_interval: float = 10.0, compress_raw: bool = True, chunk_rows: int = 50,
                 exactly_once: bool = True, clock=time.time):
        self.cache_kib = cache_mib * 1024
        self.compress_raw = compress_raw
        self.exactly_once = exactly_once  # False: the bus sees to it (agent/collector/bus.py)
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "collector.db"
        self.retention = {**DEFAULT_RETENTION, **(retention or {})}
        self._db = self._connect()
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(TABLES)
        self._max_seq: dict[tuple[str, int], int] = {
            (h, e): s for h, e, s in self._db.execute("SELECT host, epoch, max_seq FROM epochs")}
        self._partitions = Partitions(self._db)
        self._arrival = max([0] + [self._db.execute(f"SELECT coalesce(max(arrival), 0) FROM {t}").fetchone()[0]
                                   for t in self._partitions.raw()])
        self.rollups = Rollups(self._db, self._partitions, flush_interval, chunk_rows, clock)
        self.recovered = self.rollups.recovered
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
        self._checkpointer = wal.Checkpointer(self.path, self._connect)

    def _connect(self) -> sqlite3.Connection:
        return wal.connect(self.path, self.cache_kib)

    # --- writing -------------------------------------------------------------------------

    def write(self, batches: list[collector_pb2.Batch], received: float,
              wire: list[bytes] | None = None, points: list[Points] | None = None) -> list[WriteResult]:
        """As `StoreWriter.write` (agent/collector/store): one transaction for the group."""
        results: list[WriteResult] = []
        raw: dict[str, list[tuple]] = {}
        ledger = ledger_rows.Entries()
        seqs = ledger.seqs
        arrival = self._arrival
        db = self._db
        db.execute("BEGIN")
        try:
            for i, batch in enumerate(batches):
                host, key = batch.host_id, (batch.host_id, batch.epoch)
                if self.exactly_once and batch.seq <= max(self._max_seq.get(key, 0), seqs.get(key, 0)):
                    results.append(WriteResult(True))
                    continue
                ledger.add(batch, received)
                cols = points[i] if points is not None else columns.read(batch)
                arrival += 1
                sids = self.rollups.fold(host, cols, arrival)
                ts = cols.ts[0] if len(cols) else (batch.created or received)
                blob = encode_raw(wire[i] if wire is not None else batch.SerializeToString(), self.compress_raw)
                raw.setdefault(self._partitions.table(RAW, ts), []).append((arrival, host, ts, batch.epoch, batch.seq, blob))
                results.append(WriteResult(False, len(sids), sids))
            for table, rows in raw.items():
                db.executemany(f"INSERT INTO {table} VALUES (?,?,?,?,?,?)", rows)
            ledger.write(db, received)
            self.rollups.step(arrival)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.rollups.rolled_back()
            raise
        self.rollups.committed()
        self._arrival = arrival
        # Only once committed do these count as stored.
        for key, seq in seqs.items():
            if seq > self._max_seq.get(key, 0):
                self._max_seq[key] = seq
        return results

    def flush(self) -> int:
        """Write every rollup now, open buckets included, in one transaction (tests, shutdown)."""
        return self.rollups.flush(self._arrival)

    def cleanup(self, now: float) -> dict:
        return drop_expired(self._partitions, self.retention, now)

    # --- reading (what the collector's other side does with a SQLiteReader of its own) ---

    @functools.cached_property
    def reader(self) -> SQLiteReader:
        """Opened when first used (the collector's writer process never reads)."""
        return SQLiteReader(self.path, self.retention, cache_mib=max(1, self.cache_kib // 4096))

    def close(self) -> None:
        self._checkpointer.stop()
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
