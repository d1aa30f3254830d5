"""The test helpers for real NATS servers (tests/natsbus.py) checked on their own, through nats-py:
a JetStream server on loopback with its store and log in tmpdir flags a duplicate message id and
keeps acknowledged messages over a kill -9; a server without JetStream says so; a 3-node cluster
is ready for replicated streams at once, keeps what it acknowledged when a node is kill -9'd,
still takes publishes with one node down, and takes the node back caught up. Skipped where
nats-server is not installed. No asyncio plugin: each test runs its coroutine with asyncio.run."""
from __future__ import annotations

import asyncio
import time

import pytest

import natsbus
from natsbus import NatsServer, connect, publish_acked

pytestmark = pytest.mark.timeout(60)


async def _stream(js, name: str, replicas: int = 1):
    from nats.js.api import StorageType
    return await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], storage=StorageType.FILE,
                               num_replicas=replicas, duplicate_window=120.0)


async def _bodies(js, stream: str, last_seq: int) -> list[bytes]:
    return [(await js.get_msg(stream, seq)).data for seq in range(1, last_seq + 1)]


# --- one server ---------------------------------------------------------------------------------

def test_server_on_loopback_with_its_store_config_and_log_in_tmpdir(nats_server, tmp_path):
    assert nats_server.url.startswith("nats://127.0.0.1:") and nats_server.running
    assert nats_server.root == tmp_path / "nats"
    assert "jetstream" in nats_server.config.read_text() and str(nats_server.store) in nats_server.config.read_text()
    assert "Server is ready" in nats_server.log.read_text()
    jsz = nats_server.jsz()
    assert not jsz.get("disabled") and jsz["config"]["store_dir"].startswith(str(nats_server.store))
    assert jsz["config"]["max_memory"] == 64 * 1024 * 1024


def test_a_repeated_message_id_is_flagged_duplicate_and_stored_once(nats_server):
    async def main():
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await _stream(js, "DEDUP")
            first = await js.publish("dedup.h1", b"batch-1", headers={"Nats-Msg-Id": "h1:e1:1"})
            again = await js.publish("dedup.h1", b"batch-1", headers={"Nats-Msg-Id": "h1:e1:1"})
            other = await js.publish("dedup.h1", b"batch-2", headers={"Nats-Msg-Id": "h1:e1:2"})
            info = await js.stream_info("DEDUP")
            return first, again, other, info.state.messages
        finally:
            await nc.close()

    first, again, other, stored = asyncio.run(main())
    assert not first.duplicate and first.seq == 1
    assert again.duplicate is True and again.seq == first.seq
    assert not other.duplicate and other.seq == 2
    assert stored == 2


def test_kill9_and_restart_keep_acknowledged_messages_and_the_duplicate_window(nats_server):
    async def publish():
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await _stream(js, "KEEP")
            for i in range(1, 21):
                await js.publish("keep.h1", b"m%d" % i, headers={"Nats-Msg-Id": f"h1:{i}"})
        finally:
            await nc.close()

    async def after_restart():
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            again = await js.publish("keep.h1", b"m20", headers={"Nats-Msg-Id": "h1:20"})
            return again, await _bodies(js, "KEEP", 20)
        finally:
            await nc.close()

    asyncio.run(publish())
    port, store = nats_server.port, nats_server.store
    nats_server.kill9()
    assert not nats_server.running
    nats_server.restart()
    assert (nats_server.port, nats_server.store) == (port, store)
    again, bodies = asyncio.run(after_restart())
    assert bodies == [b"m%d" % i for i in range(1, 21)]
    assert again.duplicate is True and again.seq == 20  # the window was rebuilt from the store


def test_a_server_without_jetstream_is_reported_as_such(tmp_path):
    import nats.errors
    import nats.js.errors
    if natsbus.find_binary("nats-server") is None:
        pytest.skip("nats-server is not installed")
    server = NatsServer(tmp_path / "plain", jetstream=False)
    try:
        server.start()
        assert server.jsz().get("disabled") is True and "jetstream" not in server.config.read_text()

        async def main():
            nc = await connect(server.url)
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        # What a collector sees when its bus has no JetStream, at once (2.9.10 with nats-py 2.16:
        # account_info raises ServiceUnavailableError; a publish, NoStreamResponseError).
        with pytest.raises((nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)):
            asyncio.run(main())
    finally:
        server.stop()
    assert not server.running


