"""How long the SQLite store keeps what: a partition is dropped whole once all of it is past
its retention; events and recordings are deleted by age."""
from __future__ import annotations

from agent.collector.store.ledger import delete_old
from agent.collector.store.schema import PARTITION_SECONDS, R10, R60, RAW, Partitions

DEFAULT_RETENTION = {RAW: 3600.0, R10: 2 * 86400.0, R60: 30 * 86400.0, "events": 90 * 86400.0}  # seconds


def drop_expired(partitions: Partitions, retention: dict[str, float], now: float) -> dict:
    """Drop partitions wholly older than their retention; delete old events."""
    dropped = []
    for name in sorted(partitions.names):
        kind, _, number = name.partition("_")
        width = PARTITION_SECONDS[kind]
        if (int(number) + 1) * width < now - retention[kind]:
            partitions.drop(name)
            dropped.append(name)
    events = delete_old(partitions.db, now - retention["events"])
    return {"dropped_tables": dropped, "deleted_events": events}
