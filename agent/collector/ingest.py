"""What the collector accepts from an agent: every field of a Batch checked against what the
store, the queries and the consumers can hold, before the batch joins a commit group.

Why here and not in the store: a group commit is one transaction for many hosts' batches, so
anything the store would fail on ("poison": a negative timestamp names a partition table that
cannot exist, a sequence number past SQLite's 64-bit INTEGER, a NaN event time) must be
refused for its sender alone, with the rejection trailer, before it can fail the bystanders'
commit. `check` raises `Refused` naming the field; the Publish stream answers
INVALID_ARGUMENT and names the batch, and the agent drops and counts it.

The bounds (also in docs/collector.md, "Bounds"):
- host_id: 1..253 characters (a DNS name), no control characters;
- epoch, seq: 1 .. 2^63-1 (SQLite's INTEGER); status counters: 0 .. 2^63-1;
- every timestamp (points, events, `created` when set) finite and within
  [collector's clock - ingest.max_age, collector's clock + ingest.max_future];
- points: at most ingest.max_points, each count <= 10^9, values finite
  (`columns.read`), series table within `columns.LAYOUT_BOUNDS`;
- labels (batch and events): at most 64 pairs, keys <= 128 and values <= 1,024 characters;
- events: at most 1,000 per batch, kind 1..64 characters, data_json a JSON object <= 64 KiB;
- nic_json, recording_json: empty or a JSON object (nic_json <= 256 KiB; a recording is
  bounded by the message size alone).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from agent.proto import collector_pb2
from agent.wire import columns
from agent.wire.columns import LABEL_KEY_MAX, LABEL_VALUE_MAX, LABELS_MAX, Points

INT64_MAX = (1 << 63) - 1
HOST_ID_MAX = 253
EVENTS_MAX, EVENT_KIND_MAX, EVENT_DATA_MAX = 1000, 64, 64 << 10
NIC_JSON_MAX = 256 << 10
COUNT_MAX = 1_000_000_000  # reads in one point's interval; keeps rollup sums exact and in uint64


class Refused(ValueError):
    """A batch the collector will not store, and why (the text names the field)."""


@dataclass(frozen=True)
class Limits:
    """The configurable part of the bounds (`[ingest]`)."""
    max_points: int = 100_000
    max_future: float = 600.0
    max_age: float = 30 * 86400.0


def check(batch: collector_pb2.Batch, now: float, limits: Limits = Limits()) -> Points:
    """The batch's points when it can be stored as is; `Refused` saying why not."""
    _check_identity(batch)
    earliest, latest = now - limits.max_age, now + limits.max_future

    def in_window(what: str, ts: float) -> None:
        if not math.isfinite(ts):
            raise Refused(f"{what} is not a finite number ({ts})")
        if not earliest <= ts <= latest:
            raise Refused(f"{what} {ts:.3f} is outside the accepted window "
                          f"[{earliest:.0f}, {latest:.0f}] (collector clock {now:.0f}, "
                          f"ingest.max_age {limits.max_age:g} s, ingest.max_future {limits.max_future:g} s)")

    if batch.created:  # 0: not given (proto3 default)
        in_window("created", batch.created)
    if len(batch.ts) > limits.max_points:
        raise Refused(f"batch has {len(batch.ts)} points, over ingest.max_points ({limits.max_points})")
    try:
        points = columns.read(batch)
    except ValueError as e:
        raise Refused(str(e)) from None
    if points.ts:
        lo, hi = min(points.ts), max(points.ts)
        if lo < earliest or hi > latest:
            i = points.ts.index(lo if lo < earliest else hi)
            in_window(f"point {i} ({points.layout.metrics[i]}) ts", points.ts[i])
        if max(points.count) > COUNT_MAX:
            i = points.count.index(max(points.count))
            raise Refused(f"point {i} ({points.layout.metrics[i]}) has count {points.count[i]}, over {COUNT_MAX}")
    _check_labels("labels", batch.labels)
    _check_status(batch.status)
    if len(batch.events) > EVENTS_MAX:
        raise Refused(f"batch has {len(batch.events)} events, over {EVENTS_MAX}")
    for i, e in enumerate(batch.events):
        if not 0 < len(e.kind) <= EVENT_KIND_MAX:
            raise Refused(f"event {i}: kind must be 1..{EVENT_KIND_MAX} characters")
        in_window(f"event {i} ({e.kind}) ts", e.ts)
        _check_labels(f"event {i} ({e.kind}) labels", e.labels)
        if e.data_json:
            _check_object(f"event {i} ({e.kind}) data_json", e.data_json, EVENT_DATA_MAX)
    if batch.nic_json:
        _check_object("nic_json", batch.nic_json, NIC_JSON_MAX)
    if batch.recording_json:
        _check_object("recording_json", batch.recording_json, None)
    return points


def _check_identity(batch: collector_pb2.Batch) -> None:
    if not batch.host_id:
        raise Refused("host_id is empty")
    if len(batch.host_id) > HOST_ID_MAX or not batch.host_id.isprintable():
        raise Refused(f"host_id must be 1..{HOST_ID_MAX} printable characters")
    if not 0 < batch.epoch <= INT64_MAX or not 0 < batch.seq <= INT64_MAX:
        raise Refused(f"epoch and seq must be > 0 and < 2^63 (got {batch.epoch}/{batch.seq})")


def _check_labels(what: str, labels) -> None:
    if len(labels) > LABELS_MAX:
        raise Refused(f"{what}: {len(labels)} pairs, over {LABELS_MAX}")
    for k, v in labels.items():
        if not 0 < len(k) <= LABEL_KEY_MAX or len(v) > LABEL_VALUE_MAX:
            raise Refused(f"{what}: keys must be 1..{LABEL_KEY_MAX} characters and values "
                          f"at most {LABEL_VALUE_MAX} ({k[:40]!r})")


def _check_status(status: collector_pb2.AgentStatus) -> None:
    for name in ("spool_backlog_records", "spool_backlog_bytes", "dropped_records"):
        if getattr(status, name) > INT64_MAX:
            raise Refused(f"status.{name} is over 2^63-1")
    if len(status.health) > LABEL_VALUE_MAX:
        raise Refused(f"status.health is over {LABEL_VALUE_MAX} characters")


def _no_constant(name: str):
    raise ValueError(name)


def _check_object(what: str, text: str, most: int | None) -> None:
    if most is not None and len(text) > most:
        raise Refused(f"{what} is {len(text)} characters, over {most}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: "[[[[...": nested past Python's stack
        raise Refused(f"{what} is not JSON (NaN and Infinity are not JSON either)") from None
    if not isinstance(value, dict):
        raise Refused(f"{what} is not a JSON object")
