"""A collector store's file read straight from disk (tests): the points it keeps at raw
resolution, whatever the collector writing it is doing meanwhile."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.collector.store.schema import decode_raw
from agent.proto import collector_pb2
from agent.wire import columns


def raw_points(db_path: str | Path, metric: str | None, host: str = "") -> list[tuple[str, collector_pb2.Point]]:
    """Every raw point of `metric` (None: of every metric) in a store file, read-only (a
    running collector may keep writing meanwhile, WAL lets both proceed)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'raw_*'")]
        out = []
        for table in sorted(tables):
            sql, args = f"SELECT host, points FROM {table}", []
            if host:
                sql, args = sql + " WHERE host = ?", [host]
            for h, blob in db.execute(sql + " ORDER BY arrival", args):
                out += [(h, columns.to_point(row, collector_pb2.Point())) for row in decode_raw(blob).rows()
                        if metric is None or row[0] == metric]
        return out
    finally:
        db.close()
