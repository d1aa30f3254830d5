"""The SQLite store: exactly-once by (host, epoch, seq), rollups, retention, queries."""
from __future__ import annotations

import pytest

from agent.collector.ingest import check
from agent.collector.store import wal
from agent.collector.store.sqlite import SQLiteStore
from agent.proto import collector_pb2
from agent.wire.columns import append_point, points_of
from store_file import raw_points

T0 = 1_699_999_980.0  # a round 10 s and 60 s boundary


def _batch(host="h1", epoch=1, seq=1, ts=T0, value=1.0, gpu="0", metric="gpu_power_watts"):
    b = collector_pb2.Batch(host_id=host, epoch=epoch, seq=seq)
    b.labels["zone"] = "z1"
    append_point(b, metric, {"gpu": gpu}, ts=ts, count=2, sum=2 * value, min=value - 1, max=value + 1, last=value)
    return b


def test_a_replayed_batch_is_acknowledged_as_duplicate_and_not_stored_again(tmp_path):
    store = SQLiteStore(tmp_path)
    assert [r.duplicate for r in store.write([_batch(seq=1), _batch(seq=2, ts=T0 + 1)], T0)] == [False, False]
    assert [r.duplicate for r in store.write([_batch(seq=2, ts=T0 + 1), _batch(seq=3, ts=T0 + 2)], T0)] == [True, False]
    assert len(raw_points(store.path, None)) == 3


def test_duplicates_within_one_commit_group_are_caught(tmp_path):
    store = SQLiteStore(tmp_path)
    results = store.write([_batch(seq=5), _batch(seq=5)], T0)
    assert [r.duplicate for r in results] == [False, True]
    assert len(raw_points(store.path, None)) == 1


def test_dedup_survives_a_restart_and_is_per_host_and_epoch(tmp_path):
    store = SQLiteStore(tmp_path)
    store.write([_batch(seq=1)], T0)
    store.close()
    store = SQLiteStore(tmp_path)
    results = store.write([_batch(seq=1), _batch(seq=1, epoch=2), _batch(seq=1, host="h2")], T0)
    assert [r.duplicate for r in results] == [True, False, False]


def test_rollups_keep_min_avg_max_per_10s_and_1m_also_for_late_points(tmp_path):
    store = SQLiteStore(tmp_path, flush_interval=0)
    store.write([_batch(seq=1, ts=T0 + 1, value=10), _batch(seq=2, ts=T0 + 2, value=20)], T0)
    store.write([_batch(seq=3, ts=T0 + 15, value=30)], T0)
    store.write([_batch(epoch=2, seq=1, ts=T0, value=40)], T0)  # a replay, late, older ts
    store.flush()
    res, series = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="10s")
    assert res == "10s"
    (s,) = series
    assert s.labels == {"gpu": "0"}
    by_ts = {p[0]: p for p in s.points}
    ts, count, total, lo, hi, last = by_ts[T0]
    assert (count, total / count, lo, hi, last) == (6, (10 + 20 + 40) / 3, 9, 41, 20)  # last = newest ts
    assert by_ts[T0 + 10][1] == 2
    (m,) = store.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="1m")[1]
    assert [(p[1], p[3], p[4]) for p in m.points] == [(8, 9, 41)]


def test_rollups_lost_in_a_crash_are_rebuilt_once_from_the_stored_batches(tmp_path):
    store = SQLiteStore(tmp_path, flush_interval=3600)
    store.write([_batch(seq=1, ts=T0 + 1, value=10)], T0)
    store.flush()
    store.write([_batch(seq=2, ts=T0 + 2, value=20), _batch(seq=3, ts=T0 + 3, value=30)], T0)
    # The process dies here: seq 2 and 3 are committed, their rollups only in memory.
    after = SQLiteStore(tmp_path, flush_interval=0)
    assert after.recovered == 2
    after.flush()
    (s,) = after.query("gpu_power_watts", start=T0, end=T0 + 9, resolution="10s")[1]
    assert [(p[1], p[2] / p[1], p[5]) for p in s.points] == [(6, 20.0, 30)]
    again = SQLiteStore(tmp_path, flush_interval=0)  # a second restart folds nothing twice
    assert again.recovered == 0
    again.flush()
    assert again.query("gpu_power_watts", start=T0, end=T0 + 9, resolution="10s")[1][0].points[0][1] == 6


