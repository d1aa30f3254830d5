"""Queries over a SQLite store's file, from a connection of their own: history at raw or
rollup resolution, kept within the query's bounds, the agents and the events."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from array import array
from pathlib import Path
from typing import Iterable

from agent.collector.store import QueryBounds, QueryTooLarge, StoredSeries
from agent.collector.store.schema import PARTITION_SECONDS, R10, R60, RAW, decode_raw, partition_names

RESOLUTION_NAMES = {"raw": RAW, "1s": RAW, "10s": R10, "1m": R60, "60s": R60}


class SQLiteReader:
    """Queries over a store file: history, agents, events. Opens its own connection (WAL
    lets it read while the writer, in this process or in the collector's writer process,
    writes)."""

    def __init__(self, path: str | Path, retention: dict[str, float], cache_mib: int = 64):
        self.path, self.retention = Path(path), retention
        self._reader_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._reader.execute("PRAGMA busy_timeout=30000")
        self._reader.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")

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
        """As `StoreReader.query` (agent/collector/store)."""
        bounds.names(metric, host)
        now = time.time()
        start, end = bounds.window(start, end, now)
        kind = self._pick(resolution, start, now)
        if kind == RAW and end - start > bounds.max_span:
            raise ValueError(f"a raw-resolution query may cover at most {bounds.max_span:g} s "
                             f"(consumers.max_query_span); ask for resolution 10s or 1m")
        want = dict(labels or {})
        name = {RAW: "raw", R10: "10s", R60: "1m"}[kind]
        width = PARTITION_SECONDS[kind]
        first, last = int(start // width), int(end // width)
        # Only partitions that exist: however wide the range, what is read is bounded by retention.
        tables = sorted((t for t in partition_names(self._reader) if t.startswith(kind + "_")
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
        series for one bucket (agent/collector/store/rollup.py); rows of the same bucket merge."""
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
                for m, labels, ts, count, total, lo, hi, last in decode_raw(blob).rows():
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

    def series_labels(self, metric: str) -> list[tuple[str, dict[str, str]]]:
        """(host, labels) of every stored series of `metric`."""
        with self._reader_lock:
            rows = self._reader.execute("SELECT host, labels FROM series WHERE metric=?", (metric,)).fetchall()
        return [(host, json.loads(text)) for host, text in rows]

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

    def recordings(self, since: float, host: str = "", limit: int = 20) -> list[dict]:
        """Flight recordings received since `since` (of `host` when given), newest first, at
        most `limit`: "host", "received" and "data" (the recording, parsed)."""
        sql, args = "SELECT host, received, data FROM recordings WHERE received>=?", [since]
        if host:
            sql, args = sql + " AND host=?", args + [host]
        with self._reader_lock:
            rows = self._reader.execute(sql + " ORDER BY received DESC LIMIT ?", args + [limit]).fetchall()
        return [{"host": h, "received": r, "data": _json_or_invalid(d) or {}} for h, r, d in rows]

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
