"""Agents and the collector as real processes on loopback, over mutual TLS.

Each agent is `drive_agent.py` (a real `Outbox`), logging each marker once it is durable in
its spool; each test checks what the collector stored against that log.
"""
from __future__ import annotations

import math
import threading
import time

import grpc
import pytest

from agent.proto import collector_pb2
from agent.stream.client import PUBLISH, REJECTED_TRAILER
from agent.wire.columns import append_point

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def client_certs(pki):
    pki.issue("host-a", "host-a")
    pki.issue("host-b", "host-b", dns=["host-b", "host-b.example"])
    pki.issue("host-c", "host-c")
    pki.rogue("rogue-a", "host-a")


def _dupes(values: list[int]) -> list[int]:
    return sorted({v for v in values if values.count(v) > 1})


def test_collector_killed_mid_stream_every_sequence_arrives_exactly_once(collector_factory, agent_factory, wait):
    col = collector_factory().start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"]).start(first=1, count=400, rate=150)
    wait(lambda: len(col.stored_markers()) >= 60, what="the first markers to be stored")
    col.kill9()
    wait(lambda: len(agent.spooled()) >= 200, what="the agent to spool on during the outage")
    col.start()
    wait(lambda: len(agent.spooled()) == 400, what="all markers spooled")
    wait(lambda: agent.status().get("backlog") == 0 and len(col.stored_markers()) >= 400, what="the backlog to drain")
    stored = col.stored_markers("host-a")
    assert _dupes(stored) == [], "a batch was stored twice"
    assert stored == agent.spooled() == list(range(1, 401))
    assert agent.status()["client"]["connects"] >= 2


def test_agent_killed_and_restarted_loses_and_duplicates_nothing(collector_factory, agent_factory, wait):
    col = collector_factory().start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"]).start(first=1, count=100_000, rate=150)
    wait(lambda: len(agent.spooled()) >= 150, what="markers spooled before the kill")
    agent.kill9()
    first_run = agent.spooled()
    # Restart on the same state directory with a new range, so a replay of an old batch can
    # never be mistaken for a new one.
    agent.start(first=1_000_001, count=100, rate=150)
    wait(lambda: len([m for m in agent.spooled() if m > 1_000_000]) == 100, what="second run spooled")
    wait(lambda: agent.status().get("backlog") == 0, what="the backlog to drain")
    stored = col.stored_markers("host-a")
    assert _dupes(stored) == []
    assert set(agent.spooled()) <= set(stored), "a batch that was durable in the spool never arrived"
    # The only markers stored but not logged: one spooled in the instant between the
    # spool's fsync and the log line when the kill landed.
    assert set(stored) - set(agent.spooled()) <= {max(first_run) + 1}


def test_long_outage_fills_the_spool_to_its_bound_and_counts_the_drop(collector_factory, agent_factory, wait):
    col = collector_factory()  # configured, not started: the outage
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"],
                          extra=f"spool_max_bytes = {1 << 20}\nspool_segment_bytes = {64 << 10}\n")
    agent.start(first=1, count=1200, rate=400, points=60)
    wait(lambda: len(agent.spooled()) == 1200, what="all markers spooled during the outage", timeout=60)
    status = wait(lambda: (s := agent.status()) and s["spool"]["dropped_records"] > 0 and s, what="a counted drop")
    assert status["spool"]["disk_bytes"] <= 1 << 20
    assert status["dropped"] >= status["spool"]["dropped_records"] > 0
    assert status["metrics"]["stream_spool_dropped_records_total"] == status["spool"]["dropped_records"]
    col.start()
    wait(lambda: agent.status().get("backlog") == 0, what="the backlog to drain", timeout=60)
    stored = col.stored_markers("host-a")
    dropped = agent.status()["spool"]["dropped_records"]
    # Oldest first: what is left is exactly the newest markers, each once.
    assert stored == list(range(dropped + 1, 1201))
    # The drop is visible at the collector too, as of the last batch built: a batch carries
    # the count from before its own append, and that append may drop one more segment (only a
    # later batch then carries it), so the collector's figure is counted and never ahead.
    info = {a.host: a for a in col.agents().agents}["host-a"]
    assert 0 < info.status.dropped_records <= dropped


