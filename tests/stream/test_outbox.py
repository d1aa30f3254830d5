"""The outbox on its own (no collector): batches, numbering, what it refuses to send."""
from __future__ import annotations

import math
import time

from agent.config import parse
from agent.events import Event
from agent.proto import collector_pb2
from agent.stream.outbox import Outbox, next_epoch
from agent.wire.columns import points_of


def _outbox(tmp_path, **extra):
    body = "".join(f"{k} = {v}\n" for k, v in extra.items())
    cfg = parse(f'[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nfsync = false\n{body}', "a.toml")
    box = Outbox(cfg.stream, tmp_path, host_id="h1", labels={"rack": "r1"}, clock=lambda: 1000.0)
    box.start()
    return box


def _spooled(box) -> list[collector_pb2.Batch]:
    return [collector_pb2.Batch.FromString(e.payload) for e in box.spool.read(box.spool.start(), limit=1000)]


def _bucket(metric="gpu_power_watts", gpu="0", value=1.0, ts=999):
    return {"metric": metric, "labels": {"gpu": gpu}, "ts": ts, "count": 1, "sum": value, "min": value,
            "max": value, "last": value}


def test_buckets_and_events_become_numbered_batches_with_identity(tmp_path):
    box = _outbox(tmp_path)
    try:
        box.put_buckets([_bucket()])
        box.flush()
        box.put_event(Event("alarm", 999.5, {"gpu": "0"}, {"state": "firing"}))
        box.flush()
        first, second = _spooled(box)
        assert (first.host_id, dict(first.labels), first.epoch) == ("h1", {"rack": "r1"}, box.epoch)
        assert (first.seq, second.seq) == (1, 2)
        p = next(p for p in points_of(first) if p.metric == "gpu_power_watts")
        assert (dict(p.labels), p.ts, p.count, p.sum) == ({"gpu": "0"}, 999.0, 1, 1.0)
        assert [(e.kind, e.data_json) for e in second.events] == [("alarm", '{"state": "firing"}')]
        assert any(p.metric == "stream_spool_backlog_records" for p in points_of(first))
    finally:
        box.stop()


def test_the_same_series_give_a_byte_identical_table_every_batch(tmp_path):
    # The collector parses a series table once per distinct bytes: an agent whose series
    # stay the same must send the same bytes, whatever order its dicts list labels in.
    box = _outbox(tmp_path)
    try:
        box.put_buckets([_bucket(gpu="0"), _bucket(gpu="1", value=2.0)])
        box.flush()
        box.put_buckets([dict(_bucket(gpu="0", value=3.0), labels={"gpu": "0"}),
                         {**_bucket(gpu="1"), "labels": dict(reversed(list({"gpu": "1"}.items())))}])
        box.flush()
        first, second = _spooled(box)
        assert first.series_table == second.series_table
        assert [p.sum for p in points_of(second) if p.metric == "gpu_power_watts"] == [3.0, 1.0]
    finally:
        box.stop()


def test_large_bucket_sets_are_split(tmp_path):
    box = _outbox(tmp_path, max_batch_points=50)
    try:
        box.put_buckets([_bucket(gpu=str(i)) for i in range(120)])
        box.flush()
        sizes = [sum(p.metric == "gpu_power_watts" for p in points_of(b)) for b in _spooled(box)]
        assert sizes == [50, 50, 20]
    finally:
        box.stop()


def test_non_finite_points_are_left_out_and_counted(tmp_path):
    box = _outbox(tmp_path)
    try:
        box.put_buckets([_bucket(value=math.nan, gpu="0"), _bucket(value=2.0, gpu="1")])
        box.flush()
        (batch,) = _spooled(box)
        assert [p.labels["gpu"] for p in points_of(batch) if p.metric == "gpu_power_watts"] == ["1"]
        assert box.status()["queue"]["nonfinite_points"] == 1
    finally:
        box.stop()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    cfg = parse('[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nqueue_size = 2\n', "a.toml")
    box = Outbox(cfg.stream, tmp_path, host_id="h1")  # not started: nothing drains the queue
    assert [box.put_buckets([_bucket()]) for _ in range(4)] == [True, True, False, False]
    assert box.status()["queue"]["queue_dropped"] == 2


