"""The `Store` contract (agent/collector/store/__init__.py), one suite for every store: the
embedded SQLite store, and the remote-write store over a real VictoriaMetrics and a real
Prometheus started on loopback (tests/engines.py)."""
from __future__ import annotations

import time

import pytest

from agent.collector.store import QueryBounds, QueryTooLarge
from agent.collector.store.remote_write import RemoteWriteStore
from agent.collector.store.sqlite import SQLiteStore
from agent.proto import collector_pb2
from agent.wire.columns import append_point

# A round minute 20 minutes ago: inside every store's raw retention, and recent enough for
# an engine's head block.
T0 = float(int(time.time() // 60) * 60 - 1200)


class Subject:
    """A store under test: `open()` opens (again) the same store; `settle()` makes what was
    written visible to queries (the SQLite store's rollup flush; an engine's in-memory buffer)."""

    def __init__(self, kind: str, tmp_path, engine=None):
        self.kind, self.dir, self.engine = kind, tmp_path / "store", engine
        self.opened: list = []

    def open(self):
        if self.kind == "sqlite":
            store = SQLiteStore(self.dir, flush_interval=0)
        else:
            store = RemoteWriteStore(self.dir, self.engine.write_url, self.engine.query_url, timeout=10, retry_for=5)
        self.opened.append(store)
        return store

    def settle(self, store) -> None:
        if self.kind == "sqlite":
            store.flush()
        elif hasattr(self.engine, "flush"):
            self.engine.flush()

    def close(self) -> None:
        for store in self.opened:
            try:
                store.close()
            except Exception:
                pass


@pytest.fixture(params=["sqlite", "victoria-metrics", "prometheus"])
def subject(request, tmp_path):
    engine = None
    if request.param == "victoria-metrics":
        engine = request.getfixturevalue("victoria_metrics")
    elif request.param == "prometheus":
        engine = request.getfixturevalue("prometheus_engine")
    s = Subject(request.param, tmp_path, engine)
    yield s
    s.close()


def batch(host="h1", epoch=1, seq=1, ts=T0, value=1.0, gpu="0", metric="gpu_power_watts", zone="z1"):
    b = collector_pb2.Batch(host_id=host, epoch=epoch, seq=seq)
    b.labels["zone"] = zone
    append_point(b, metric, {"gpu": gpu}, ts=ts, count=2, sum=2 * value, min=value - 1, max=value + 1, last=value)
    return b


def raw(store, **kw):
    kw.setdefault("start", T0 - 60)
    kw.setdefault("end", T0 + 300)
    return store.query(kw.pop("metric", "gpu_power_watts"), resolution="raw", **kw)[1]


def test_a_replayed_batch_is_a_duplicate_and_stored_once(subject):
    store = subject.open()
    assert [r.duplicate for r in store.write([batch(seq=1, ts=T0 + 1), batch(seq=2, ts=T0 + 2, value=2)], T0)] == [False, False]
    assert [r.duplicate for r in store.write([batch(seq=2, ts=T0 + 2, value=2), batch(seq=3, ts=T0 + 3, value=3)], T0)] == [True, False]
    subject.settle(store)
    (s,) = raw(store)
    assert [(p[0], p[5]) for p in s.points] == [(T0 + 1, 1), (T0 + 2, 2), (T0 + 3, 3)]


def test_duplicates_within_one_group_are_caught(subject):
    store = subject.open()
    assert [r.duplicate for r in store.write([batch(seq=5), batch(seq=5)], T0)] == [False, True]
    subject.settle(store)
    (s,) = raw(store)
    assert len(s.points) == 1


def test_exactly_once_survives_a_restart_and_is_per_host_and_epoch(subject):
    store = subject.open()
    first = store.write([batch(seq=1)], T0)[0]
    store.close()
    store = subject.open()
    results = store.write([batch(seq=1), batch(seq=1, epoch=2, ts=T0 + 1), batch(seq=1, host="h2")], T0)
    assert [r.duplicate for r in results] == [True, False, False]
    # The series keeps its id across the restart (subscriptions key their queues by it).
    assert results[1].series == first.series
    assert results[2].series != first.series


def test_a_point_keeps_count_sum_min_max_and_last(subject):
    store = subject.open()
    store.write([batch(seq=1, ts=T0 + 1, value=10)], T0)
    subject.settle(store)
    (s,) = raw(store)
    assert s.host == "h1" and s.metric == "gpu_power_watts" and s.labels == {"gpu": "0"}
    assert s.points == [(T0 + 1, 2, 20.0, 9.0, 11.0, 10.0)]


def test_rollups_keep_count_sum_min_max_last_per_10s_and_1m_also_for_late_points(subject):
    store = subject.open()
    store.write([batch(seq=1, ts=T0 + 1, value=10), batch(seq=2, ts=T0 + 2, value=20)], T0)
    store.write([batch(seq=3, ts=T0 + 15, value=30)], T0)
    store.write([batch(epoch=2, seq=1, ts=T0, value=40)], T0)  # a replay, late, older ts
    subject.settle(store)
    res, series = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="10s")
    assert res == "10s"
    (s,) = series
    assert s.labels == {"gpu": "0"}
    by_ts = {p[0]: p for p in s.points}
    assert sorted(by_ts) == [T0, T0 + 10]
    ts, count, total, lo, hi, last = by_ts[T0]
    assert (count, total / count, lo, hi, last) == (6, (10 + 20 + 40) / 3, 9, 41, 20)  # last: newest ts
    assert by_ts[T0 + 10][1:] == (2, 60.0, 29.0, 31.0, 30.0)
    (m,) = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="1m")[1]
    assert [(p[0], p[1], p[2], p[3], p[4], p[5]) for p in m.points] == [(T0, 8, 200.0, 9.0, 41.0, 30.0)]