def test_a_flush_cut_short_by_a_crash_is_finished_once_on_restart(tmp_path):
    # 20 single-series batches -> 20 r10 rows (one per host, layout and bucket) + their
    # minutes, written 7 rows per commit.
    store = SQLiteStore(tmp_path, flush_interval=0, chunk_rows=7)
    store.write([_batch(seq=1, ts=T0 + 1, value=1, gpu=str(g)) for g in range(20)][:1], T0)
    many = [_batch(seq=s, ts=T0 + 2, value=2, gpu=str(s)) for s in range(2, 21)]
    store.write(many, T0)  # freezes the first accumulators, later writes carry chunks
    store.write([_batch(seq=21, ts=T0 + 3, value=3, gpu="0")], T0)  # freeze the rest
    store.write([_batch(seq=22, ts=T0 + 12, value=4, gpu="0")], T0)  # chunk 1 of the second flush
    assert store.rollups.flushing is not None and 0 < store.rollups.flushing.done10 < len(store.rollups.flushing.closed10), "mid-flush"
    after = SQLiteStore(tmp_path, flush_interval=3600)  # the crash: restart from the file
    after.flush()
    _, series = after.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="10s")
    counts = {(s.labels["gpu"], p[0]): p[1] for s in series for p in s.points}
    assert counts[("0", T0)] == 2 * 2 and counts[("0", T0 + 10)] == 2
    assert all(counts[(str(g), T0)] == 2 for g in range(2, 21))
    (m,) = after.query("gpu_power_watts", labels={"gpu": "0"}, start=T0, end=T0 + 59, resolution="1m")[1]
    assert m.points[0][1] == 6


def test_raw_resolution_gives_every_point(tmp_path):
    store = SQLiteStore(tmp_path)
    store.write([_batch(seq=i, ts=T0 + i, value=i) for i in range(1, 6)], T0)
    (s,) = store.query("gpu_power_watts", start=T0, end=T0 + 60, resolution="raw")[1]
    assert [(p[0], p[5]) for p in s.points] == [(T0 + i, i) for i in range(1, 6)]


def test_query_filters_by_host_and_labels(tmp_path):
    store = SQLiteStore(tmp_path)
    store.write([_batch(seq=1, gpu="0"), _batch(seq=2, gpu="1", ts=T0 + 1), _batch(host="h2", seq=1)], T0)
    _, series = store.query("gpu_power_watts", host="h1", labels={"gpu": "1"}, start=T0 - 1, end=T0 + 5,
                            resolution="raw")
    assert [(s.host, s.labels["gpu"], len(s.points)) for s in series] == [("h1", "1", 1)]


def test_retention_drops_whole_partitions(tmp_path):
    store = SQLiteStore(tmp_path, retention={"raw": 3600}, flush_interval=0)
    store.write([_batch(seq=1, ts=T0), _batch(seq=2, ts=T0 + 3 * 3600)], T0)
    store.flush()
    done = store.cleanup(T0 + 3 * 3600 + 10)
    assert [t for t in done["dropped_tables"] if t.startswith("raw_")] == [f"raw_{int(T0 // 3600)}"]
    assert len(raw_points(store.path, None)) == 1
    # The rollups of the same hour stay (their retention is longer).
    assert store.query("gpu_power_watts", start=T0, end=T0 + 10, resolution="10s")[1][0].points


def test_agents_keep_the_latest_status(tmp_path):
    store = SQLiteStore(tmp_path)
    b = _batch(seq=1)
    b.status.spool_backlog_records, b.status.dropped_records, b.status.health = 7, 3, "reconnecting"
    b.nic_json = '{"eth0": {"queues": 4}}'
    store.write([b], T0)
    store.write([_batch(seq=2)], T0 + 1)
    (a,) = store.agents()
    assert (a["host"], a["last_seq"], a["labels"], a["nic"]) == ("h1", 2, {"zone": "z1"}, {"eth0": {"queues": 4}})


def test_events_are_stored_and_found(tmp_path):
    store = SQLiteStore(tmp_path)
    b = _batch(seq=1)
    b.events.add(kind="alarm", ts=T0, data_json='{"state": "firing"}').labels["gpu"] = "0"
    store.write([b], T0)
    assert store.events(T0 - 1, kinds=["alarm"]) == [
        {"host": "h1", "ts": T0, "kind": "alarm", "labels": {"gpu": "0"}, "data": {"state": "firing"}}]


def _refusal(batch) -> str:
    with pytest.raises(ValueError) as e:
        check(batch, T0)
    return str(e.value)


