"""The remote-write store's own behaviour: what it sends (decoded with the remote-write
message), refusals by the engine (one series refused, the rest stored), an engine that does
not answer, against real engines."""
from __future__ import annotations

import logging
import time

import cramjam
import pytest

import engines
from agent.collector.store import StoreUnavailable
from agent.collector.store.promwrite import Encoder
from agent.collector.store.remote_write import RemoteWriteStore
from agent.proto import collector_pb2, prometheus_remote_pb2
from agent.wire.columns import append_point, read

T0 = float(int(time.time() // 60) * 60 - 600)


def test_a_point_is_five_series_with_the_agent_labels_and_the_host():
    b = collector_pb2.Batch(host_id="gpu-node-7", epoch=1, seq=1)
    b.labels.update({"zone": "eu-1", "host": "from-config", "rack-id": "r7"})
    append_point(b, "gpu_temperature_celsius", {"gpu": "3", "uuid": "GPU-x"}, ts=T0 + 0.25, count=4, sum=250.0,
                 min=60.0, max=65.0, last=63.5)
    timeseries, names = Encoder().timeseries(b, read(b))
    request = prometheus_remote_pb2.WriteRequest.FromString(b"".join(timeseries))
    got = {}
    for ts in request.timeseries:
        labels = [(label.name, label.value) for label in ts.labels]
        assert labels == sorted(labels)  # engines expect sorted labels
        labels = dict(labels)
        assert {k: v for k, v in labels.items() if k != "__name__"} == {
            "gpu": "3", "uuid": "GPU-x", "host": "gpu-node-7", "zone": "eu-1", "exported_host": "from-config",
            "rack_id": "r7"}
        ((sample,),) = [ts.samples]
        assert sample.timestamp == int(T0 * 1000) + 250
        got[labels["__name__"]] = sample.value
    assert got == {"egs_gpu_temperature_celsius": 63.5, "egs_gpu_temperature_celsius_min": 60.0,
                   "egs_gpu_temperature_celsius_max": 65.0, "egs_gpu_temperature_celsius_sum": 250.0,
                   "egs_gpu_temperature_celsius_count": 4.0}
    assert [n.name for n in names] == [ts.labels[0].value for ts in request.timeseries]
    # A body is the concatenation, snappy-compressed as engines expect (block format).
    assert bytes(cramjam.snappy.decompress_raw(cramjam.snappy.compress_raw(b"".join(timeseries)))) == b"".join(timeseries)


def _batch(seq, points):
    b = collector_pb2.Batch(host_id="h1", epoch=1, seq=seq)
    for gpu, ts, value in points:
        append_point(b, "gpu_power_watts", {"gpu": gpu}, ts=ts, count=1, sum=value, min=value, max=value, last=value)
    return b


def test_a_sample_the_engine_refuses_is_named_counted_and_the_rest_of_the_batch_is_stored(
        tmp_path, prometheus_engine, caplog):
    store = RemoteWriteStore(tmp_path, prometheus_engine.write_url, prometheus_engine.query_url, retry_for=2)
    store.write([_batch(1, [("0", T0, 1.0)])], T0)
    too_old = T0 - 60 * 86400  # past the engine's 30-day out-of-order window ("too old sample", HTTP 500 in 2.42)
    with caplog.at_level(logging.ERROR, logger="egs-collector"):
        (result,) = store.write([_batch(2, [("0", T0 + 1, 2.0), ("1", too_old, 9.0), ("2", T0 + 1, 3.0)])], T0 + 1)
    assert not result.duplicate and result.points == 3  # acknowledged: not retried forever
    assert store.state.refused_series == 5  # the refused point's five series
    assert 'gpu="1"' in store.state.last_refusal and "too old sample" in store.state.last_refusal
    assert any("refused a sample of egs_gpu_power_watts" in r.getMessage() and 'gpu="1"' in r.getMessage()
               for r in caplog.records)
    assert "5 series refused" in store.state_text()
    _, series = store.query("gpu_power_watts", start=T0 - 10, end=T0 + 10, resolution="raw")
    assert {s.labels["gpu"]: [p[5] for p in s.points] for s in series} == {"0": [1.0, 2.0], "2": [3.0]}
    store.close()


def test_an_engine_that_does_not_answer_fails_the_group_then_stores_once_it_answers(tmp_path, victoria_metrics):
    proxy = engines.DelayProxy("127.0.0.1", victoria_metrics.port)
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        store = RemoteWriteStore(tmp_path, url + "/api/v1/write", victoria_metrics.query_url, timeout=2, retry_for=1)
        store.write([_batch(1, [("0", T0, 1.0)])], T0)
        proxy.refuse(drop=True)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not store the group"):
            store.write([_batch(2, [("0", T0 + 1, 2.0)])], T0)
        assert time.monotonic() - started < 5  # retried for retry_for, not forever
        assert "unavailable since" in store.state_text()
        with pytest.raises(StoreUnavailable):  # while it is down: one try, no retry time
            store.write([_batch(2, [("0", T0 + 1, 2.0)])], T0)
        proxy.resume()
        (result,) = store.write([_batch(2, [("0", T0 + 1, 2.0)])], T0)  # the agent sends it again
        assert not result.duplicate
        assert store.state_text().endswith(": ok")
        victoria_metrics.flush()
        (s,) = store.query("gpu_power_watts", start=T0 - 10, end=T0 + 10, resolution="raw")[1]
        assert [(p[0], p[5]) for p in s.points] == [(T0, 1.0), (T0 + 1, 2.0)]
        store.close()
    finally:
        proxy.close()


def test_a_wrong_url_or_credentials_stop_the_start(tmp_path, victoria_metrics):
    from agent.collector.store import StoreConfigError
    with pytest.raises(StoreConfigError, match="remote_write_url .*/api/v1/nowhere"):
        RemoteWriteStore(tmp_path, victoria_metrics.url + "/api/v1/nowhere")


def test_a_rollup_query_longer_than_one_request_is_split_and_joined(tmp_path, victoria_metrics, monkeypatch):
    from agent.collector.store import promql
    monkeypatch.setattr(promql, "MAX_STEPS", 2)  # two buckets a query_range request
    store = RemoteWriteStore(tmp_path, victoria_metrics.write_url, victoria_metrics.query_url)
    store.write([_batch(i + 1, [("0", T0 + 10 * i + 3, float(i))]) for i in range(5)], T0)
    victoria_metrics.flush()
    (s,) = store.query("gpu_power_watts", start=T0, end=T0 + 49, resolution="10s")[1]
    assert [(p[0], p[1], p[5]) for p in s.points] == [(T0 + 10 * i, 1, float(i)) for i in range(5)]
    store.close()


@pytest.mark.parametrize("stamp_ms", [1, 1764960000000, 2 ** 50])
@pytest.mark.parametrize("label_bytes", [0, 90, 100, 110, 16000])
def test_a_series_frames_any_timestamp_and_any_label_size(stamp_ms, label_bytes):
    from agent.collector.store.promwrite import Series, varint
    series = Series.of("egs_x", {"gpu": "0", "zone": "z" * label_bytes})
    message = prometheus_remote_pb2.WriteRequest.FromString(series.timeseries(2.5, b"\x10" + varint(stamp_ms)))
    (ts,) = message.timeseries
    assert [(s.timestamp, s.value) for s in ts.samples] == [(stamp_ms, 2.5)]
    assert [(label.name, label.value) for label in ts.labels] == [("__name__", "egs_x"), ("gpu", "0")] + (
        [("zone", "z" * label_bytes)] if label_bytes else [])


def test_with_no_aggregates_written_a_point_is_one_sample_and_rollups_come_from_the_values(tmp_path, victoria_metrics):
    store = RemoteWriteStore(tmp_path, victoria_metrics.write_url, victoria_metrics.query_url, aggregates=())
    store.write([_batch(1, [("0", T0 + 1, 10.0)]), _batch(2, [("0", T0 + 2, 20.0)]), _batch(3, [("0", T0 + 12, 5.0)])], T0)
    assert store.state.samples == 3  # one sample a point
    victoria_metrics.flush()
    (s,) = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="raw")[1]
    assert s.points == [(T0 + 1, 1, 10.0, 10.0, 10.0, 10.0), (T0 + 2, 1, 20.0, 20.0, 20.0, 20.0),
                        (T0 + 12, 1, 5.0, 5.0, 5.0, 5.0)]
    (s,) = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="10s")[1]
    assert s.points == [(T0, 2, 30.0, 10.0, 20.0, 20.0), (T0 + 10, 1, 5.0, 5.0, 5.0, 5.0)]
    store.close()