def test_tls_with_a_missing_or_wrong_client_certificate_is_refused(collector_factory, pki):
    col = collector_factory().start()
    target = f"127.0.0.1:{col.ingest_port}"
    ca = (pki.root / "ca.crt").read_bytes()
    batch = collector_pb2.Batch(host_id="host-a", epoch=1, seq=1).SerializeToString()
    credentials = {
        "missing": grpc.ssl_channel_credentials(ca),
        "wrong CA": grpc.ssl_channel_credentials(ca, (pki.root / "rogue-a.key").read_bytes(),
                                                 (pki.root / "rogue-a.crt").read_bytes()),
    }
    for name, creds in credentials.items():
        with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            call = ch.stream_stream(PUBLISH, request_serializer=None, response_deserializer=collector_pb2.Ack.FromString)
            with pytest.raises(grpc.RpcError) as err:
                list(call(iter([batch]), timeout=10))
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), name
    assert col.stored_markers() == [] and not col.agents().agents


def test_an_agent_using_another_hosts_identity_is_refused(collector_factory, agent_factory, pki, wait):
    col = collector_factory().start()
    # host-b's certificate, publishing as host-c: refused, nothing stored, the reason shown.
    impostor = agent_factory("host-c", [f"127.0.0.1:{col.ingest_port}"], cert_name="host-b").start(1, 20, rate=100)
    honest = agent_factory("host-b", [f"127.0.0.1:{col.ingest_port}"]).start(1, 20, rate=100)
    wait(lambda: "PERMISSION_DENIED" in (impostor.status().get("client", {}).get("last_error") or ""),
         what="the impostor's refusal")
    wait(lambda: honest.status().get("backlog") == 0 and len(honest.spooled()) == 20, what="the honest agent")
    assert col.stored_markers("host-c") == []
    assert col.stored_markers("host-b") == list(range(1, 21))
    # Refused batches stay spooled, not dropped (status.json is rewritten every 0.2 s).
    wait(lambda: len(impostor.spooled()) == 20 and impostor.status().get("backlog") == 20,
         what="the impostor's batches to stay in its spool")
    assert impostor.status()["dropped"] == 0
    assert "host-c" not in {a.host for a in col.agents().agents}