def test_epochs_always_grow_even_if_the_clock_steps_back(tmp_path):
    (tmp_path / "stream-epoch").write_text(str(10**18))
    assert next_epoch(tmp_path) == 10**18 + 1
    assert next_epoch(tmp_path) == 10**18 + 2


def test_reload_moves_the_stream_to_new_endpoints(tmp_path, collector_factory, wait):
    first = collector_factory("first", plaintext=True).start()
    second = collector_factory("second", plaintext=True).start()
    text = '[agent]\nlabels = {{rack = "{rack}"}}\n[stream]\nendpoints = ["127.0.0.1:{port}"]\nplaintext = true\n'
    cfg = parse(text.format(rack="r1", port=first.ingest_port), "a.toml")
    box = Outbox(cfg.stream, tmp_path / "state", host_id="h1", labels={"rack": "r1"})
    box.start()
    try:
        box.put_buckets([_bucket(metric="test_marker", value=1, ts=time.time())])  # inside ingest's window
        box.flush()  # now, not at the end of stream.interval
        wait(lambda: first.stored_markers("h1") == [1], what="the first collector")
        # ... and acknowledged: a batch still unacknowledged at the reload is resent to the
        # new endpoint (at-least-once across collectors), which this test does not look at.
        wait(lambda: box.status()["backlog"] == 0, what="the first collector's ack")
        box.reload(parse(text.format(rack="r2", port=second.ingest_port), "a.toml"))
        box.put_buckets([_bucket(metric="test_marker", value=2, ts=time.time())])
        box.flush()
        wait(lambda: second.stored_markers("h1") == [2], what="the second collector")
        assert first.stored_markers("h1") == [1]
        assert {a.host: dict(a.labels) for a in second.agents().agents}["h1"] == {"rack": "r2"}
    finally:
        box.stop()


def _recording_file(tmp_path, rows: int):
    import gzip
    import json

    from agent.recorder.store import FORMAT
    path = tmp_path / "rec.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"format": FORMAT, "id": "r1", "gpus": [0]}) + "\n")
        f.write(json.dumps({"gpu": 0, "ts": [float(i) for i in range(rows)]}) + "\n")
    return path


def test_a_recording_event_ships_the_file_and_an_oversized_one_its_header(tmp_path):
    import json
    box = _outbox(tmp_path, max_message_bytes=64 * 1024)
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        small = _recording_file(tmp_path / "a", rows=10)
        big = _recording_file(tmp_path / "b", rows=20000)
        for path in (small, big, tmp_path / "missing.jsonl.gz"):
            box.on_event(Event("recording", 999.0, {"gpu": "0"}, {"id": "r1", "path": str(path)}))
        box.flush()
        sent = [json.loads(b.recording_json) for b in _spooled(box) if b.recording_json]
        assert [r["id"] for r in sent] == ["r1", "r1"]
        assert sent[0]["data"][0]["ts"] == [float(i) for i in range(10)] and "truncated" not in sent[0]
        assert "data" not in sent[1] and "egs-agent recordings" in sent[1]["truncated"]
        status = box._counts
        assert (status["recordings_sent"], status["recordings_truncated"], status["recording_errors"]) == (2, 1, 1)
    finally:
        box.stop()


def test_nic_state_travels_when_it_changes_and_only_then(tmp_path):
    # (Within one batch the latest state wins; flushing after each tick keeps them apart.)
    state = {"mode": "verify", "interfaces": [{"name": "eth0", "queues": 2}]}
    cfg = parse('[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nfsync = false\n', "a.toml")
    box = Outbox(cfg.stream, tmp_path, host_id="h1", clock=lambda: 1000.0,
                 status_of=lambda name: state if name == "nic" else None)
    box.start()
    try:
        for now in (1.0, 2.0, 3.0):
            box.tick(now)
            box.flush()
        state = {"mode": "verify", "interfaces": [{"name": "eth0", "queues": 4}]}
        box.tick(4.0)
        box.flush()
        sent = [b.nic_json for b in _spooled(box) if b.nic_json]
        assert [json_queues(s) for s in sent] == [2, 4]
    finally:
        box.stop()


