"""Scale-out mode with real processes: collectors on a real NATS JetStream (one server, or a
3-node cluster: tests/natsbus.py), storing into a real VictoriaMetrics (tests/engines.py),
agents (`drive_agent.py`, one `test_marker` point a batch, its value the marker). What counts
is what the engine holds and what a subscriber saw: every marker exactly once."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import pytest

import engines
from agent.proto import collector_pb2
from agent.stream.client import PUBLISH
from agent.wire.columns import append_point
from collector_procs import REPO, CollectorProc

pytestmark = pytest.mark.slow


def bus_section(urls: list[str], name: str, extra: str = "") -> str:
    servers = ", ".join(f'"{u}"' for u in urls)
    return f'[bus]\nnats = [{servers}]\nname = "{name}"\ntimeout = "2s"\nmax_mib = 256\n{extra}'


def store_section(engine) -> str:
    return (f'[store]\nbackend = "remote_write"\nremote_write_url = "{engine.write_url}"\n'
            f'query_url = "{engine.query_url}"\nremote_retry = "2s"\n')


def engine_markers(engine, host: str) -> list[int]:
    engine.flush()
    found = engines.promql(engine.url, f'egs_test_marker{{host="{host}"}}[1h]', time=time.time() + 1)
    return sorted(int(float(v)) for r in found for _, v in r["values"])


def drained(agent, n: int) -> bool:
    return len(agent.spooled()) >= n and agent.status().get("backlog") == 0


class Subscriber:
    """A Subscribe stream read on a thread: every test_marker value per host, in arrival order."""

    def __init__(self, col: CollectorProc):
        self.channel = col.consumer_channel()
        request = collector_pb2.SubscribeRequest(metrics=["test_marker"], max_pending=10_000)
        self.call = col.stub(self.channel).Subscribe(request, metadata=[("authorization", f"Bearer {col.token}")])
        self.seen: dict[str, list[int]] = {}
        self.coalesced = self.dropped = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "no snapshot_done on the subscription"

    def _read(self) -> None:
        try:
            for update in self.call:
                if update.snapshot_done:
                    self.ready.set()
                if update.snapshot:
                    continue
                self.coalesced, self.dropped = update.coalesced, update.dropped
                for s in update.samples:
                    self.seen.setdefault(s.host, []).append(int(s.point.last))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def test_three_collectors_one_killed_every_batch_stored_and_seen_once(tmp_path, nats_server, victoria_metrics,
                                                                      collector_factory, agent_factory, wait):
    cols = [collector_factory(f"c{i}", plaintext=True, extra=bus_section([nats_server.url], f"c{i}")
                              + store_section(victoria_metrics)).start() for i in range(3)]
    a, b, c = cols
    sub = Subscriber(a)
    n = 300
    ep = [f"127.0.0.1:{col.ingest_port}" for col in cols]
    agents = {"host-a": agent_factory("host-a", [ep[0]], plaintext=True),
              "host-b": agent_factory("host-b", [ep[1], ep[2]], plaintext=True),  # on B, fails over to C
              "host-c": agent_factory("host-c", [ep[2]], plaintext=True)}
    for agent in agents.values():
        agent.start(1, n, rate=50)
    wait(lambda: len(agents["host-b"].spooled()) >= 100, what="host-b to be mid-stream")
    b.kill9()
    for host, agent in agents.items():
        wait(lambda: drained(agent, n), timeout=90, what=f"{host}'s backlog to drain")
    for host in agents:
        wait(lambda: len(engine_markers(victoria_metrics, host)) >= n, timeout=60, what=f"{host} in the engine")
        assert engine_markers(victoria_metrics, host) == list(range(1, n + 1)), host
    wait(lambda: all(len(sub.seen.get(h, [])) >= n for h in agents), timeout=30, what="the subscriber to see all")
    time.sleep(1)
    sub.close()
    assert sub.coalesced == 0 and sub.dropped == 0  # a fast reader: every update is a batch's
    for host in agents:
        assert sub.seen[host] == list(range(1, n + 1)), f"{host}: gaps or duplicates on the subscription"
    rows = {r.host: r for r in a.agents().agents}
    assert rows["host-a"].collector == "c0" and rows["host-c"].collector == "c2"
    assert rows["host-b"].collector == "c2"  # where it is now, as every collector sees it
    assert {r.host for r in c.agents().agents} == set(agents)


def test_a_nats_node_killed_loses_nothing_acknowledged(tmp_path, nats_cluster, victoria_metrics, collector_factory,
                                                       agent_factory, wait):
    col = collector_factory("c", plaintext=True, extra=bus_section(nats_cluster.urls, "c", "replicas = 3\n")
                            + store_section(victoria_metrics)).start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 300, rate=50)
    wait(lambda: len(engine_markers(victoria_metrics, "host-a")) >= 50, timeout=30, what="the first markers stored")
    nats_cluster.kill9(0)
    wait(lambda: drained(agent, 300), timeout=90, what="the backlog to drain with a node down")
    # A batch fetched by a writer whose ack went to the killed node comes again after the
    # consumer's ack wait (15 s).
    wait(lambda: len(engine_markers(victoria_metrics, "host-a")) >= 300, timeout=60, what="all markers in the engine")
    assert engine_markers(victoria_metrics, "host-a") == list(range(1, 301))


def test_the_whole_bus_down_stops_acks_then_recovers_by_itself(tmp_path, nats_server, victoria_metrics,
                                                               collector_factory, agent_factory, wait):
    col = collector_factory("c", plaintext=True, extra=bus_section([nats_server.url], "c")
                            + store_section(victoria_metrics)).start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 300, rate=50)
    wait(lambda: len(engine_markers(victoria_metrics, "host-a")) >= 30, timeout=30, what="the first markers stored")
    nats_server.kill9()
    wait(lambda: "unavailable" in col.agents().store, timeout=30, what="the collector to say the bus is down")
    backlog = wait(lambda: agent.status().get("backlog", 0) >= 30, timeout=30, what="the agent to spool")
    assert backlog
    assert col.proc.poll() is None  # the collector keeps serving
    nats_server.restart()
    wait(lambda: drained(agent, 300), timeout=90, what="the backlog to drain once the bus is back")
    wait(lambda: col.agents().store.startswith("bus ") and ": ok (published" in col.agents().store, what="the bus ok again")
    # A batch fetched by a writer whose ack went to the killed node comes again after the
    # consumer's ack wait (15 s).
    wait(lambda: len(engine_markers(victoria_metrics, "host-a")) >= 300, timeout=60, what="all markers in the engine")
    assert engine_markers(victoria_metrics, "host-a") == list(range(1, 301))


def _batch(seq: int, marker: int, host: str = "host-r") -> bytes:
    b = collector_pb2.Batch(host_id=host, epoch=7, seq=seq, created=time.time())
    append_point(b, "test_marker", ts=time.time() - 60 + seq, count=1, sum=marker, min=marker, max=marker, last=marker)
    return b.SerializeToString()


def _publish(col, messages: list[bytes]) -> list[tuple[int, bool]]:
    with grpc.insecure_channel(f"127.0.0.1:{col.ingest_port}") as ch:
        call = ch.stream_stream(PUBLISH, request_serializer=None,
                                response_deserializer=collector_pb2.Ack.FromString)(iter(messages), timeout=20)
        return [(ack.seq, ack.duplicate) for ack in call]


def test_a_replay_older_than_the_duplicate_window_is_still_stored_and_seen_once(tmp_path, nats_server, victoria_metrics,
                                                                                collector_factory, wait):
    extra = bus_section([nats_server.url], "c", 'duplicate_window = "1s"\n') + store_section(victoria_metrics)
    first = collector_factory("c1", plaintext=True, extra=extra).start()
    sub = Subscriber(first)
    assert [d for _, d in _publish(first, [_batch(s, s) for s in range(1, 11)])] == [False] * 10
    time.sleep(2.5)  # past JetStream's duplicate window
    # Another collector (no cache of its own) gets the replay of batches 5..10 and two new ones.
    second = collector_factory("c2", plaintext=True, extra=extra).start()
    acks = _publish(second, [_batch(s, s) for s in range(5, 13)])
    assert [s for s, _ in acks] == list(range(5, 13))
    wait(lambda: len(engine_markers(victoria_metrics, "host-r")) >= 12, timeout=30, what="12 markers in the engine")
    assert engine_markers(victoria_metrics, "host-r") == list(range(1, 13))
    wait(lambda: 12 in sub.seen.get("host-r", []), timeout=30, what="the subscriber to see marker 12")
    time.sleep(1)
    sub.close()
    # Published back to back, some updates may be coalesced (the newer value replaces a pending
    # one, counted); none is seen twice, and every batch is either seen or counted.
    seen = sub.seen["host-r"]
    assert seen == sorted(set(seen)), f"a marker seen twice or out of order: {seen}"
    assert len(seen) + sub.coalesced == 12, (seen, sub.coalesced)


def _run(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.collector.cli", "run", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_collector_with_other_bus_settings_stops_naming_the_setting(tmp_path, nats_server, collector_factory):
    collector_factory("c1", plaintext=True, extra=bus_section([nats_server.url], "c1")).start()
    other = CollectorProc(tmp_path / "c2", None, plaintext=True,
                          extra=bus_section([nats_server.url], "c2", 'duplicate_window = "5m"\n'))
    done = _run(other.config)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "bus.duplicate_window" in done.stderr and "exists with another configuration" in done.stderr


def test_a_bus_without_jetstream_stops_the_start_naming_it(tmp_path):
    import natsbus
    if natsbus.find_binary("nats-server") is None:
        pytest.skip("nats-server is not installed (make system-deps installs it as root)")
    server = natsbus.NatsServer(tmp_path / "plain", jetstream=False).start()
    try:
        col = CollectorProc(tmp_path / "c", None, plaintext=True, extra=bus_section([server.url], "c"))
        done = _run(col.config)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "bus.nats" in done.stderr and "JetStream" in done.stderr
    finally:
        server.stop()


def test_a_collector_on_the_bus_stops_promptly_on_sigterm(tmp_path, nats_server, collector_factory, agent_factory,
                                                          wait):
    # systemd gives it TimeoutStopSec (30 s); nats-py's drain alone could take that long.
    col = collector_factory("c", plaintext=True, extra=bus_section([nats_server.url], "c")).start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 20, rate=50)
    wait(lambda: drained(agent, 20), what="20 batches acknowledged")
    started = time.monotonic()
    col.proc.terminate()
    assert col.proc.wait(10) == 0
    assert time.monotonic() - started < 8