def test_malformed_and_oversized_messages_get_an_error_for_that_sender_only(collector_factory, agent_factory, pki, wait):
    col = collector_factory().start()
    honest = agent_factory("host-b", [f"127.0.0.1:{col.ingest_port}"]).start(1, 300, rate=100)
    creds = grpc.ssl_channel_credentials((pki.root / "ca.crt").read_bytes(), (pki.root / "host-a.key").read_bytes(),
                                         (pki.root / "host-a.crt").read_bytes())
    good = collector_pb2.Batch(host_id="host-a", epoch=7, seq=1)
    append_point(good, "test_marker", ts=time.time(), count=1, sum=1, min=1, max=1, last=1)
    nan = collector_pb2.Batch(host_id="host-a", epoch=7, seq=2)
    append_point(nan, "gpu_power_watts", ts=time.time(), count=1, sum=math.nan, min=1, max=1, last=1)
    huge = collector_pb2.Batch(host_id="host-a", epoch=7, seq=3, recording_json='{"x": "' + "y" * 300_000 + '"}')
    cases = {
        "garbage": ([b"\xff\xff\xff\xff not a protobuf"], (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                                           grpc.StatusCode.UNKNOWN)),
        "non-finite value": ([good.SerializeToString(), nan.SerializeToString()], (grpc.StatusCode.INVALID_ARGUMENT,)),
        "oversized": ([huge.SerializeToString()], (grpc.StatusCode.RESOURCE_EXHAUSTED,)),
    }
    with grpc.secure_channel(f"127.0.0.1:{col.ingest_port}", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        publish = ch.stream_stream(PUBLISH, request_serializer=None, response_deserializer=collector_pb2.Ack.FromString)
        for name, (messages, codes) in cases.items():
            call = publish(iter(messages), timeout=10)
            acks = []
            with pytest.raises(grpc.RpcError) as err:
                for ack in call:
                    acks.append(ack)
            assert err.value.code() in codes, f"{name}: {err.value.code()} {err.value.details()}"
            if name == "non-finite value":
                # Everything before the bad batch was committed and acked; the bad one is named.
                assert [(a.epoch, a.seq) for a in acks] == [(7, 1)]
                assert dict(call.trailing_metadata())[REJECTED_TRAILER] == "7/2"
    wait(lambda: honest.status().get("backlog") == 0 and len(honest.spooled()) == 300, what="the honest agent")
    assert col.stored_markers("host-b") == list(range(1, 301))
    assert col.stored_markers("host-a") == [1]
    assert col.proc.poll() is None


def test_a_slow_subscriber_does_not_slow_ingest_or_other_subscribers(collector_factory, agent_factory, wait):
    col = collector_factory().start()
    request = collector_pb2.SubscribeRequest(hosts=["host-a"], max_pending=10_000)  # consumers.max_pending
    metadata = [("authorization", f"Bearer {col.token}")]
    slow_channel, fast_channel = col.consumer_channel(), col.consumer_channel()
    slow = col.stub(slow_channel).Subscribe(request, metadata=metadata)
    assert next(slow).snapshot_done  # connected; now it stops reading
    fast = col.stub(fast_channel).Subscribe(request, metadata=metadata)
    fast_markers: list[int] = []

    def read_fast():
        for update in fast:
            fast_markers.extend(int(s.point.last) for s in update.samples if s.point.metric == "test_marker")
            if fast_markers and fast_markers[-1] == 300:
                return

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"]).start(1, 300, rate=100, points=200)
    wait(lambda: len(agent.spooled()) == 300 and agent.status().get("backlog") == 0, what="ingest to finish")
    reader.join(30)
    assert fast_markers and fast_markers[-1] == 300, "the fast subscriber missed the newest value"
    assert fast_markers == sorted(fast_markers)
    # The slow one now reads: it gets the newest values, with the replaced ones counted.
    newest, coalesced = 0, 0
    for update in slow:
        coalesced = update.coalesced
        newest = max([newest] + [int(s.point.last) for s in update.samples if s.point.metric == "test_marker"])
        if newest == 300:
            break
    assert newest == 300
    assert coalesced > 0, "a consumer that fell behind must be told how many updates were coalesced"
    slow.cancel()
    fast.cancel()
    slow_channel.close()
    fast_channel.close()
    assert col.stored_markers("host-a") == list(range(1, 301))


def test_agents_killed_mid_stream_never_take_the_collector_down(collector_factory, agent_factory, wait):
    # gRPC's C core crashed the whole collector (SIGSEGV) when the servicer asked a call the
    # client had just dropped for its peer. A script doing this loop outside pytest crashed
    # the unfixed collector within 4-25 kills in 4 runs of 4; inside pytest this test did not
    # (2 runs of 40 kills), so it guards the behaviour more than it reproduces that crash: 10
    # kills (at 7 points of the stream) guard it as well as 25 did, for 11 s less of the suite.
    col = collector_factory().start()
    for i in range(10):
        agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], name=f"agent-{i}")
        agent.start(first=i * 100_000 + 1, count=100_000, rate=150)
        wait(lambda: len(agent.spooled()) >= 20, what=f"agent {i} to spool")
        time.sleep(0.05 * (i % 7))  # kill at different points of the stream
        agent.kill9()
        time.sleep(0.2)
        assert col.proc.poll() is None, f"the collector died (rc {col.proc.returncode}) after agent kill {i + 1}"
    assert col.agents().agents[0].host == "host-a"  # and it still answers