def test_malformed_batches_are_named():
    assert check(_batch(), T0).layout.metrics == ("gpu_power_watts",)
    assert "host_id" in _refusal(collector_pb2.Batch(epoch=1, seq=1))
    assert "seq" in _refusal(collector_pb2.Batch(host_id="h", epoch=1))
    bad = _batch()
    append_point(bad, "gpu_temperature_celsius", {"gpu": "0"}, ts=T0, max=float("inf"))
    assert "point 1 (gpu_temperature_celsius) has a non-finite max" in _refusal(bad)
    nan = _batch()
    nan.ts[0] = float("nan")
    assert "point 0 (gpu_power_watts) has a non-finite ts" in _refusal(nan)
    short = _batch()
    del short.last[0]
    assert "column last has 0 values, series_table has 1 entries" in _refusal(short)
    garbage = _batch()
    garbage.series_table = b"\xff\xff\xff"
    assert "series_table does not parse" in _refusal(garbage)
    nameless = _batch()
    append_point(nameless, "", {}, ts=T0)
    assert "entry 1 has no metric name" in _refusal(nameless)
    ev = _batch()
    ev.events.add(kind="alarm", ts=T0, data_json="[1]")
    assert "JSON object" in _refusal(ev)
    ev.events[0].data_json = "{not json"
    assert "data_json is not JSON" in _refusal(ev)


def test_huge_finite_values_are_not_mistaken_for_non_finite_ones():
    big = collector_pb2.Batch(host_id="h1", epoch=1, seq=1)
    append_point(big, "gpu_energy_joules_total", ts=T0, sum=1e308, min=1e308, max=1e308, last=1e308)
    assert len(check(big, T0)) == 1  # the check's running sum overflows; every value is finite


def _mixed_batches():
    """Batches that take every fold path: a steady layout, a changed layout, a batch
    spanning two 10 s buckets, a late replay (older ts), a series twice in one batch."""
    import random
    rnd = random.Random(7)
    out, seq = [], 0
    for second in range(0, 40):
        for host in ("h1", "h2"):
            seq += 1
            b = collector_pb2.Batch(host_id=host, epoch=1, seq=seq)
            gpus = ["0", "1", "2"] if second % 13 else ["2", "0"]  # a layout change now and then
            for g in gpus:
                ts = T0 + second + (9.5 if second % 17 == 5 and g == "2" else 0)  # spans buckets
                v = rnd.uniform(-50, 50)
                append_point(b, "gpu_power_watts", {"gpu": g}, ts=ts, count=1, sum=v, min=v, max=v, last=v)
            if second == 21:  # the same series twice in one batch
                append_point(b, "gpu_power_watts", {"gpu": "1"}, ts=T0 + 1, count=1, sum=3, min=3, max=3, last=3)
            out.append(b)
    late = collector_pb2.Batch(host_id="h1", epoch=2, seq=1)
    for g in ("0", "1", "2"):  # h1's usual layout: merged into a group holding newer points
        append_point(late, "gpu_power_watts", {"gpu": g}, ts=T0 + 3, count=1, sum=-99, min=-99, max=-99, last=-99)
    out.append(late)
    return out


