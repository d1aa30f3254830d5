"""Agents' points as Prometheus remote-write 1.0 time series (docs/exposition.md, "Aggregates").

One agent point (a series over one interval: count, sum, min, max, last) becomes five
samples at the interval's start, in five series named by `agent.exposition`:
`egs_<metric>` the last value (what a scrape of the agent would have seen), and
`egs_<metric>_min`, `_max`, `_sum`, `_count` the rest of the interval's aggregate (those
`[store] remote_aggregates` names: fewer samples for the engine, less kept). Labels:
the point's, `host`, and the agent's configured labels (`exposition.series_labels`).

The request is encoded here by hand (field numbers of prompb's WriteRequest, TimeSeries,
Label, Sample; proto/agent/proto/prometheus_remote.proto is the same message, which the tests
decode with): a batch's series table repeats every second, so each series' encoded labels are
kept (`Encoder`, bounded) and a point costs five small byte joins, not five messages built
field by field. The body is snappy-compressed (block format) by the sender.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from agent.exposition import AGGREGATE_SUFFIXES, series_labels, series_name
from agent.proto import collector_pb2
from agent.wire.columns import Points

# The samples of a point: (name suffix, the Points column it comes from); the last value always,
# the aggregates that `[store] remote_aggregates` keeps (all four by default).
AGGREGATES = ("min", "max", "sum", "count")


def stats(aggregates=AGGREGATES) -> tuple[tuple[str, str], ...]:
    unknown = set(aggregates) - set(AGGREGATES)
    if unknown:
        raise ValueError(f"unknown aggregates {sorted(unknown)} (known: {', '.join(AGGREGATES)})")
    return (("", "last"),) + tuple((AGGREGATE_SUFFIXES[a], a) for a in AGGREGATES if a in aggregates)
_DOUBLE = struct.Struct("<d").pack


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_labels(labels: dict[str, str]) -> bytes:
    """A TimeSeries' labels field (1), sorted by name; empty values left out (Prometheus
    reads an empty label as an absent one)."""
    return b"".join(_field(0x0A, _field(0x0A, k.encode()) + _field(0x12, v.encode()))
                    for k, v in sorted(labels.items()) if v != "")


# A sample is 0x09 + double + 0x10 + varint(ms): 16 bytes for every millisecond timestamp
# from 1971 to 2109 (a 6-byte varint), which is what `Series.prefix` is framed for.
SAMPLE_BYTES = 16


class Series(NamedTuple):
    """One remote-write series: its name and labels (for messages), and the bytes of a
    one-sample TimeSeries up to the sample's value (for a SAMPLE_BYTES sample). A collector
    keeps one per series of every agent (~100k for 1,000 hosts): only these three fields."""
    name: str
    labels: dict[str, str]
    prefix: bytes

    @classmethod
    def of(cls, name: str, labels: dict[str, str]) -> "Series":
        encoded = encode_labels({"__name__": name, **labels})
        body_len = len(encoded) + 2 + SAMPLE_BYTES
        return cls(name, labels, b"\x0a" + varint(body_len) + encoded + b"\x12" + bytes((SAMPLE_BYTES,)) + b"\x09")

    def timeseries(self, value: float, stamp: bytes) -> bytes:
        """This series with one sample, framed as a WriteRequest's field 1."""
        if len(stamp) + 9 == SAMPLE_BYTES:
            return self.prefix + _DOUBLE(value) + stamp
        # prefix = 0x0a + varint(body length) + labels + 0x12 0x10 0x09: the varint's length h
        # is the one for which the body (labels + 2 + SAMPLE_BYTES) takes h bytes to say.
        h = next(h for h in range(1, 6) if len(varint(len(self.prefix) - 4 - h + 2 + SAMPLE_BYTES)) == h)
        encoded = self.prefix[1 + h:-3]
        sample = b"\x09" + _DOUBLE(value) + stamp
        body = encoded + b"\x12" + varint(len(sample)) + sample
        return b"\x0a" + varint(len(body)) + body


class Encoder:
    """Encodes batches' points as TimeSeries messages, remembering each series table's labels."""

    KEPT = 4096  # distinct (host, agent labels, series table) remembered; cleared past it

    def __init__(self, aggregates=AGGREGATES) -> None:
        self.stats = stats(aggregates)
        self._tables: dict[tuple, tuple[tuple[Series, ...], ...]] = {}

    def _series(self, batch: collector_pb2.Batch, points: Points) -> tuple[tuple[Series, ...], ...]:
        key = (batch.host_id, tuple(sorted(batch.labels.items())), batch.series_table)
        found = self._tables.get(key)
        if found is None:
            agent_labels = dict(batch.labels)
            per_point = []
            made: dict[tuple, tuple[Series, ...]] = {}  # a table may name a series more than once
            for metric, point_labels in zip(points.layout.metrics, points.layout.labels):
                series_key = (metric, tuple(sorted(point_labels.items())))
                series = made.get(series_key)
                if series is None:
                    labels = series_labels(point_labels, agent_labels, host=batch.host_id)
                    base = series_name(metric)
                    series = made[series_key] = tuple(Series.of(base + suffix, labels) for suffix, _ in self.stats)
                per_point.append(series)
            found = tuple(per_point)
            if len(self._tables) >= self.KEPT:
                self._tables.clear()
            self._tables[key] = found
        return found

    def timeseries(self, batch: collector_pb2.Batch, points: Points) -> tuple[list[bytes], list[Series]]:
        """The batch's points as encoded TimeSeries messages (each already framed as a
        WriteRequest's field 1, so a request body is their concatenation), and the series
        of each, in the same order."""
        table = self._series(batch, points)
        out: list[bytes] = []
        names: list[Series] = []
        stamps: dict[float, bytes] = {}
        columns = [getattr(points, field) for _, field in self.stats]
        for i, series in enumerate(table):
            ts = points.ts[i]
            stamp = stamps.get(ts)
            if stamp is None:
                stamp = stamps[ts] = b"\x10" + varint(round(ts * 1000))
            if len(stamp) + 9 == SAMPLE_BYTES:  # the usual case, inlined
                for j, s in enumerate(series):
                    out.append(s.prefix + _DOUBLE(float(columns[j][i])) + stamp)
            else:
                for j, s in enumerate(series):
                    out.append(s.timeseries(float(columns[j][i]), stamp))
            names.extend(series)
        return out, names