# --- a 3-node cluster ---------------------------------------------------------------------------

def test_cluster_is_ready_for_a_replicated_stream_at_once(nats_cluster):
    assert len(set(nats_cluster.urls)) == 3 and all(u.startswith("nats://127.0.0.1:") for u in nats_cluster.urls)
    assert nats_cluster.meta_leader() is not None
    assert all(n.monitor("/routez")["num_routes"] >= 2 for n in nats_cluster.nodes)

    async def main():
        nc = await connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            info = await _stream(js, "R3", replicas=3)  # no retry: ready means a 3-replica stream can be placed
            await js.delete_stream("R3")
            return info
        finally:
            await nc.close()

    info = asyncio.run(main())
    assert info.config.num_replicas == 3
    assert info.cluster.leader and len(info.cluster.replicas) == 2


def _cluster_kill9_case(cluster, kill_stream_leader: bool) -> dict:
    """Publish 20 acknowledged messages to an R3 stream, kill -9 one node (the stream's leader or
    a node that leads nothing), publish 20 more with one node down, read all 40 back, restart
    the node and wait until its own copy of the stream holds all 40."""
    out: dict = {}

    async def before():
        nc = await connect(cluster.urls)
        try:
            js = nc.jetstream()
            await _stream(js, "FLEET", replicas=3)
            for i in range(1, 21):
                ack = await js.publish("fleet.h1", b"m%d" % i, headers={"Nats-Msg-Id": f"h1:{i}"})
                assert ack.seq == i and not ack.duplicate
            return (await js.stream_info("FLEET")).cluster.leader
        finally:
            await nc.close()

    async def after(killed_url: str):
        # The client is told all three URLs and must find the two that are up.
        nc = await connect([killed_url] + [u for u in cluster.urls if u != killed_url])
        try:
            js = nc.jetstream()
            t0 = time.monotonic()
            first = await publish_acked(js, "fleet.h1", b"m21", headers={"Nats-Msg-Id": "h1:21"})
            out["first_publish_s"] = time.monotonic() - t0
            assert first.seq == 21
            for i in range(22, 41):
                ack = await publish_acked(js, "fleet.h1", b"m%d" % i, headers={"Nats-Msg-Id": f"h1:{i}"})
                assert ack.seq == i and not ack.duplicate
            out["bodies"] = await _bodies(js, "FLEET", 40)
            out["new_leader"] = (await js.stream_info("FLEET")).cluster.leader
        finally:
            await nc.close()

    leader = before_leader = asyncio.run(before())
    if kill_stream_leader:
        victim = cluster.index_of(leader)
    else:
        meta = cluster.meta_leader()
        victim = next(i for i, n in enumerate(cluster.nodes) if n.name != leader and i != meta)
    out["leader"], out["victim"] = before_leader, cluster.node(victim).name
    cluster.kill9(victim)
    assert not cluster.node(victim).running
    asyncio.run(after(cluster.node(victim).url))
    t0 = time.monotonic()
    node = cluster.restart(victim)
    deadline = time.monotonic() + 15
    while (node.stream_state("FLEET") or {}).get("messages") != 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    out["restart_s"] = time.monotonic() - t0
    out["restarted_state"] = node.stream_state("FLEET")
    return out


def test_cluster_keeps_acked_messages_and_takes_publishes_with_a_follower_kill9d(nats_cluster):
    out = _cluster_kill9_case(nats_cluster, kill_stream_leader=False)
    assert out["bodies"] == [b"m%d" % i for i in range(1, 41)]
    assert out["new_leader"] == out["leader"]  # a follower died: the leader went on
    assert out["first_publish_s"] < 5
    assert out["restarted_state"]["messages"] == 40 and out["restarted_state"]["last_seq"] == 40


@pytest.mark.slow
def test_cluster_keeps_acked_messages_when_the_stream_leader_is_kill9d(nats_cluster):
    out = _cluster_kill9_case(nats_cluster, kill_stream_leader=True)
    assert out["bodies"] == [b"m%d" % i for i in range(1, 41)]
    assert out["new_leader"] != out["victim"]
    assert out["first_publish_s"] < 15  # a new stream leader was elected (measured 5-10 s here)
    assert out["restarted_state"]["messages"] == 40 and out["restarted_state"]["last_seq"] == 40
