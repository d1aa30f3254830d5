"""Fan-out to consumers: filters, the latest-value snapshot, bounded coalescing queues.

Runs on the collector's event loop. After each commit the committer hands the stored
batches to `Hub.publish`, which keeps each host's recent batches (for the initial snapshot
of new subscribers) and offers each matching point to every subscription.

A subscription never blocks ingest or the other subscriptions: its queue is a dict keyed by
series, so a consumer that falls behind holds at most one pending value per series — a newer
value replaces the older one and `coalesced` counts each replacement. The number of distinct
series pending is bounded too (`max_pending`); past it the oldest pending value is dropped
and counted in `dropped`. Events are not coalesced (each transition matters) but are
bounded the same way. Both counts travel with every update the consumer reads.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Iterable

from agent.proto import collector_pb2
from agent.wire.columns import Points, to_point

Key = int  # a series id: one per (host, metric, labels)


class Subscription:
    def __init__(self, request: collector_pb2.SubscribeRequest, max_pending: int):
        self.hosts = frozenset(request.hosts)
        self.labels = dict(request.labels)
        self.metrics = frozenset(request.metrics)
        kinds = list(request.event_kinds)
        self.no_events = kinds == ["-"]
        self.event_kinds = frozenset(k for k in kinds if k != "-")
        self.max_pending = max_pending
        self.pending: collections.OrderedDict[Key, tuple] = collections.OrderedDict()
        self.events: collections.deque = collections.deque()
        self.coalesced = 0
        self.dropped = 0
        self.delivered = 0
        self.wake = asyncio.Event()
        # Which positions of a batch layout (its tuple of series ids, the same object for
        # every batch of a host while its layout stays) pass the metric filter: worked out
        # once per layout, not once per point, since most consumers want a few metrics.
        self._positions: dict[tuple, list[int]] = {}

    # --- filters -------------------------------------------------------------------------

    def wants_host(self, host: str) -> bool:
        return not self.hosts or host in self.hosts

    def _labels_match(self, batch_labels, point_labels) -> bool:
        for k, v in self.labels.items():
            got = point_labels.get(k)
            if got is None:
                got = batch_labels.get(k)
            if got != v:
                return False
        return True

    def wants_event(self, event) -> bool:
        return not self.no_events and (not self.event_kinds or event.kind in self.event_kinds)

    # --- the queue -----------------------------------------------------------------------

    def _wanted_positions(self, series: tuple, metrics: tuple[str, ...]) -> list[int]:
        positions = self._positions.get(series)
        if positions is None:
            if len(self._positions) >= 100_000:  # layouts of hosts long gone
                self._positions.clear()
            wanted = self.metrics
            positions = self._positions[series] = [
                i for i, m in enumerate(metrics) if not wanted or m in wanted]
        return positions

    def offer(self, host: str, batch, points: Points, series: tuple[Key, ...], received: float) -> None:
        if not self.wants_host(host):
            return
        check_labels = bool(self.labels)
        pending = self.pending
        added = False
        metrics, labels = points.layout
        for i in self._wanted_positions(series, metrics):
            if check_labels and not self._labels_match(batch.labels, labels[i]):
                continue
            key = series[i]
            if key in pending:
                self.coalesced += 1
                del pending[key]  # re-insert at the end: the queue stays in arrival order
            elif len(pending) >= self.max_pending:
                pending.popitem(last=False)
                self.dropped += 1
            pending[key] = (host, points.row(i), received)
            added = True
        for event in batch.events:
            if self.wants_event(event) and (not check_labels or self._labels_match(batch.labels, event.labels)):
                if len(self.events) >= self.max_pending:
                    self.events.popleft()
                    self.dropped += 1
                self.events.append((host, event))
                added = True
        if added:
            self.wake.set()

    def take(self, limit: int) -> tuple[list[tuple], list[tuple]]:
        samples = []
        while self.pending and len(samples) < limit:
            samples.append(self.pending.popitem(last=False)[1])
        events = []
        while self.events and len(events) < limit:
            events.append(self.events.popleft())
        if not self.pending and not self.events:
            self.wake.clear()
        self.delivered += len(samples) + len(events)
        return samples, events


class Hub:
    """Subscriptions, and the recent batches of every host for the initial snapshot.

    The snapshot is built from each host's last `RECENT` batches with points rather than
    from a per-series map updated on every point: an agent sends all its series every
    second (split over a few batches when large), so those batches hold the latest value
    of each, and keeping them costs O(1) per batch instead of O(points) on the ingest path.
    """

    RECENT = 4

    def __init__(self) -> None:
        self.subscriptions: set[Subscription] = set()
        # host -> deque of (batch labels, Points, series ids, received)
        self.recent: dict[str, collections.deque] = {}
        # Called before a subscription is added: a feed that holds batches back while no one
        # subscribes (agent/collector/bus.py's Fanout) publishes them then.
        self.before_add = None

    def add(self, request, max_pending: int) -> Subscription:
        if self.before_add is not None:
            self.before_add()
        sub = Subscription(request, max_pending)
        self.subscriptions.add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    def publish(self, stored: Iterable[tuple], received: float) -> None:
        """Stored (not duplicate) batches in commit order, each with its points (as
        `columns.read` gave them) and their series ids (the store's; any key naming a
        series once will do)."""
        for batch, points, series in stored:
            host = batch.host_id
            if len(points):
                recent = self.recent.get(host)
                if recent is None:
                    recent = self.recent[host] = collections.deque(maxlen=self.RECENT)
                recent.append((dict(batch.labels), points, series, received))
            if self.subscriptions:
                series = tuple(series)  # the store's own tuple already: no copy
                for sub in self.subscriptions:
                    sub.offer(host, batch, points, series, received)

    def snapshot(self, sub: Subscription) -> list[tuple]:
        out = []
        for host, recent in self.recent.items():
            if not sub.wants_host(host):
                continue
            latest: dict[Key, tuple] = {}
            for _, points, series, received in recent:
                for i, (key, ts) in enumerate(zip(series, points.ts)):
                    old = latest.get(key)
                    if old is None or old[1].ts <= ts:
                        latest[key] = (host, points.row(i), received)
            labels = recent[-1][0]
            for host_, row, received in latest.values():
                if sub.metrics and row.metric not in sub.metrics:
                    continue
                if sub.labels and not sub._labels_match(labels, row.labels):
                    continue
                out.append((host_, row, received))
        return out

    def stats(self) -> dict:
        return {"subscriptions": len(self.subscriptions), "hosts": len(self.recent),
                "coalesced": sum(s.coalesced for s in self.subscriptions),
                "dropped": sum(s.dropped for s in self.subscriptions)}


def make_update(samples: list[tuple], events: list[tuple], sub: Subscription, **flags) -> collector_pb2.Update:
    update = collector_pb2.Update(sent=time.time(), coalesced=sub.coalesced, dropped=sub.dropped, **flags)
    for host, row, received in samples:
        to_point(row, update.samples.add(host=host, received=received).point)
    for host, event in events:
        e = update.events.add(host=host)
        e.event.CopyFrom(event)
    return update
