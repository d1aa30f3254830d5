"""`agent.collector.bus.agents`, the fleet's agent records read from the agents bucket of a
real NATS JetStream: every host's latest record, deletions left out, and the whole listing even
when nats-py's watcher puts its "initial values done" mark before the entries (it decides that
from the consumer's pending count, which can be 0 before its callback has taken anything)."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from natsbus import connect

from agent.collector import bus as bus_room


async def _bucket(url):
    nc = await connect(url)
    js = nc.jetstream()
    kv = await js.create_key_value(bucket=bus_room.AGENTS_BUCKET, history=1)
    for host in ("host-a", "host-b", "host-c", "gone"):
        await kv.put(bus_room.agent_key(host), json.dumps({"host": host, "collector": "c0"}).encode())
    await kv.put(bus_room.agent_key("host-b"), json.dumps({"host": "host-b", "collector": "c2"}).encode())
    await kv.delete(bus_room.agent_key("gone"))
    return nc, SimpleNamespace(js=js, agents_kv=kv)


def test_every_hosts_latest_record_and_no_deleted_one(nats_server):
    async def main():
        nc, bus = await _bucket(nats_server.url)
        try:
            return await bus_room.agents(bus)
        finally:
            await nc.close()

    rows = asyncio.run(main())
    assert [(r["host"], r["collector"]) for r in rows] == [("host-a", "c0"), ("host-b", "c2"), ("host-c", "c0")]


def test_a_done_mark_ahead_of_the_entries_does_not_cut_the_listing_short(nats_server):
    async def main():
        nc, bus = await _bucket(nats_server.url)
        real = bus.agents_kv.watchall

        async def racy(**kwargs):  # what the watcher hands out when the race goes the bad way
            watcher = await real(**kwargs)
            await asyncio.sleep(0.3)  # every entry has arrived by now
            queued = []
            while not watcher._updates.empty():
                queued.append(watcher._updates.get_nowait())
            for item in [None] + [q for q in queued if q is not None]:
                watcher._updates.put_nowait(item)
            return watcher

        bus.agents_kv.watchall = racy
        try:
            return await bus_room.agents(bus)
        finally:
            await nc.close()

    rows = asyncio.run(main())
    assert [r["host"] for r in rows] == ["host-a", "host-b", "host-c"]


def test_an_empty_bucket_lists_nobody_at_once(nats_server):
    async def main():
        nc = await connect(nats_server.url)
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=bus_room.AGENTS_BUCKET, history=1)
        try:
            return await asyncio.wait_for(bus_room.agents(SimpleNamespace(js=js, agents_kv=kv)), 3.0)
        finally:
            await nc.close()

    assert asyncio.run(main()) == []