def json_queues(text: str) -> int:
    import json
    return json.loads(text)["interfaces"][0]["queues"]


def _spooled_count(box) -> int:
    return len(box.spool.read(box.spool.start(), limit=1000))


def test_buckets_gather_for_the_interval_and_go_as_one_batch(tmp_path, wait):
    box = _outbox(tmp_path, interval='"1s"')
    try:
        t0 = time.monotonic()
        for second in range(3):  # what the daemon hands over each second, faster
            box.put_buckets([_bucket(value=float(second), ts=990 + second)])
        time.sleep(0.3)
        assert _spooled_count(box) == 0  # gathered (or still queued) until the interval is up
        wait(lambda: _spooled_count(box) == 1, timeout=10, what="the gathered buckets spooled")
        assert time.monotonic() - t0 >= 0.95  # not before the interval was up
        (batch,) = _spooled(box)
        power = sorted((p.ts, p.last) for p in points_of(batch) if p.metric == "gpu_power_watts")
        assert power == [(990.0, 0.0), (991.0, 1.0), (992.0, 2.0)]
    finally:
        box.stop()


def test_an_event_goes_at_once_with_the_buckets_gathered_before_it(tmp_path, wait):
    box = _outbox(tmp_path, interval='"60s"')
    try:
        box.put_buckets([_bucket(ts=998)])
        box.put_event(Event("xid", 999.5, {"gpu": "0"}, {"xid": 79}))
        wait(lambda: _spooled_count(box) == 1, timeout=5, what="the event's batch, well before 60 s")
        (batch,) = _spooled(box)
        assert [e.kind for e in batch.events] == ["xid"]
        assert [p.ts for p in points_of(batch) if p.metric == "gpu_power_watts"] == [998.0]
        box.put_buckets([_bucket(ts=999)])
        wait(lambda: box.status()["queue"]["gathered"] == 1, timeout=5, what="the writer to gather the buckets")
        time.sleep(0.2)
        assert _spooled_count(box) == 1  # the next buckets wait for their interval again
        assert box.flush(timeout=5) and _spooled_count(box) == 2  # ... unless flushed
    finally:
        box.stop()


def test_stop_spools_what_is_gathered(tmp_path):
    box = _outbox(tmp_path, interval='"60s"')
    box.put_buckets([_bucket(ts=997)])
    started = time.monotonic()
    box.stop()
    assert time.monotonic() - started < 5  # not the interval
    from agent.stream.spool import Spool
    spool = Spool(tmp_path / "spool", fsync=False)
    try:
        (entry,) = spool.read(spool.start(), limit=10)
        assert [p.ts for p in points_of(collector_pb2.Batch.FromString(entry.payload))
                if p.metric == "gpu_power_watts"] == [997.0]
    finally:
        spool.close()


def test_reload_changes_the_interval(tmp_path):
    box = _outbox(tmp_path, interval='"60s"')
    try:
        box.reload(parse('[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nfsync = false\ninterval = "1s"\n',
                         "a.toml"))
        assert box.status()["interval_s"] == 1.0
    finally:
        box.stop()


def test_a_nic_state_holding_a_nan_is_sent_once_not_every_tick(tmp_path):
    # A NaN is unequal to itself, so the state compares unequal every tick; its JSON does not.
    state = {"mode": "verify", "drift": float("nan")}
    cfg = parse('[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nfsync = false\n', "a.toml")
    box = Outbox(cfg.stream, tmp_path, host_id="h1", clock=lambda: 1000.0,
                 status_of=lambda name: dict(state) if name == "nic" else None)
    box.start()
    try:
        for now in (1.0, 2.0, 3.0):
            box.tick(now)
            box.flush()
        assert len([b for b in _spooled(box) if b.nic_json]) == 1
    finally:
        box.stop()
