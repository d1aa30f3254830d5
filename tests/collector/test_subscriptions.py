"""Subscription queues on their own: filters, coalescing to the latest, the bound, snapshot."""
from __future__ import annotations

import asyncio

import pytest

from agent.collector.subscriptions import Hub, make_update
from agent.proto import collector_pb2
from agent.wire.columns import append_point, read


def _batch(host: str, seq: int, gpus=(0, 1), metric="gpu_power_watts", rack="r1"):
    b = collector_pb2.Batch(host_id=host, epoch=1, seq=seq)
    b.labels["rack"] = rack
    for g in gpus:
        append_point(b, metric, {"gpu": str(g)}, ts=float(seq), count=1, sum=seq, min=seq, max=seq, last=seq)
    return b


def _publish(hub, stored, received):
    """As the committer does: each batch with its points as read, and its series ids."""
    hub.publish([(b, read(b), ids) for b, ids in stored], received)


def _ids(host, gpus, metric="gpu_power_watts"):
    return [hash((host, metric, g)) for g in gpus]


@pytest.fixture
def hub():
    asyncio.set_event_loop(asyncio.new_event_loop())  # Subscription owns an asyncio.Event
    return Hub()


def test_a_slow_consumer_gets_the_latest_value_per_series_and_the_count_replaced(hub):
    sub = hub.add(collector_pb2.SubscribeRequest(), max_pending=100)
    for seq in range(1, 11):
        _publish(hub, [(_batch("h1", seq), _ids("h1", (0, 1)))], received=seq)
    samples, _ = sub.take(1000)
    assert sorted((p.labels["gpu"], p.last) for _, p, _ in samples) == [("0", 10), ("1", 10)]
    assert sub.coalesced == 18 and sub.dropped == 0
    update = make_update(samples, [], sub)
    assert update.coalesced == 18 and len(update.samples) == 2


def test_the_queue_is_bounded_in_series_and_counts_what_it_drops(hub):
    sub = hub.add(collector_pb2.SubscribeRequest(), max_pending=3)
    _publish(hub, [(_batch("h1", 1, gpus=range(5)), _ids("h1", range(5)))], received=1)
    samples, _ = sub.take(1000)
    assert [p.labels["gpu"] for _, p, _ in samples] == ["2", "3", "4"]
    assert sub.dropped == 2


def test_filters_on_host_metric_labels_and_event_kind(hub):
    sub = hub.add(collector_pb2.SubscribeRequest(hosts=["h1"], metrics=["gpu_power_watts"], labels={"gpu": "1"},
                                                 event_kinds=["alarm"]), max_pending=100)
    b = _batch("h1", 1)
    b.events.add(kind="alarm", ts=1).labels["gpu"] = "1"
    b.events.add(kind="nic", ts=1).labels["gpu"] = "1"
    _publish(hub, [(b, _ids("h1", (0, 1))), (_batch("h2", 1), _ids("h2", (0, 1))),
                 (_batch("h1", 2, metric="gpu_temperature_celsius"), _ids("h1", (0, 1), "t"))], received=1)
    samples, events = sub.take(100)
    assert [(h, p.metric, p.labels["gpu"]) for h, p, _ in samples] == [("h1", "gpu_power_watts", "1")]
    assert [(h, e.kind) for h, e in events] == [("h1", "alarm")]


def test_batch_labels_match_a_label_filter(hub):
    sub = hub.add(collector_pb2.SubscribeRequest(labels={"rack": "r2"}), max_pending=100)
    _publish(hub, [(_batch("h1", 1, rack="r1"), _ids("h1", (0, 1))),
                 (_batch("h2", 1, rack="r2"), _ids("h2", (0, 1)))], received=1)
    assert {h for h, _, _ in sub.take(100)[0]} == {"h2"}


def test_snapshot_has_the_latest_value_of_each_series(hub):
    for seq in range(1, 4):
        _publish(hub, [(_batch("h1", seq), _ids("h1", (0, 1)))], received=seq)
    _publish(hub, [(_batch("h2", 1, gpus=(0,)), _ids("h2", (0,)))], received=1)
    sub = hub.add(collector_pb2.SubscribeRequest(hosts=["h1"]), max_pending=100)
    assert sorted((h, p.labels["gpu"], p.last) for h, p, _ in hub.snapshot(sub)) == [("h1", "0", 3), ("h1", "1", 3)]
