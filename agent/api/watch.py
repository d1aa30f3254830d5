"""Fan-out of live updates to `Watch` clients, each with a bounded, coalescing queue.

The daemon publishes once per tick; each subscriber takes an update when its requested
interval has passed. A client that reads slower than that must never make the daemon hold
more and more memory for it, nor slow the daemon or other clients down. So each subscriber
has at most `queue_size` pending updates; when a new one arrives at a full queue, the oldest
pending update is merged into the next one: values are snapshots, so the newer ones simply
win, and events are carried over (up to `MAX_EVENTS` per update; beyond that they are
counted in `events_dropped`, never silently lost). `coalesced` counts the merges. The
publisher never blocks on a subscriber.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable

MAX_EVENTS = 256  # per pending update; a burst larger than this is counted, not queued


@dataclass
class Update:
    ts: float
    points: list[tuple[str, dict, float | None]]
    events: list[str] = field(default_factory=list)
    status_json: str = ""
    history: dict[tuple, list] = field(default_factory=dict)  # (metric, labels key) -> values
    coalesced: int = 0
    events_dropped: int = 0


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class Subscriber:
    def __init__(self, hub: "WatchHub", interval: float, metrics: set[str], labels: dict[str, str],
                 history_seconds: int, include_status: bool):
        self.hub = hub
        self.interval = max(1.0, float(interval or 0))
        self.metrics, self.labels = metrics, labels
        self.history_seconds = history_seconds
        self.include_status = include_status
        self.queue: collections.deque[Update] = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self.last_sent: float | None = None
        self.coalesced = 0
        self.events_dropped = 0
        self.pending_events: list[str] = []  # events between this client's cadence points

    def wants(self, metric: str, labels: dict[str, str]) -> bool:
        return (not self.metrics or metric in self.metrics) and _matches(labels, self.labels)

    def offer(self, update: Update) -> None:
        with self.cond:
            if self.closed:
                return
            self.queue.append(update)
            while len(self.queue) > max(1, self.hub.queue_size):
                oldest = self.queue.popleft()
                newer = self.queue[0]
                events = oldest.events + newer.events
                if len(events) > MAX_EVENTS:
                    self.events_dropped += len(events) - MAX_EVENTS
                    events = events[-MAX_EVENTS:]
                newer.events = events
                if oldest.history and not newer.history:
                    newer.history = oldest.history
                self.coalesced += 1
            self.cond.notify()

    def get(self, timeout: float) -> Update | None:
        """The next update, or None after `timeout` or once closed."""
        with self.cond:
            if not self.queue and not self.closed:
                self.cond.wait(timeout)
            if not self.queue:
                return None
            update = self.queue.popleft()
            update.coalesced, update.events_dropped = self.coalesced, self.events_dropped
            return update

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class WatchHub:
    def __init__(self, windows, simulated: bool = False, queue_size: int = 16, max_subscribers: int = 8):
        self.windows = windows
        self.simulated = simulated
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._last_published: float | None = None
        self._last_status = ""

    def subscribe(self, interval: float = 1.0, metrics=(), labels=None, history_seconds: int = 0,
                  include_status: bool = False) -> Subscriber | None:
        """A new subscriber, or None when `max_subscribers` are already watching."""
        sub = Subscriber(self, interval, set(metrics), dict(labels or {}), int(history_seconds), include_status)
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                return None
            last_published, last_status = self._last_published, self._last_status
        # The first update goes out at once, from the last published state, so a new watcher
        # sees figures immediately instead of after the next tick. It is queued before the
        # subscriber is listed, so the publisher never touches it at the same time.
        if last_published is not None:
            self._offer(sub, last_published, self.windows.latest_all(), last_status)
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                return None
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.close()
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, now: float, events, status_json: str | Callable[[], str]) -> None:
        """Offer the latest values (and `events`) to every subscriber due an update.

        `status_json` is the Status document, or a function returning it: then it is only
        produced when a subscriber that asked for it (`include_status`) gets an update."""
        with self._lock:
            subs = list(self._subs)
            self._last_published, self._last_status = now, status_json
        if not subs:
            return
        latest = self.windows.latest_all()
        event_lines = [e.to_json() for e in events]
        for sub in subs:
            sub.pending_events += event_lines
            if len(sub.pending_events) > MAX_EVENTS:
                sub.events_dropped += len(sub.pending_events) - MAX_EVENTS
                sub.pending_events = sub.pending_events[-MAX_EVENTS:]
            if sub.last_sent is not None and now - sub.last_sent < sub.interval - 0.05:
                continue
            self._offer(sub, now, latest, status_json)

    def _offer(self, sub: Subscriber, now: float, latest, status_json: str | Callable[[], str]) -> None:
        points = [(m, labels, v) for m, labels, v, _ in latest if sub.wants(m, labels)]
        if not sub.include_status:
            status_json = ""
        elif callable(status_json):
            status_json = status_json()
        update = Update(now, points, sub.pending_events, status_json)
        sub.pending_events = []
        if sub.last_sent is None and sub.history_seconds:
            update.history = {(m, tuple(sorted(labels.items()))): self.windows.history(m, labels, sub.history_seconds, now)
                              for m, labels, _ in points}
        sub.last_sent = now
        sub.offer(update)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()
