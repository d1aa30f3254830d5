"""The consumer CLI against a running collector, consumer tokens, and endpoint failover."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from agent.proto import collector_pb2

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def _cli(col, *args, token=True, timeout=30):
    env = {"PATH": "/usr/bin:/bin", "EGS_COLLECTOR_TOKEN": col.token if token else ""}
    return subprocess.run([sys.executable, "-m", "agent.collector.cli", *args, "--config", str(col.config),
                           "--target", f"127.0.0.1:{col.consumer_port}", "--server-name", "localhost"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def running(module_procs, pki):
    """One collector and one agent (whose first endpoint is down) for every test here."""
    make_collector, make_agent, wait = module_procs
    pki.issue("host-a", "host-a")
    col = make_collector().start()
    with socket.socket() as s:  # a port nobody listens on: the first endpoint is down
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    agent = make_agent("host-a", [dead, f"127.0.0.1:{col.ingest_port}"]).start(1, 30, rate=100, points=3)
    wait(lambda: len(agent.spooled()) == 30 and agent.status().get("backlog") == 0, what="the agent's data")
    return col, agent


def test_agent_fails_over_to_the_next_endpoint(running):
    col, agent = running
    status = agent.status()
    assert status["endpoint"] == f"127.0.0.1:{col.ingest_port}" and status["connected"]
    assert col.stored_markers("host-a") == list(range(1, 31))


def test_agents_lists_last_seen_backlog_and_health(running):
    col, _ = running
    out = _cli(col, "agents", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["agents"]
    assert row["host"] == "host-a" and row["connected"] and row["health"] == "ok"
    assert row["last_seq"] >= 30 and row["spool_backlog_records"] >= 0 and row["age_seconds"] < 60
    table = _cli(col, "agents")
    assert table.returncode == 0 and "host-a" in table.stdout


def test_subscribe_json_gives_the_snapshot_then_live_updates(running):
    col, _ = running
    out = _cli(col, "subscribe", "--json", "--metric", "test_load", "--label", "gpu=1", "--count", "2")
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.splitlines())
    assert first["snapshot"] and {(s["host"], s["metric"], s["labels"]["gpu"]) for s in first["samples"]} == {
        ("host-a", "test_load", "1")}
    assert second["snapshot_done"]


def test_query_returns_stored_history(running):
    col, _ = running
    out = _cli(col, "query", "test_marker", "--host", "host-a", "--since", "10m", "--resolution", "raw", "--json")
    assert out.returncode == 0, out.stderr
    (series,) = json.loads(out.stdout)["series"]
    assert sorted(int(p["last"]) for p in series["points"]) == list(range(1, 31))


def test_consumers_without_a_valid_token_are_refused(running):
    col, _ = running
    out = _cli(col, "agents", token=False)
    assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr
    with col.consumer_channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            col.stub(ch).Agents(collector_pb2.AgentsRequest(), metadata=[("authorization", "Bearer wrong-token-123456")],
                                timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_consumer_token_cannot_publish(running, pki):
    # The consumer port asks for no client certificate, so it carries no host identity.
    col, _ = running
    with col.consumer_channel() as ch:
        publish = ch.stream_stream("/egs.collector.v1.Ingest/Publish", request_serializer=None,
                                   response_deserializer=collector_pb2.Ack.FromString)
        batch = collector_pb2.Batch(host_id="host-a", epoch=1, seq=1).SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            list(publish(iter([batch]), metadata=[("authorization", f"Bearer {col.token}")], timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
