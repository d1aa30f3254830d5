"""The Watch fan-out on its own: cadence per client, filters, a slow client next to a fast
one, the subscriber cap, and events kept or counted through coalescing."""
from agent.api.watch import MAX_EVENTS, WatchHub
from agent.events import Event
from agent.sources.base import Sample
from agent.windows import Windows


def hub_with_data(queue_size=4, max_subscribers=8):
    w = Windows([10], lambda: 1000.5)
    w.add(Sample.reading("gpu_power_watts", {"gpu": "0"}, 100.0, 1000.2))
    w.add(Sample.reading("gpu_power_watts", {"gpu": "1"}, 200.0, 1000.2))
    w.add(Sample.reading("memory_used_percent", {}, 40.0, 1000.2))
    return WatchHub(w, queue_size=queue_size, max_subscribers=max_subscribers)


def drain(sub):
    out = []
    while (u := sub.get(timeout=0)) is not None:
        out.append(u)
    return out


def test_each_client_gets_updates_at_its_own_cadence():
    hub = hub_with_data(queue_size=100)
    every = hub.subscribe(interval=1)
    fifth = hub.subscribe(interval=5)
    for i in range(10):
        hub.publish(1000.0 + i, [], "{}")
    assert len(drain(every)) == 10
    assert [u.ts for u in drain(fifth)] == [1000.0, 1005.0]


def test_metric_and_label_filters():
    hub = hub_with_data()
    sub = hub.subscribe(metrics=["gpu_power_watts"], labels={"gpu": "1"})
    hub.publish(1001.0, [], "{}")
    (update,) = drain(sub)
    assert [(m, labels, v) for m, labels, v in update.points] == [("gpu_power_watts", {"gpu": "1"}, 200.0)]


def test_a_slow_client_coalesces_while_a_fast_one_gets_everything():
    hub = hub_with_data(queue_size=4)
    slow = hub.subscribe()
    fast = hub.subscribe()
    received = []
    for i in range(200):
        hub.publish(1000.0 + i, [Event("agent", 1000.0 + i, {}, {"i": i})], "{}")
        received += drain(fast)
        assert slow.pending() <= 4
    assert [u.ts for u in received] == [1000.0 + i for i in range(200)]
    assert sum(len(u.events) for u in received) == 200
    updates = drain(slow)
    assert len(updates) == 4 and updates[-1].ts == 1199.0
    assert updates[-1].coalesced == 196
    # every event is either still delivered or counted as dropped
    delivered = sum(len(u.events) for u in updates)
    assert delivered + updates[-1].events_dropped == 200
    assert delivered <= 4 * MAX_EVENTS


def test_more_watchers_than_the_cap_are_refused_and_leaving_frees_a_place():
    hub = hub_with_data(max_subscribers=2)
    a, b = hub.subscribe(), hub.subscribe()
    assert hub.subscribe() is None
    hub.unsubscribe(a)
    assert a.closed
    assert hub.subscribe() is not None
    assert hub.subscribers() == 2 and not b.closed


def test_the_first_update_carries_history_and_comes_at_once_after_a_publish():
    hub = hub_with_data()
    hub.publish(1000.5, [], '{"x": 1}')
    sub = hub.subscribe(history_seconds=3, include_status=True)
    (first,) = drain(sub)
    assert first.status_json == '{"x": 1}'
    assert first.history[("gpu_power_watts", (("gpu", "0"),))] == [None, None, 100.0]
    hub.publish(1001.5, [], "{}")
    (second,) = drain(sub)
    assert second.history == {}


def test_close_ends_every_subscription():
    hub = hub_with_data()
    sub = hub.subscribe()
    hub.close()
    assert sub.closed and sub.get(timeout=0.01) is None and hub.subscribers() == 0
