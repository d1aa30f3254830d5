"""The outbox's loss accounting, its series-key cache and its client swap on reload.

Every kind of loss must show up, under its own name, in `status()` and in the figures the
next batch carries (header `dropped_records` and one metric per kind), and the two must agree.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import threading

import pytest

from agent.config import parse
from agent.events import Event
from agent.proto import collector_pb2
from agent.stream.outbox import Outbox
from agent.wire.columns import SeriesEntries, encode_entry, layout, points_of

TEXT = '[stream]\nendpoints = ["127.0.0.1:{port}"]\nplaintext = true\nfsync = false\n{extra}'


def _cfg(port=9, extra=""):
    return parse(TEXT.format(port=port, extra=extra), "a.toml")


def _bucket(value=1.0, gpu="0", metric="gpu_power_watts"):
    return {"metric": metric, "labels": {"gpu": gpu}, "ts": 999, "count": 1, "sum": value, "min": value,
            "max": value, "last": value}


def _spooled(box) -> list[collector_pb2.Batch]:
    return [collector_pb2.Batch.FromString(e.payload) for e in box.spool.read(box.spool.start(), limit=1000)]


def _figure(batch, name) -> float:
    (point,) = [p for p in points_of(batch) if p.metric == name]
    return point.last


@pytest.mark.parametrize("where", ["append", "write"])
def test_a_full_disk_loses_that_drain_counts_it_and_the_next_batch_still_goes(tmp_path, monkeypatch, where):
    box = Outbox(_cfg().stream, tmp_path, host_id="h1", clock=lambda: 1000.0)
    box.start()
    try:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        # "append": the spool itself raises OSError; "write": the real path, where the spool
        # turns the failed os.write on its segment into a SpoolError.
        if where == "append":
            monkeypatch.setattr(box.spool, "append", full)
        else:
            real_write = os.write
            monkeypatch.setattr(os, "write", lambda fd, data: full() if fd == box.spool._fd else real_write(fd, data))
        box.put_buckets([_bucket(1.0)])
        assert box.flush(5)
        monkeypatch.undo()  # the disk has room again
        box.put_buckets([_bucket(2.0)])
        assert box.flush(5)

        (batch,) = _spooled(box)
        assert _figure(batch, "gpu_power_watts") == 2.0
        assert batch.status.dropped_records == 1
        assert _figure(batch, "stream_spool_write_failed_items_total") == 1
        assert _figure(batch, "stream_dropped_total") == 1
        st = box.status()
        assert (st["drops"]["spool_write_failed"], st["dropped"]) == (1, 1)
        assert st["metrics"]["stream_spool_write_failed_items_total"] == 1
        assert box._writer.is_alive()
    finally:
        box.stop()


def test_every_kind_of_loss_is_in_status_and_in_the_batch_figures_alike(tmp_path):
    box = Outbox(_cfg(extra="queue_size = 2\n").stream, tmp_path, host_id="h1", clock=lambda: 1000.0)
    # Queue: nothing drains before start(), so the third and fourth puts are dropped.
    assert [box.put_buckets([_bucket()]) for _ in range(4)] == [True, True, False, False]
    box.start()
    try:
        assert box.flush(5)
        # Losses the outbox itself causes: a NaN point, a recording that cannot be read.
        box.put_buckets([_bucket(math.nan, gpu="1"), _bucket(math.inf, gpu="2")])
        assert box.flush(5)  # (the queue holds two: the event and its file go in next, alone)
        box.on_event(Event("recording", 999.0, {"gpu": "0"}, {"id": "r1", "path": str(tmp_path / "gone.gz")}))
        assert box.flush(5)
        # Losses counted by the spool and the client (their own tests make them happen for
        # real): the outbox must add them up the same way.
        box.spool.counters.update(dropped_records=3, corrupt_records=5, torn_tails=7)
        box.client.state.update(rejected_batches=11, oversized_batches=13)
        box.put_buckets([_bucket(4.0)])
        assert box.flush(5)

        expected = {"spool_full": 3, "spool_corrupt": 5, "spool_torn": 7, "spool_write_failed": 0,
                    "spool_missing": 0, "spool_unreadable": 0, "invalid_items": 0,
                    "queue_full": 2, "nonfinite_points": 2, "rejected_batches": 11, "oversized_batches": 13,
                    "recording_errors": 1}
        st = box.status()
        assert st["drops"] == expected
        assert st["dropped"] == sum(expected.values()) == 44
        last = _spooled(box)[-1]
        assert last.status.dropped_records == 44
        figures = {"stream_spool_dropped_records_total": 3, "stream_spool_corrupt_records_total": 5,
                   "stream_spool_torn_tails_total": 7, "stream_spool_write_failed_items_total": 0,
                   "stream_queue_dropped_total": 2, "stream_nonfinite_points_total": 2,
                   "stream_rejected_batches_total": 24, "stream_recording_errors_total": 1,
                   "stream_dropped_total": 44}
        assert {name: _figure(last, name) for name in figures} == figures
        assert {name: st["metrics"][name] for name in figures} == figures
    finally:
        box.stop()


def test_an_item_that_cannot_be_encoded_is_left_out_named_and_counted(tmp_path, caplog):
    # One bad bucket or event must not cost the others drained with it, nor the writer.
    box = Outbox(_cfg().stream, tmp_path, host_id="h1", clock=lambda: 1000.0)
    box.put_buckets([_bucket(1.0), dict(_bucket(2.0, gpu="1"), ts="soon"), dict(_bucket(2.0, gpu="3"), count=-1)])
    box.put_event(Event("alarm", 999.0, None, {"state": "firing"}))
    box.put_buckets([_bucket(3.0, gpu="2")])
    with caplog.at_level(logging.ERROR, logger="egs.stream"):
        box.start()  # all four drain together
        try:
            assert box.flush(5)
            (batch,) = _spooled(box)
            assert sorted(p.last for p in points_of(batch) if p.metric == "gpu_power_watts") == [1.0, 3.0]
            assert list(batch.events) == []
            st = box.status()
            assert (st["drops"]["invalid_items"], st["dropped"]) == (3, 3)
            assert box._writer.is_alive()
        finally:
            box.stop()
    assert "gpu_power_watts" in caplog.text and "could not convert string to float: 'soon'" in caplog.text
    assert "alarm event" in caplog.text and "NoneType" in caplog.text
    assert "count -1 is not a uint64" in caplog.text


def test_the_writer_outlives_an_unexpected_error_and_says_so(tmp_path, monkeypatch, caplog):
    box = Outbox(_cfg().stream, tmp_path, host_id="h1", clock=lambda: 1000.0)
    box.start()
    try:
        build = box._build
        monkeypatch.setattr(box, "_build", lambda items: (_ for _ in ()).throw(RuntimeError("a bug")))
        with caplog.at_level(logging.ERROR, logger="egs.stream"):
            box.put_buckets([_bucket(1.0)])
            assert box.flush(5)
        assert "a bug" in caplog.text and "1 items" in caplog.text
        monkeypatch.setattr(box, "_build", build)
        box.put_buckets([_bucket(2.0)])
        assert box.flush(5)
        (batch,) = _spooled(box)
        assert _figure(batch, "gpu_power_watts") == 2.0
        assert box.status()["drops"]["spool_write_failed"] == 1
    finally:
        box.stop()


def test_every_outbox_figure_is_a_registered_metric(tmp_path):
    from agent.metrics import BY_NAME
    box = Outbox(_cfg().stream, tmp_path, host_id="h1")
    box.start()
    try:
        names = set(box.status()["metrics"])
        assert names - set(BY_NAME) == set()
        assert {"stream_spool_write_failed_items_total", "stream_nonfinite_points_total",
                "stream_recording_errors_total", "stream_dropped_total"} <= names
    finally:
        box.stop()


def test_series_entries_are_remembered_yet_follow_the_labels():
    entries = SeriesEntries()
    labels = {"gpu": 0, "model": "H100"}  # a non-string value is spelled as a string
    entry = entries("m", labels)
    assert layout(entry) == (("m",), ({"gpu": "0", "model": "H100"},))
    assert entries("m", labels) is entry  # the same label set: not encoded again
    assert entries("m", {"model": "H100", "gpu": 0}) == entry  # order does not change the bytes
    labels["gpu"] = 1  # changed in place: a new entry, not the remembered one
    assert entries("m", labels) == encode_entry("m", {"gpu": "1", "model": "H100"})
    assert entries("other", labels) != entries("m", labels)
    assert layout(entries("m", {"x": ["unhashable"]})).labels == ({"x": "['unhashable']"},)


def test_series_entries_stay_bounded_when_label_sets_come_and_go():
    entries = SeriesEntries()
    for i in range(SeriesEntries.KEPT + 10):
        assert layout(entries("m", {"pid": str(i)})).labels == ({"pid": str(i)},)
    assert len(entries._known) <= SeriesEntries.KEPT


def test_reload_before_start_leaves_the_start_to_build_the_client_on_the_new_settings(tmp_path):
    box = Outbox(_cfg(port=9).stream, tmp_path, host_id="h1")
    box.reload(_cfg(port=10))
    assert box.client is None
    box.start()
    try:
        assert box.client.endpoints == ["127.0.0.1:10"]
        assert box.client._thread.is_alive()
    finally:
        box.stop()


def test_reload_stops_the_old_client_and_starts_the_new_one_while_the_writer_runs(tmp_path):
    box = Outbox(_cfg(port=9).stream, tmp_path, host_id="h1")
    box.start()
    errors: list[BaseException] = []
    done = threading.Event()

    def produce():
        try:
            while not done.is_set():
                box.put_buckets([_bucket()])
                box.status()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        clients = [box.client]
        for port in (10, 11, 12):
            box.reload(_cfg(port=port))
            clients.append(box.client)
        done.set()
        producer.join(5)
        assert box.flush(5)
        assert errors == []
        assert box._writer.is_alive()
        assert [c.endpoints for c in clients] == [["127.0.0.1:9"], ["127.0.0.1:10"], ["127.0.0.1:11"], ["127.0.0.1:12"]]
        assert [c._thread.is_alive() for c in clients] == [False, False, False, True]
    finally:
        done.set()
        box.stop()
    assert not box.client._thread.is_alive()
