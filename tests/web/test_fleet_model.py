"""The fleet model behind the pages (agent/collector/web/fleet.py), on the real subscription
hub without processes: what a page is told after each tick, how a page that does not read is
coalesced, GPU states, and alarms firing and resolving."""
from __future__ import annotations

import asyncio
import json
import time

from agent.collector.subscriptions import Hub
from agent.collector.web.fleet import Fleet, Page, gpu_state
from agent.proto import collector_pb2
from agent.wire.columns import append_point, read


class Store:
    """The reads the fleet makes of a store (`StoreReader.agents`, `events`)."""

    def agents(self):
        return [{"host": "h1", "labels": {"region": "eu"}, "last_seen": 0, "backlog_records": 3, "dropped": 1,
                 "health": "ok"}]

    def events(self, since, host="", kinds=()):
        return []


def publish(hub: Hub, host: str, temps: list[float], seq: int, events=()) -> None:
    b = collector_pb2.Batch(host_id=host, epoch=1, seq=seq)
    b.labels["region"] = "eu"
    now = float(int(time.time()))
    for gpu, t in enumerate(temps):
        append_point(b, "gpu_temperature_celsius", {"gpu": str(gpu)}, ts=now, count=1, sum=t, min=t, max=t, last=t)
    for kind, data in events:
        b.events.add(kind=kind, ts=time.time(), data_json=json.dumps(data)).labels["gpu"] = "0"
    points = read(b)
    hub.publish([(b, points, tuple(range(seq * 100, seq * 100 + len(points))))], time.time())


def run(coro):
    return asyncio.run(coro)


def test_a_page_is_told_what_changed_and_a_page_that_does_not_read_gets_one_coalesced_set():
    async def scenario():
        hub = Hub()
        publish(hub, "h1", [50.0, 51.0], 1)
        fleet = Fleet(Store(), hub, lambda: {"h1", "h2"}, hot_celsius=70)
        await fleet.ensure_live()
        first = json.loads(fleet.fleet_json())
        page = Page(None)
        fleet.pages.add(page)
        await fleet.tick()  # the first tick learns who is connected
        page.dirty.clear()
        page.coalesced = 0
        publish(hub, "h1", [60.0, 51.0], 2)
        await fleet.tick()
        assert page.dirty == {"h1"} and page.wake.is_set()
        # The page does not read; two more seconds of both hosts.
        publish(hub, "h1", [72.0, 51.0], 3)
        publish(hub, "h2", [40.0], 4)
        await fleet.tick()
        publish(hub, "h1", [73.0, 51.0], 5)
        await fleet.tick()
        return first, page, json.loads(fleet.fleet_json(page.dirty))
    first, page, now = run(scenario())
    assert [g[:3] for g in first["hosts"][0]["gpus"]] == [["0", "ok", 50.0], ["1", "ok", 51.0]]
    assert first["hosts"][0]["backlog"] == 3 and first["hosts"][0]["dropped"] == 1  # the store's record
    assert page.dirty == {"h1", "h2"}
    assert page.coalesced == 2  # h1 marked twice more while it was still pending
    h1 = next(h for h in now["hosts"] if h["host"] == "h1")
    assert h1["gpus"][0][:3] == ["0", "hot", 73.0], "the latest state, not a backlog"


def test_gpu_states_from_health_loss_and_temperature():
    assert gpu_state({"gpu_temperature_celsius": 69.9}, 70) == "ok"
    assert gpu_state({"gpu_temperature_celsius": 70.0}, 70) == "hot"
    assert gpu_state({"gpu_temperature_celsius": 90, "gpu_health_state": 1}, 70) == "degraded"
    assert gpu_state({"gpu_health_state": 2}, 70) == "failed"
    assert gpu_state({"gpu_lost": 1}, 70) == gpu_state({"gpu_health_state": 3}, 70) == "lost"


def test_an_alarm_fires_then_resolves():
    async def scenario():
        hub = Hub()
        fleet = Fleet(Store(), hub, lambda: {"h1"})
        await fleet.ensure_live()
        fleet.pages.add(Page(None))
        publish(hub, "h1", [75.0], 1, [("alarm", {"rule": "gpu-hot", "state": "alarm", "value": 75.0, "threshold": 70})])
        await fleet.tick()
        firing = fleet.alarm_list()
        publish(hub, "h1", [60.0], 2, [("alarm", {"rule": "gpu-hot", "state": "ok", "value": 60.0, "threshold": 70})])
        await fleet.tick()
        return firing, fleet.alarm_list(), json.loads(fleet.fleet_json())
    firing, later, view = run(scenario())
    assert [(a["host"], a["rule"], a["labels"]) for a in firing["firing"]] == [("h1", "gpu-hot", {"gpu": "0"})]
    assert later["firing"] == [] and [a["rule"] for a in later["resolved"]] == ["gpu-hot"]
    assert later["resolved"][0]["fired"] <= later["resolved"][0]["resolved"]
    assert view["hosts"][0]["alarms"] == []
