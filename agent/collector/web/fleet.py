"""The fleet as the web pages show it: hosts, their GPUs' latest figures, firing alarms.

One `Fleet` per collector, on its event loop, reading the collector's subscription hub
(agent/collector/subscriptions.py) while at least one page is open:
- figures from the hub's latest batches of each host (`Hub.recent`, what a new subscriber's
  snapshot is made of): every `interval` (1 s) `tick` reads each host's batches that arrived
  since the last tick, only the few columns the fleet page shows (their positions worked out
  once per batch layout). However often a series changes between two ticks it is read once,
  and the ingest path pays nothing per point for the web (a point-by-point subscription cost
  the collector ~20 % of a core more at 1,000 hosts x 8 GPUs; docs/benchmarks.md);
- alarm and health events from a subscription of its own (no points), bounded like any
  consumer's queue.
Each tick then tells every open page which hosts changed; a page that has not finished
reading its last update gets the union of changes (coalesced), never a backlog. With no page
open for a minute the subscription is dropped and the collector pays nothing for the web.

Alarms: the latest transition of each (host, rule, labels), first from the store's events
(`StoreReader.events`, both stores), then from the events the subscription delivers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from agent.proto import collector_pb2

log = logging.getLogger("egs-collector.web")

# What the fleet page shows of each GPU, in this order (the heat map's choices).
GPU_FIGURES = ("gpu_temperature_celsius", "gpu_utilization_percent", "gpu_memory_used_percent", "gpu_power_watts")
HEALTH = ("gpu_health_state", "gpu_lost")
HOST_FIGURES = ("stream_spool_backlog_records", "stream_dropped_total")
WATCHED = GPU_FIGURES + HEALTH + HOST_FIGURES
HEALTH_STATES = ("ok", "degraded", "failed", "lost")  # gpu_health_state's values (agent/sources/health.py)
ALARM_HISTORY_S = 24 * 3600.0  # alarms read from the store at start, and "recently resolved"
IDLE_DROP_S = 60.0  # no page open this long: the subscription goes
MAX_EVENTS = 100_000  # events the fleet's subscription may hold between two ticks
NO_POINTS = "-"  # a metric name no series has: the fleet's subscription carries events only


def gpu_state(values: dict[str, float], hot_celsius: float) -> str:
    """lost | failed | degraded | hot | ok, the gravest first."""
    health = values.get("gpu_health_state")
    if values.get("gpu_lost") == 1 or health == 3:
        return "lost"
    if health == 2:
        return "failed"
    if health == 1:
        return "degraded"
    temp = values.get("gpu_temperature_celsius")
    if temp is not None and temp >= hot_celsius:
        return "hot"
    return "ok"


class Host:
    __slots__ = ("name", "labels", "gpus", "figures", "last_seen", "row", "json", "seen", "_positions", "_fixed")

    def __init__(self, name: str):
        self.name = name
        self.labels: dict[str, str] = {}
        self.gpus: dict[str, dict[str, float]] = {}  # gpu label -> metric -> last value
        self.figures: dict[str, float] = {}  # host-level metrics
        self.last_seen = 0.0  # the collector's clock when its latest point was stored
        self.row: dict[str, Any] = {}  # the store's agents() row
        self.json: str | None = None  # this host's view, serialized once per change
        self.seen = None  # the Points of the newest hub batch read
        self._positions: dict[int, tuple] = {}  # id(layout) -> (layout, [(i, gpu or None, metric)])
        self._fixed: tuple = (None, "")  # (what it was made of, the JSON of the fields that seldom change)

    def positions(self, layout) -> list[tuple[int, str | None, str]]:
        """Where the watched figures sit in batches of this layout (worked out once per layout)."""
        found = self._positions.get(id(layout))
        if found is None or found[0] is not layout:
            if len(self._positions) > 16:  # layouts this host no longer sends
                self._positions.clear()
            wanted = [(i, labels.get("gpu"), metric) for i, (metric, labels) in enumerate(zip(*layout))
                      if metric in WATCHED]
            found = self._positions[id(layout)] = (layout, wanted)
        return found[1]

    def read(self, entries) -> None:
        """Fold the hub's batches (labels, Points, series, received), oldest first."""
        for labels, points, _, received in entries:
            last = points.last
            gpus, figures = self.gpus, self.figures
            for i, gpu, metric in self.positions(points.layout):
                if gpu is None:
                    figures[metric] = last[i]
                else:
                    values = gpus.get(gpu)
                    if values is None:
                        values = gpus[gpu] = {}
                    values[metric] = last[i]
            if received > self.last_seen:
                self.last_seen = received
            if labels and not self.row:
                self.labels = labels