def test_raw_resolution_gives_every_point_oldest_first_within_the_range(subject):
    store = subject.open()
    store.write([batch(seq=i, ts=T0 + i, value=i) for i in range(1, 6)], T0)
    subject.settle(store)
    (s,) = raw(store, start=T0 + 2, end=T0 + 4)
    assert [(p[0], p[5]) for p in s.points] == [(T0 + 2, 2), (T0 + 3, 3), (T0 + 4, 4)]
    (s,) = raw(store, limit=2)
    assert [p[5] for p in s.points] == [1, 2]


def test_query_filters_by_host_and_labels(subject):
    store = subject.open()
    store.write([batch(seq=1, gpu="0"), batch(seq=2, gpu="1", ts=T0 + 1), batch(host="h2", seq=1)], T0)
    subject.settle(store)
    series = raw(store, host="h1", labels={"gpu": "1"})
    assert [(s.host, s.labels, len(s.points)) for s in series] == [("h1", {"gpu": "1"}, 1)]
    assert sorted((s.host, s.labels["gpu"]) for s in raw(store)) == [("h1", "0"), ("h1", "1"), ("h2", "0")]
    assert raw(store, metric="gpu_temperature_celsius") == []


def test_query_bounds_are_kept(subject):
    store = subject.open()
    store.write([batch(seq=g + 1, gpu=str(g), ts=T0 + g) for g in range(5)], T0)
    subject.settle(store)
    with pytest.raises(ValueError, match="unknown resolution"):
        store.query("gpu_power_watts", start=T0, end=T0 + 10, resolution="5s")
    with pytest.raises(ValueError, match="max_query_span"):
        store.query("gpu_power_watts", start=T0, end=T0 + 7200, resolution="raw", bounds=QueryBounds(max_span=3600))
    with pytest.raises(QueryTooLarge, match="max_query_series"):
        raw(store, bounds=QueryBounds(max_series=4))
    with pytest.raises(QueryTooLarge, match="max_query_points"):
        raw(store, bounds=QueryBounds(max_points=4))
    assert len(raw(store, bounds=QueryBounds(max_series=5, max_points=5))) == 5


def test_agents_keep_the_latest_status(subject):
    store = subject.open()
    b = batch(seq=1)
    b.status.spool_backlog_records, b.status.dropped_records, b.status.health = 7, 3, "reconnecting"
    b.nic_json = '{"eth0": {"queues": 4}}'
    store.write([b], T0)
    store.write([batch(seq=2, ts=T0 + 1)], T0 + 1)
    (a,) = store.agents()
    assert (a["host"], a["last_seq"], a["labels"], a["nic"], a["dropped"]) == ("h1", 2, {"zone": "z1"}, {"eth0": {"queues": 4}}, 0)


def test_events_are_stored_and_found(subject):
    store = subject.open()
    b = batch(seq=1)
    b.events.add(kind="alarm", ts=T0, data_json='{"state": "firing"}').labels["gpu"] = "0"
    store.write([b], T0)
    assert store.events(T0 - 1, kinds=["alarm"]) == [
        {"host": "h1", "ts": T0, "kind": "alarm", "labels": {"gpu": "0"}, "data": {"state": "firing"}}]
