"""The collector's own /metrics (agent/collector/metrics.py) over the collector's real
Committer, Ingest and Hub: batches committed through the committer thread (a stand-in store
behind it) show up as counters, per-agent last batch and acks; promtool accepts the scrape."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus.scrapes import parse_text, promtool_check, scrape

from agent.collector import metrics as cm
from agent.collector.server import Committer, Ingest
from agent.collector.subscriptions import Hub
from agent.config import ConfigError, parse
from engines import free_port


class StandInStore:
    """The StoreWriter surface the committer uses: the second copy of a batch is a duplicate,
    a batch of host "bad" fails the write."""

    def __init__(self):
        self.seen = set()

    def write(self, batches, received, wire, points):
        if any(b.host_id == "bad" for b in batches):
            raise OSError("disk full (stand-in)")
        out = []
        for b, p in zip(batches, points):
            key = (b.host_id, b.epoch, b.seq)
            out.append(SimpleNamespace(duplicate=key in self.seen, points=len(p), series=tuple(range(len(p)))))
            self.seen.add(key)
        return out

    def cleanup(self, now):
        return {"dropped_tables": []}


@pytest.fixture
def collector_objects():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    hub = Hub()
    committer = Committer(StandInStore(), loop, hub, cleanup_interval=3600)
    committer.start()
    ingest = Ingest(committer, plaintext=True)
    yield SimpleNamespace(loop=loop, hub=hub, committer=committer, ingest=ingest)
    committer.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def commit(objs, host: str, seq: int, points: int = 3):
    """One batch through the committer thread, as the ingest service submits it; returns
    the future's outcome."""
    batch = SimpleNamespace(host_id=host, epoch=1, seq=seq, labels={})

    async def submit():
        fut = objs.loop.create_future()
        objs.committer.submit(batch, list(range(points)), b"wire", fut)
        try:
            return await fut
        except Exception as e:
            return e
    started = time.monotonic()
    outcome = asyncio.run_coroutine_threadsafe(submit(), objs.loop).result(10)
    if not isinstance(outcome, Exception):
        c = objs.ingest.counts.setdefault(host, {"batches": 0, "duplicates": 0})
        c["duplicates" if outcome else "batches"] += 1
        cm.observe_ack(started, objs.histogram)
    return outcome


def test_collector_metrics_follow_the_committer_and_pass_promtool(collector_objects):
    objs = collector_objects
    objs.histogram = cm.ack_histogram()
    settings = SimpleNamespace(enabled=True, listen=f"127.0.0.1:{free_port()}", web_config_file="")
    server = cm.start(settings, objs.committer, objs.ingest, objs.hub, objs.histogram)
    try:
        assert commit(objs, "gpu-a", 1, points=5) is False
        assert commit(objs, "gpu-a", 1, points=5) is True      # the same batch again: a duplicate
        assert commit(objs, "gpu-b", 1, points=2) is False
        assert isinstance(commit(objs, "bad", 1), OSError)     # the store failed: no ack
        objs.ingest.stats["rejected"] += 2                      # as Publish counts a malformed batch
        objs.ingest.connected["gpu-a"] = "ipv4:127.0.0.1:5000"
        status, headers, body = scrape(f"http://{settings.listen}/metrics")
        assert status == 200
        rc, out = promtool_check(body)
        assert (rc, out) == (0, "")
        s = parse_text(body)

        def value(name, **labels):
            return s[(name, frozenset(labels.items()))]
        assert value("egs_collector_batches_total") == 2
        assert value("egs_collector_duplicate_batches_total") == 1
        assert value("egs_collector_points_total") == 7
        assert value("egs_collector_store_errors_total") == 1
        assert value("egs_collector_ingest_refused_total", reason="rejected") == 2
        assert value("egs_collector_connected_agents") == 1
        assert value("egs_collector_commit_queue_batches") == 0
        assert value("egs_collector_agent_batches_total", host="gpu-a") == 1
        assert value("egs_collector_agent_batches_total", host="gpu-b") == 1
        last_a = value("egs_collector_agent_last_batch_timestamp_seconds", host="gpu-a")
        assert time.time() - 10 < last_a <= time.time()
        assert ("egs_collector_agent_last_batch_timestamp_seconds", frozenset({("host", "bad")})) not in s
        # two stored and one duplicate acked; the failed write got no ack
        assert value("egs_collector_ack_latency_seconds_count") == 3
        assert value("egs_collector_ack_latency_seconds_bucket", le="+Inf") == 3
        assert 0 < value("egs_collector_ack_latency_seconds_sum") < 10
    finally:
        server.stop()


def test_collector_metrics_section_refuses_a_malformed_listen_and_is_off_by_default():
    known = {cm.SECTION.name: cm.SECTION}
    assert cm.start(parse("", known=known).prometheus, None, None, None) is None
    with pytest.raises(ConfigError, match="prometheus.listen"):
        parse('[prometheus]\nlisten = "nowhere"\n', known=known)


def test_collector_metrics_port_in_use_is_a_clear_error(collector_objects):
    objs = collector_objects
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        settings = SimpleNamespace(enabled=True, listen=f"127.0.0.1:{holder.getsockname()[1]}", web_config_file="")
        with pytest.raises(OSError, match="the port is in use"):
            cm.start(settings, objs.committer, objs.ingest, objs.hub)
    finally:
        holder.close()


def test_the_parts_the_collector_depends_on_say_whether_they_work(collector_objects):
    state = {"store": True, "bus": True}
    figures = cm.CollectorFigures(collector_objects.committer, collector_objects.ingest, collector_objects.hub,
                                  parts=lambda: dict(state))
    up = dict(figures.figures())[cm.PART_UP]
    assert up == [({"part": "bus"}, 1.0), ({"part": "store"}, 1.0)]
    state["bus"] = False  # e.g. the whole NATS cluster down
    assert ({"part": "bus"}, 0.0) in dict(figures.figures())[cm.PART_UP]