def _expected(batches, width):
    want = {}
    for b in batches:
        for p in points_of(b):
            k = (b.host_id, p.labels["gpu"], int(p.ts // width) * width)
            c, s, lo, hi, last, last_ts = want.get(k, (0, 0.0, float("inf"), float("-inf"), None, float("-inf")))
            if p.ts >= last_ts:
                last, last_ts = p.last, p.ts
            want[k] = (c + p.count, s + p.sum, min(lo, p.min), max(hi, p.max), last, last_ts)
    return {k: v[:5] for k, v in want.items()}


def _found(store, resolution):
    _, series = store.query("gpu_power_watts", start=T0 - 60, end=T0 + 120, resolution=resolution)
    return {(s.host, s.labels["gpu"], p[0]): (p[1], p[2], p[3], p[4], p[5]) for s in series for p in s.points}


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0] and a[k][2:] == b[k][2:], k
        assert abs(a[k][1] - b[k][1]) < 1e-9, k


def test_rollups_equal_a_plain_computation_whatever_path_the_fold_takes(tmp_path):
    batches = _mixed_batches()
    store = SQLiteStore(tmp_path, flush_interval=3600)  # one flush: every batch meets its group
    for i in range(0, len(batches), 3):
        store.write(batches[i:i + 3], T0)
    store.flush()
    _close(_found(store, "10s"), _expected(batches, 10))
    _close(_found(store, "1m"), _expected(batches, 60))


def test_rollups_rebuilt_after_a_crash_mid_flush_equal_a_plain_computation(tmp_path):
    batches = _mixed_batches()
    store = SQLiteStore(tmp_path, flush_interval=0, chunk_rows=1)
    for i in range(0, len(batches), 3):
        store.write(batches[i:i + 3], T0)
    assert store.rollups.flushing is not None, "mid-flush when the process dies"
    after = SQLiteStore(tmp_path, flush_interval=3600)
    after.flush()
    _close(_found(after, "10s"), _expected(batches, 10))
    _close(_found(after, "1m"), _expected(batches, 60))


def test_a_rollup_row_holds_a_hosts_series_for_one_bucket(tmp_path):
    store = SQLiteStore(tmp_path, flush_interval=3600)
    for seq, host in enumerate(("h1", "h2"), 1):
        b = collector_pb2.Batch(host_id=host, epoch=1, seq=seq)
        for gpu in "0123":
            append_point(b, "gpu_power_watts", {"gpu": gpu}, ts=T0 + seq, count=1, sum=1, min=1, max=1, last=1)
        store.write([b], T0)
    store.flush()
    db = store._db
    assert db.execute(f"SELECT host, ts FROM r10_{int(T0 // 86400)} ORDER BY host").fetchall() == [("h1", T0), ("h2", T0)]
    assert db.execute(f"SELECT count(*) FROM r60_{int(T0 // (7 * 86400))}").fetchone()[0] == 2
    _, series = store.query("gpu_power_watts", host="h2", start=T0, end=T0 + 9, resolution="10s")
    assert [(s.labels["gpu"], s.points) for s in series] == [(g, [(T0, 1, 1.0, 1.0, 1.0, 1.0)]) for g in "0123"]


def test_a_store_with_rollups_of_the_earlier_per_series_format_is_refused_by_name(tmp_path):
    import sqlite3
    db = sqlite3.connect(tmp_path / "collector.db")
    db.execute("CREATE TABLE r10_19675(series INTEGER NOT NULL, ts INTEGER NOT NULL, count INTEGER, "
               "PRIMARY KEY(series, ts)) WITHOUT ROWID")
    db.close()
    with pytest.raises(ValueError, match="r10_19675 has the per-series format"):
        SQLiteStore(tmp_path)


@pytest.mark.parametrize("seed", range(8))
def test_rollups_equal_a_plain_computation_whatever_the_flushes_and_crashes(tmp_path, seed):
    # The collector's clock moves 2 s a step, so some buckets are still open at each flush;
    # points arrive late now and then (a replay), layouts change, and the process "dies"
    # (the store is opened again from its file) at random moments, mid-flush included.
    import random
    rnd = random.Random(seed)
    now = [T0]
    chunk = rnd.choice([1, 2, 5])

    def open_store():
        return SQLiteStore(tmp_path, flush_interval=rnd.choice([0, 0, 4]), chunk_rows=chunk, clock=lambda: now[0])

    store, batches, seq, crashes = open_store(), [], 0, 0
    for step in range(120):
        now[0] = T0 + 2 * step
        group = []
        for host in ("h1", "h2"):
            seq += 1
            b = collector_pb2.Batch(host_id=host, epoch=1, seq=seq)
            gpus = "012" if rnd.random() < 0.8 else "20"
            for g in gpus:
                v = rnd.uniform(-50, 50)
                # Distinct fractions: no two points of a series share a ts, so "last" is
                # never a tie (between equal timestamps the store picks either).
                late = rnd.choice([0, 0, 0, 0, 0.5, 7.25, 30.75, 150.125])
                append_point(b, "gpu_power_watts", {"gpu": g}, ts=now[0] - late, count=1, sum=v, min=v, max=v, last=v)
            group.append(b)
        store.write(group, now[0])
        batches += group
        if rnd.random() < 0.08:
            store, crashes = open_store(), crashes + 1
    store = open_store()
    store.flush()
    assert crashes > 0
    for resolution, width in (("10s", 10), ("1m", 60)):
        _, series = store.query("gpu_power_watts", start=T0 - 600, end=T0 + 600, resolution=resolution)
        found = {(s.host, s.labels["gpu"], p[0]): (p[1], p[2], p[3], p[4], p[5]) for s in series for p in s.points}
        _close(found, _expected(batches, width))


def test_a_minute_still_open_keeps_its_oldest_points_through_a_crash(tmp_path):
    # Minute T0 gets its 10 s groups out of order: bucket T0+20 (a late point, arrival 2)
    # closes at one flush, bucket T0+40 (arrival 1) at the next. The crash comes while the
    # minute is still open: the point of arrival 1 must be folded again. (flush_interval 0:
    # each write starts a flush or writes the one under way.)
    now = [T0 + 48]  # 10 s buckets before T0+40 are closed, minutes before T0
    store = SQLiteStore(tmp_path, flush_interval=0, chunk_rows=100, clock=lambda: now[0])
    store.write([_batch(seq=1, ts=T0 + 41, value=1)], now[0])  # an empty flush starts
    store.write([_batch(seq=2, ts=T0 + 25, value=2)], now[0])  # ...and is written
    store.write([_batch(seq=3, ts=T0 + 49, value=3)], now[0])  # freezes bucket T0+20 (arrival 2)
    now[0] = T0 + 58  # buckets before T0+50 closed, minute T0 still open
    store.write([_batch(seq=4, ts=T0 + 58, value=4)], now[0])  # writes it: minute T0 starts with arrival 2
    store.write([_batch(seq=5, ts=T0 + 59, value=5)], now[0])  # freezes bucket T0+40 (arrivals 1, 3)
    store.write([_batch(seq=6, ts=T0 + 59, value=6)], now[0])  # writes it into the open minute
    assert store.rollups.flushing is None and store.rollups.marks.held == 1, "the minute holds arrival 1 when the process dies"
    after = SQLiteStore(tmp_path, flush_interval=3600)
    after.flush()
    (m,) = after.query("gpu_power_watts", start=T0, end=T0 + 59, resolution="1m")[1]
    assert [(p[1], p[2]) for p in m.points] == [(12, 2 * (1 + 2 + 3 + 4 + 5 + 6))]


def test_a_failing_checkpoint_is_logged_once_and_retried(tmp_path, caplog, monkeypatch):
    import sqlite3
    import threading
    import time
    failures, mine = [], []
    real = SQLiteStore._connect

    def flaky(self):
        # Only this test's store: stores other tests left open have checkpoint threads too.
        if self in mine and threading.current_thread().name == "egs-checkpoint" and len(failures) < 3:
            failures.append(time.monotonic())
            raise sqlite3.OperationalError("disk I/O error")
        return real(self)

    monkeypatch.setattr(SQLiteStore, "_connect", flaky)
    store = SQLiteStore(tmp_path)  # its checkpoint thread first connects a second later
    mine.append(store)
    try:
        deadline = time.monotonic() + 10
        while len(failures) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(failures) == 3, "the checkpoint thread kept trying after a failure"
        store.write([_batch(seq=1)], T0)  # the store itself carries on
    finally:
        store.close()
    said = [r.getMessage() for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]
    assert said == ["store: WAL checkpoint failed (retrying every second): disk I/O error"]


def test_the_wal_starts_over_while_commits_keep_coming(tmp_path, monkeypatch):
    # Passive checkpoints alone never complete under continuous commits: the WAL then only
    # grows (measured: 333 MB after 4 s of this loop). Past WAL_RESTART_BYTES the checkpoint
    # thread makes it start over, and journal_size_limit trims the file.
    import time
    monkeypatch.setattr(wal, "WAL_RESTART_BYTES", 1 << 20)
    store = SQLiteStore(tmp_path)
    wal_file = tmp_path / "collector.db-wal"
    sizes, seq = [], 0
    try:
        end, sample = time.monotonic() + 4, time.monotonic() + 0.25
        while time.monotonic() < end:
            seq += 1
            store.write([_batch(seq=seq, ts=T0 + seq)], T0)
            if time.monotonic() >= sample:
                sizes.append(wal_file.stat().st_size)
                sample += 0.25
    finally:
        store.close()
    assert any(later < earlier for earlier, later in zip(sizes, sizes[1:])), sizes


def test_a_partition_created_by_a_rolled_back_write_is_created_again(tmp_path, monkeypatch):
    # The first batch of a new hour creates raw_<hour>; the transaction then fails (here: the
    # ledger's rows, as a full disk would) and takes the new table with it. The next write into
    # that hour must create it again, not insert into a table that is not there.
    from agent.collector.store import ledger
    store = SQLiteStore(tmp_path)
    store.write([_batch(seq=1, ts=T0)], T0)
    real = ledger.Entries.write

    def failing(self, db, received):
        raise OSError("disk full (injected)")
    monkeypatch.setattr(ledger.Entries, "write", failing)
    with pytest.raises(OSError):
        store.write([_batch(seq=2, ts=T0 + 3600)], T0)
    monkeypatch.setattr(ledger.Entries, "write", real)
    assert [r.duplicate for r in store.write([_batch(seq=2, ts=T0 + 3600)], T0)] == [False]
    assert len(raw_points(store.path, None)) == 2