class Page:
    """One open page's live feed: what changed since it last read (coalesced)."""

    def __init__(self, host: str | None):
        self.host = host  # a host page follows one host's every series too
        self.dirty: set[str] = set()
        self.alarms = True  # the alarm list changed
        self.coalesced = 0
        self.wake = asyncio.Event()
        self.sub = None  # the host page's own hub subscription

    def mark(self, hosts: set[str], alarms: bool) -> None:
        if hosts or alarms:
            self.coalesced += len(self.dirty & hosts)
            self.dirty |= hosts
            self.alarms = self.alarms or alarms
            self.wake.set()


class Fleet:
    def __init__(self, store: Any, hub: Any, connected: Callable[[], set[str]], hot_celsius: float = 70.0,
                 stale_after: float = 10.0, fleet_agents: Callable | None = None, clock=time.time):
        self.store, self.hub = store, hub
        self.connected = connected  # () -> hosts with an open stream to this collector
        self.fleet_agents = fleet_agents  # behind a bus: async () -> every host's record
        self.hot_celsius, self.stale_after, self.clock = hot_celsius, stale_after, clock
        self.hosts: dict[str, Host] = {}
        self.alarms: dict[tuple, dict] = {}  # (host, rule, labels) -> its latest alarm event
        self.pages: set[Page] = set()
        self.sub = None
        self._idle_since = time.monotonic()
        self._was_connected: set[str] = set()
        self._stale: set[str] = set()
        self._rows_at = 0.0
        self._changed: set[str] = set()  # the hosts the last tick changed, and their JSON
        self._changed_bytes: bytes | None = None
        self._ready: asyncio.Future | None = None

    # --- following the hub --------------------------------------------------------------

    async def ensure_live(self) -> None:
        """Subscribe (snapshot first) and read hosts and alarms from the store, once."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        request = collector_pb2.SubscribeRequest(metrics=[NO_POINTS], event_kinds=["alarm", "health"])
        self.sub = self.hub.add(request, MAX_EVENTS)
        self._read_hub()
        loop = asyncio.get_running_loop()
        since = self.clock() - ALARM_HISTORY_S
        try:
            events = await loop.run_in_executor(None, lambda: self.store.events(since, "", ["alarm"]))
        except Exception as e:  # the page still shows what the hub brings
            log.warning("web: cannot read alarm history from the store: %s", e)
            events = []
        for e in events:
            self._alarm(e["host"], e["ts"], e["labels"], e["data"])
        await self.refresh_rows(force=True)

    def _drop(self) -> None:
        if self.sub is not None:
            self.hub.remove(self.sub)
        self.sub, self._ready = None, None
        self.hosts.clear()
        self.alarms.clear()

    async def refresh_rows(self, force: bool = False) -> set[str]:
        """The store's (or the bus') record of every host: labels, backlog, health, NIC; every
        5 s while pages are open."""
        now = time.monotonic()
        if not force and now - self._rows_at < 5.0:
            return set()
        self._rows_at = now
        rows = None
        if self.fleet_agents is not None:
            try:
                rows = await asyncio.wait_for(self.fleet_agents(), 5.0)
            except Exception as e:
                log.warning("web: the bus cannot list agents (%s); using the store", e)
        if rows is None:
            try:
                rows = await asyncio.get_running_loop().run_in_executor(None, self.store.agents)
            except Exception as e:
                log.warning("web: cannot list agents from the store: %s", e)
                return set()
        changed = set()
        for row in rows:
            if not row.get("host"):  # a bus record without one: nothing to show it under
                continue
            h = self._host(row["host"])
            row = {k: row.get(k) for k in ("labels", "epoch", "last_seen", "backlog_records", "backlog_bytes",
                                           "dropped", "health", "connected")}
            if row != h.row:
                h.row, h.labels, h.json = row, dict(row["labels"] or {}), None
                changed.add(h.name)
        return changed

    def _host(self, name: str) -> Host:
        h = self.hosts.get(name)
        if h is None:
            h = self.hosts[name] = Host(name)
        return h

    def _read_hub(self) -> set[str]:
        """Each host's hub batches that arrived since the last read; the hosts that changed."""
        dirty = set()
        for name, recent in list(self.hub.recent.items()):
            if not recent:
                continue
            h = self.hosts.get(name)
            if h is None:
                h = self._host(name)
            newest = recent[-1][1]
            if newest is h.seen:
                continue
            entries = list(recent)
            start = 0
            for k in range(len(entries) - 1, -1, -1):
                if entries[k][1] is h.seen:
                    start = k + 1
                    break
            h.read(entries[start:])
            h.seen, h.json = newest, None
            dirty.add(name)
        return dirty

    def _apply(self, events: list[tuple]) -> tuple[set[str], bool]:
        dirty: set[str] = set()
        alarms = False
        for name, event in events:
            h = self._host(name)
            h.json = None
            dirty.add(name)
            if event.kind == "alarm":
                try:
                    data = json.loads(event.data_json or "{}")
                except ValueError:
                    continue
                self._alarm(name, event.ts, dict(event.labels), data)
                alarms = True
        return dirty, alarms

    def _alarm(self, host: str, ts: float, labels: dict, data: dict) -> None:
        rule = str(data.get("rule", ""))
        own = {k: v for k, v in labels.items() if k in ("gpu", "uuid", "nic")}
        key = (host, rule, tuple(sorted(own.items())))
        old = self.alarms.get(key)
        if old is not None and old["ts"] > ts:
            return
        fired = old["fired"] if old and old["state"] == "alarm" else None
        if data.get("state") == "alarm" and fired is None:
            fired = ts
        self.alarms[key] = {"host": host, "rule": rule, "labels": own, "ts": ts, "state": data.get("state"),
                            "severity": data.get("severity"), "value": data.get("value"),
                            "threshold": data.get("threshold"), "operator": data.get("operator"),
                            "metric": data.get("metric"), "description": data.get("description"),
                            "fired": fired, "resolved": ts if old and old["state"] == "alarm" and data.get("state") != "alarm"
                            else (old or {}).get("resolved")}

    async def tick(self) -> None:
        """Fold what arrived into the model and tell the pages what changed."""
        if not self.pages:
            if self.sub is not None and time.monotonic() - self._idle_since > IDLE_DROP_S:
                self._drop()
            return
        self._idle_since = time.monotonic()
        if self.sub is None:
            return
        _, events = self.sub.take(MAX_EVENTS)
        dirty, alarms = self._apply(events)
        dirty |= self._read_hub()
        dirty |= await self.refresh_rows()
        connected = set(self.connected())
        dirty |= connected ^ self._was_connected
        self._was_connected = connected
        now = self.clock()
        stale = {n for n, h in self.hosts.items() if now - h.last_seen > self.stale_after}
        dirty |= stale ^ self._stale
        self._stale = stale
        for name in dirty:
            if name in self.hosts:
                self.hosts[name].json = None
        self._changed, self._changed_bytes = dirty, None
        for page in self.pages:
            page.mark(dirty, alarms)

    def changed_bytes(self, names: set[str]) -> bytes:
        """`fleet_json(names)` encoded; built once a tick for the pages that are up to date
        (their changes are the tick's), however many they are."""
        if names != self._changed:
            return self.fleet_json(names).encode()
        if self._changed_bytes is None:
            self._changed_bytes = self.fleet_json(names).encode()
        return self._changed_bytes

    # --- the views the pages read ----------------------------------------------------------

    def state_of(self, h: Host) -> str:
        connected = h.name in self.connected() or bool(h.row.get("connected"))
        if not connected:
            return "disconnected"
        return "silent" if self.clock() - h.last_seen > self.stale_after else "connected"

    def host_json(self, h: Host, firing: dict[str, list[str]] | None = None) -> str:
        """The host's row of the fleet page, serialized once per change: the hot path of a
        large fleet (1,000 rows a second), so the GPUs' figures are formatted by hand at
        display precision (one decimal) rather than through json.dumps, ~3x faster."""
        if h.json is None:
            row, hot = h.row, self.hot_celsius
            gpus = []
            for gpu in sorted(h.gpus, key=_gpu_order):
                v = h.gpus[gpu]
                gpus.append(f'[{_quoted(gpu)},"{gpu_state(v, hot)}",{_fig(v.get(GPU_FIGURES[0]))},'
                            f'{_fig(v.get(GPU_FIGURES[1]))},{_fig(v.get(GPU_FIGURES[2]))},{_fig(v.get(GPU_FIGURES[3]))}]')
            if firing is None:
                firing = self.firing_by_host()
            backlog = h.figures.get("stream_spool_backlog_records", row.get("backlog_records"))
            dropped = h.figures.get("stream_dropped_total", row.get("dropped"))
            alarms = firing.get(h.name, [])
            made_of = (row, h.labels, alarms)
            if any(a is not b and a != b for a, b in zip(made_of, h._fixed[0] or (None, None, None))):
                h._fixed = (made_of, json.dumps({"host": h.name, "labels": h.labels, "health": row.get("health") or "",
                                                 "alarms": alarms}, separators=(",", ":")))
            fixed = h._fixed[1]
            h.json = (f'{fixed[:-1]},"state":"{self.state_of(h)}","last_seen":{h.last_seen or row.get("last_seen") or 0:.3f},'
                      f'"backlog":{_fig(backlog)},"dropped":{_fig(dropped)},"gpus":[{",".join(gpus)}]}}')
        return h.json

    def firing_by_host(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in self.alarms.values():
            if a["state"] == "alarm":
                out.setdefault(a["host"], []).append(a["rule"] + (f" gpu {a['labels']['gpu']}" if "gpu" in a["labels"] else ""))
        for rules in out.values():
            rules.sort()
        return out

    def fleet_json(self, names: set[str] | None = None) -> str:
        hosts = self.hosts if names is None else {n: self.hosts[n] for n in names if n in self.hosts}
        firing = self.firing_by_host()
        body = ",".join(self.host_json(h, firing) for h in hosts.values())
        return (f'{{"now":{self.clock():.3f},"hot_celsius":{self.hot_celsius},"figures":{json.dumps(GPU_FIGURES)},'
                f'"hosts":[{body}]}}')

    def alarm_list(self, host: str = "") -> dict:
        now = self.clock()
        firing, resolved = [], []
        for a in self.alarms.values():
            if host and a["host"] != host:
                continue
            if a["state"] == "alarm":
                firing.append(a)
            elif a.get("resolved") and now - a["resolved"] <= ALARM_HISTORY_S:
                resolved.append(a)
        firing.sort(key=lambda a: (-(a["fired"] or a["ts"]), a["host"]))
        resolved.sort(key=lambda a: -a["resolved"])
        return {"now": now, "firing": firing, "resolved": resolved}


def _gpu_order(gpu: str):
    return (0, int(gpu), "") if gpu.isdigit() else (1, 0, gpu)


_QUOTED: dict[str, str] = {}


def _quoted(label: str) -> str:
    """A GPU label as a JSON string, worked out once per label value."""
    found = _QUOTED.get(label)
    if found is None:
        if len(_QUOTED) > 10_000:
            _QUOTED.clear()
        found = _QUOTED[label] = json.dumps(label)
    return found


def _fig(value) -> str:
    """A figure as JSON at display precision (agents send no NaN or infinity: ingest refuses them)."""
    return "null" if value is None else f"{value:.1f}"
