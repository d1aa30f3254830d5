"""What every store keeps about the batches themselves, beside their points: per (host, epoch)
the highest sequence stored (exactly-once), each agent's latest identity and status, events
and recordings. The SQLite store keeps these in its one file; the remote-write store, whose
engine holds only time series, in a small SQLite file of its own (`ledger.db`), committed
after the engine accepted the points.
"""
from __future__ import annotations

import sqlite3

from agent.collector.store.schema import labels_text
from agent.proto import collector_pb2


class Entries:
    """One group's ledger rows, gathered while its batches are looked at."""

    def __init__(self) -> None:
        self.seqs: dict[tuple[str, int], int] = {}
        self.latest: dict[str, collector_pb2.Batch] = {}
        self.events: list[tuple] = []
        self.recordings: list[tuple] = []

    def add(self, batch: collector_pb2.Batch, received: float) -> None:
        host = batch.host_id
        self.seqs[(host, batch.epoch)] = batch.seq
        self.latest[host] = batch
        for e in batch.events:
            self.events.append((host, e.ts, e.kind, labels_text(e.labels), e.data_json or "{}", received))
        if batch.recording_json:
            self.recordings.append((host, received, batch.recording_json))

    def write(self, db: sqlite3.Connection, received: float) -> None:
        """Inside the caller's transaction."""
        if self.events:
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", self.events)
        if self.recordings:
            db.executemany("INSERT INTO recordings VALUES (?,?,?)", self.recordings)
        db.executemany("INSERT INTO epochs VALUES (?,?,?,?) ON CONFLICT(host, epoch) DO UPDATE SET "
                       "max_seq=max(max_seq, excluded.max_seq), updated=excluded.updated",
                       [(h, e, s, received) for (h, e), s in self.seqs.items()])
        db.executemany(
            "INSERT INTO agents VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(host) DO UPDATE SET "
            "labels=excluded.labels, epoch=excluded.epoch, last_seq=excluded.last_seq, last_seen=excluded.last_seen, "
            "backlog_records=excluded.backlog_records, backlog_bytes=excluded.backlog_bytes, dropped=excluded.dropped, "
            "health=excluded.health, nic=coalesce(excluded.nic, nic)",
            [(h, labels_text(b.labels), b.epoch, b.seq, received, received, b.status.spool_backlog_records,
              b.status.spool_backlog_bytes, b.status.dropped_records, b.status.health, b.nic_json or None)
             for h, b in self.latest.items()])


def delete_old(db: sqlite3.Connection, cutoff: float) -> int:
    """Events and recordings older than `cutoff`; returns the events deleted."""
    events = db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount
    db.execute("DELETE FROM recordings WHERE received < ?", (cutoff,))
    return events
