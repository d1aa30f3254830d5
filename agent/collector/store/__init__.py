"""Where the collector keeps what agents send: the `Store` contract.

The collector reaches its store through this contract alone: the committer writes through
`StoreWriter` (in the collector, a SQLite store in a process of its own,
agent/collector/writer.py), the consumer services read through `StoreReader`. A second engine
(a remote time-series database) implements the same two halves, and ingest, subscriptions
and the consumer services stay as they are.

Two stores implement it: the embedded SQLite store (the default) and the remote-write store
(`remote_write`: points to a Prometheus-compatible engine, queries over its HTTP API: `engine`
the HTTP client, `promwrite` the encoding, `promql` the queries, `ledger` what both keep
beside the points).

The SQLite engine, one module a job:
- `sqlite`: `SQLiteStore`, the write transaction (raw batches, exactly-once, agents, events);
- `schema`: the file's format (tables, time partitions, the raw record);
- `rollup`: the 10 s and 1 min rollups and how a crash neither loses nor double-counts them;
- `wal`: the writer's connections and the thread that checkpoints the write-ahead log;
- `retention`: what is kept how long;
- `reader`: `SQLiteReader`, queries over the file from a connection of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from agent.proto import collector_pb2
from agent.wire.columns import Points


@dataclass
class WriteResult:
    """What `write` did with one batch."""
    duplicate: bool
    points: int = 0
    series: tuple[int, ...] | None = None  # the series id of each point, in order (None for a duplicate)


@dataclass
class StoredSeries:
    host: str
    metric: str
    labels: dict[str, str]
    points: list[tuple[float, int, float, float, float, float]]  # ts, count, sum, min, max, last


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
    max_name: int = 253             # characters of the metric and the host a query names

    def names(self, metric: str, host: str) -> None:
        """ValueError unless the metric is named and both names are within `max_name`."""
        if not 0 < len(metric) <= self.max_name or len(host) > self.max_name:
            raise ValueError(f"metric is required; metric and host are at most {self.max_name} characters "
                             f"(got {len(metric)} and {len(host)})")

    def window(self, start: float, end: float, now: float) -> tuple[float, float]:
        """The range a query covers (`end` 0: now; `start` 0: an hour before `end`);
        ValueError for one that no store looks at."""
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError("start and end must be finite unix seconds")
        end = end or now
        start = start or end - 3600
        if not 0 <= start <= end <= now + self.max_future:
            raise ValueError(f"the range must satisfy 0 <= start <= end <= now + {self.max_future:g} s "
                             f"(got start {start:.0f}, end {end:.0f}, now {now:.0f})")
        return start, end


class QueryTooLarge(Exception):
    """A query that would pass one of its bounds while running (RESOURCE_EXHAUSTED)."""


class StoreRefused(Exception):
    """The store cannot hold this batch, however often it is sent, while it can hold others:
    the sender's batch is refused (INVALID_ARGUMENT and the rejection trailer; the agent
    drops it) rather than retried forever."""


class StoreConfigError(ValueError):
    """The store cannot start as configured (an engine refusing the collector's URL or
    credentials): the collector says so and exits 1."""


class StoreUnavailable(Exception):
    """The store cannot take anything now (a remote engine down or refusing the collector):
    the whole group is refused for now, not batch by batch; agents send it again later."""


class StoreWriter(Protocol):
    """The writing half, called from one thread at a time."""

    def write(self, batches: list[collector_pb2.Batch], received: float,
              wire: list[bytes] | None = None, points: list[Points] | None = None) -> list[WriteResult]:
        """Store a group of batches (checked already by agent/collector/ingest.py) and say
        what became of each, in order. `received`: the collector's clock at arrival;
        `wire`: their bytes as received; `points`: their columns as `columns.read` gave them
        at the check (when None, the store reads them).

        - Durable on return: a batch reported stored is acknowledged to its agent, which then
          forgets it; it must survive a crash of the collector from then on.
        - Exactly once on (host_id, epoch, seq): a batch whose seq is at or below the highest
          stored for its (host_id, epoch), by an earlier call, earlier in the same group or
          before a restart, is reported `duplicate` and nothing of it is stored again.
          (Unless opened with exactly_once=False: behind the bus, batches come at least once
          and out of order, and the bus and the engine's idempotence see to it.)
        - A stored batch's `series` names each point's (host, metric, labels) by a key that
          stays the same for the store's life; subscriptions keep their queues by it.
        - On an exception no batch of the group counts as stored: none is acknowledged and
          the agents send them again, so whatever part of the group did reach the store must
          not be stored twice then. The caller writes a failed group again batch by batch, and
          refuses (`StoreRefused`) a batch that fails alone while the others are stored; a
          store that knows a batch will never be taken may raise `StoreRefused` itself.
        """
        ...

    def cleanup(self, now: float) -> dict:
        """Drop what is past its retention at `now` (unix seconds); says what was done, with
        "dropped_tables" (a list of names, logged when not empty) at least."""
        ...

    def close(self) -> None:
        """Finish what is pending and let go of the files. Not calling it (a crash) loses
        nothing stored, only work redone at the next start."""
        ...


class StoreReader(Protocol):
    """The reading half: consumer queries, called from several threads at once."""

    def query(self, metric: str, host: str = "", labels: dict | None = None, start: float = 0,
              end: float = 0, resolution: str = "", limit: int = 10000,
              bounds: QueryBounds = QueryBounds()) -> tuple[str, list[StoredSeries]]:
        """The stored history of `metric`: each series of it (of `host` when given) whose
        labels include `labels`, with its points in [start, end] (`bounds.window`), oldest
        first, at most `limit` a series. Returns the resolution answered ("raw", "10s" or
        "1m") and the series.

        `resolution`: "raw" (also "1s"), "10s", "1m" (also "60s"), or "" for the finest one
        kept over the whole range. A point is (ts, count, sum, min, max, last): at raw
        resolution the agent's own point; in a rollup the bucket's start and, over the points
        in it, their total count and sum, the least min, the greatest max and the last value
        of the newest one.

        ValueError before any work for a range `bounds.window` refuses, an unknown
        resolution, or a raw range longer than `bounds.max_span`; `QueryTooLarge` as soon as
        the answer would pass `bounds.max_series`, `max_points` or `max_raw_batches`."""
        ...

    def agents(self) -> list[dict]:
        """Every host ever stored, by host: "host", "labels" (a dict), "epoch", "last_seq",
        "first_seen", "last_seen", "backlog_records", "backlog_bytes", "dropped", "health"
        and "nic" (its JSON parsed, {"invalid": why} when it does not parse, or None), as of
        its latest stored batch."""
        ...

    def close(self) -> None:
        ...


class Store(StoreWriter, StoreReader, Protocol):
    """Both halves in one object."""


class ReadsThroughReader:
    """For a store object that also answers queries (tests, tools): `query`, `agents` and
    `events` go to its `reader`, a `StoreReader` it opens when first used (the collector's
    writer process never reads)."""

    reader: StoreReader

    def query(self, *args, **kwargs) -> tuple[str, list[StoredSeries]]:
        return self.reader.query(*args, **kwargs)

    def agents(self) -> list[dict]:
        return self.reader.agents()

    def events(self, *args, **kwargs) -> list[dict]:
        return self.reader.events(*args, **kwargs)
