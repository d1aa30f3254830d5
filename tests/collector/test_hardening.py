"""What a hostile or broken client can make the collector do (issue: hardening): every case
an adversarial pass found, each against a real collector process where the harm was real
(memory, a failed commit, a core spinning), and the bounds of docs/collector.md, "Bounds"."""
from __future__ import annotations

import asyncio
import math
import sqlite3
import time

import grpc
import pytest

from agent.collector.ingest import Limits, Refused, check
from agent.collector.server import Committer
from agent.collector.store import QueryBounds, QueryTooLarge, StoreRefused, WriteResult
from agent.collector.store.reader import SQLiteReader
from agent.collector.store.sqlite import SQLiteStore
from agent.proto import collector_pb2
from agent.stream.client import PUBLISH, REJECTED_TRAILER
from agent.wire.columns import append_point

pytestmark = pytest.mark.timeout(120)
INT64_OVER = 1 << 63


@pytest.fixture(scope="module", autouse=True)
def client_certs(pki):
    pki.issue("host-a", "host-a")
    pki.issue("ip-only", None, ips=["127.0.0.1"])


@pytest.fixture(scope="module")
def col(module_procs):
    make_collector, _, _ = module_procs
    return make_collector("hardening", extra="").start()


def _publish(col, pki, messages: list[bytes], cert: str = "host-a"):
    """Publish raw messages on one stream: (acks, the RpcError or None, trailers)."""
    creds = grpc.ssl_channel_credentials((pki.root / "ca.crt").read_bytes(), (pki.root / f"{cert}.key").read_bytes(),
                                         (pki.root / f"{cert}.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{col.ingest_port}", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        call = ch.stream_stream(PUBLISH, request_serializer=None,
                                response_deserializer=collector_pb2.Ack.FromString)(iter(messages), timeout=20)
        acks, error = [], None
        try:
            for ack in call:
                acks.append((ack.epoch, ack.seq))
        except grpc.RpcError as e:
            error = e
        return acks, error, dict(call.trailing_metadata() or ())


def _batch(seq: int, epoch: int = 1, host: str = "host-a", ts: float | None = None, value: float = 1.0,
           created: float | None = None):
    b = collector_pb2.Batch(host_id=host, epoch=epoch, seq=seq, created=time.time() if created is None else created)
    append_point(b, "test_marker", ts=time.time() if ts is None else ts, count=1, sum=value, min=value, max=value,
                 last=value)
    return b


def _partition_names(col) -> set[str]:
    db = sqlite3.connect(f"file:{col.data / 'collector.db'}?mode=ro", uri=True)
    try:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


# --- ingest: timestamps and poison batches (cases 2 and 3) -----------------------------------

def _poison_cases():
    now = time.time()
    far = _batch(1, epoch=101, ts=1e300)
    negative = _batch(1, epoch=102, ts=-5.0)
    old = _batch(1, epoch=103, ts=now - 400 * 86400)
    nan_event = _batch(1, epoch=104)
    nan_event.events.add(kind="alarm", ts=math.nan, data_json="{}")
    big_epoch = _batch(1, epoch=INT64_OVER)
    big_seq = _batch(INT64_OVER, epoch=105)
    nan_created = _batch(1, epoch=106)
    nan_created.created = math.nan
    huge_status = _batch(1, epoch=107)
    huge_status.status.dropped_records = INT64_OVER
    huge_count = _batch(1, epoch=108)
    huge_count.count[0] = (1 << 64) - 1
    nan_json = _batch(1, epoch=109)
    nan_json.events.add(kind="alarm", ts=now, data_json='{"v": NaN}')
    return {"point ts 1e300": (far, "outside the accepted window"), "point ts < 0": (negative, "outside"),
            "point ts 400 days old": (old, "outside"), "event ts NaN": (nan_event, "not a finite number"),
            "epoch 2^63": (big_epoch, "2^63"), "seq 2^63": (big_seq, "2^63"),
            "created NaN": (nan_created, "created is not a finite number"),
            "status counter 2^63": (huge_status, "dropped_records"), "count 2^63": (huge_count, "count"),
            "NaN in data_json": (nan_json, "not JSON")}


@pytest.mark.parametrize("case", list(_poison_cases()))
def test_a_poison_batch_is_refused_for_its_sender_with_the_trailer_and_bystanders_are_stored(col, pki, case):
    bad, reason = _poison_cases()[case]
    before = _batch(1, epoch=2000 + list(_poison_cases()).index(case))
    acks, error, trailers = _publish(col, pki, [before.SerializeToString(), bad.SerializeToString()])
    assert acks == [(before.epoch, before.seq)]
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert reason in error.details()
    assert trailers[REJECTED_TRAILER] == f"{bad.epoch}/{bad.seq}"
    # The collector is still there and stores what comes next.
    after = _batch(2, epoch=before.epoch)
    assert _publish(col, pki, [after.SerializeToString()])[0] == [(after.epoch, 2)]
    assert all(n.partition("_")[2].isdigit() for n in _partition_names(col) if n[:4] in ("raw_", "r10_", "r60_"))


def test_timestamps_are_checked_against_a_configurable_window():
    now = 2_000_000_000.0
    assert len(check(_batch(1, ts=now - 3 * 86400, created=now), now))
    with pytest.raises(Refused, match="ingest.max_age"):
        check(_batch(1, ts=now - 31 * 86400, created=now), now)
    with pytest.raises(Refused, match="ingest.max_future"):
        check(_batch(1, ts=now + 601, created=now), now)
    with pytest.raises(Refused, match="created"):
        check(_batch(1, ts=now, created=now + 601), now)
    assert len(check(_batch(1, ts=now + 3000, created=now), now, Limits(max_future=3600)))


class _FailsOn:
    """A store that cannot hold any group holding the host `poison` (a batch the checks missed)."""

    def __init__(self, poison: str = "poison", everything: bool = False):
        self.poison, self.everything, self.stored = poison, everything, []

    def write(self, batches, received, wire=None, points=None):
        if self.everything or any(b.host_id == self.poison for b in batches):
            raise RuntimeError("database or disk is full" if self.everything else "cannot hold it")
        self.stored += [b.host_id for b in batches]
        return [WriteResult(False, len(p), tuple(range(len(p)))) for p in points]

    def cleanup(self, now):
        return {"dropped_tables": []}


def _commit_group(store, hosts: list[str]) -> list:
    async def run():
        loop = asyncio.get_running_loop()

        class Hub:
            def publish(self, stored, received):
                pass
        committer = Committer(store, loop, Hub())
        futures = [loop.create_future() for _ in hosts]
        group = [(_batch(1, host=h), check(_batch(1, host=h), time.time()), b"", f) for h, f in zip(hosts, futures)]
        await loop.run_in_executor(None, committer._commit, group)
        return await asyncio.gather(*futures, return_exceptions=True)
    return asyncio.run(run())


def test_a_batch_the_store_cannot_hold_fails_alone_and_its_group_is_stored():
    store = _FailsOn()
    results = _commit_group(store, ["h1", "poison", "h2"])
    assert results[0] is False and results[2] is False  # acked, not duplicates
    assert isinstance(results[1], StoreRefused)
    assert sorted(store.stored) == ["h1", "h2"]


def test_a_store_that_fails_everything_refuses_nothing_the_agents_send_again_later():
    results = _commit_group(_FailsOn(everything=True), ["h1", "h2"])
    assert all(isinstance(r, RuntimeError) and not isinstance(r, StoreRefused) for r in results)


# --- per-host data (case 4) ------------------------------------------------------------------

def test_invalid_nic_json_is_refused_at_ingest(col, pki):
    bad = _batch(1, epoch=300)
    bad.nic_json = "{not json"
    _, error, trailers = _publish(col, pki, [bad.SerializeToString()])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "nic_json is not JSON" in error.details()
    assert trailers[REJECTED_TRAILER] == "300/1"


def test_one_hosts_unreadable_nic_state_does_not_fail_the_fleet_listing(tmp_path):
    store = SQLiteStore(tmp_path)
    good, bad = _batch(1, host="good"), _batch(1, host="bad")
    good.nic_json, bad.nic_json = '{"state": "ok"}', "{left by an older collector"
    store.write([good, bad], time.time())  # the store itself does not check (ingest does)
    agents = {a["host"]: a for a in store.agents()}
    assert agents["good"]["nic"] == {"state": "ok"}
    assert "not JSON" in agents["bad"]["nic"]["invalid"]
    store.close()


# --- consumers: Subscribe (case 5) -----------------------------------------------------------

def _metadata(col):
    return [("authorization", f"Bearer {col.token}")]


@pytest.mark.parametrize("request_fields", [
    {"heartbeat_seconds": 1e-6}, {"heartbeat_seconds": -1}, {"heartbeat_seconds": math.nan},
    {"heartbeat_seconds": 1e9}, {"max_pending": 4_000_000_000}, {"hosts": ["h"] * 1001},
    {"metrics": ["m" * 300]}, {"labels": {f"k{i}": "v" for i in range(65)}},
], ids=lambda f: next(iter(f)))
def test_subscribe_requests_past_the_bounds_are_refused(col, request_fields):
    with col.consumer_channel() as ch:
        stream = col.stub(ch).Subscribe(collector_pb2.SubscribeRequest(**request_fields), metadata=_metadata(col),
                                        timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _with_consumer_keys(c, keys: str):
    """The collector's config with more keys in its [consumers] section."""
    c.config.write_text(c.config.read_text().replace('heartbeat = "1s"\n', f'heartbeat = "1s"\n{keys}'))
    return c


def test_subscriptions_past_max_subscribers_are_refused(collector_factory):
    c = _with_consumer_keys(collector_factory("few-subs", plaintext=True), "max_subscribers = 2\n").start()
    with c.consumer_channel() as ch:
        stub = c.stub(ch)
        open_ = [stub.Subscribe(collector_pb2.SubscribeRequest(), metadata=_metadata(c)) for _ in range(2)]
        for s in open_:
            while not next(s).snapshot_done:
                pass
        third = stub.Subscribe(collector_pb2.SubscribeRequest(), metadata=_metadata(c), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            next(third)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        open_[0].cancel()
        time.sleep(0.5)
        fourth = stub.Subscribe(collector_pb2.SubscribeRequest(), metadata=_metadata(c), timeout=10)
        assert next(fourth).snapshot_done  # room again once one left
        for s in open_[1:] + [fourth]:
            s.cancel()


# --- consumers: Query (case 1) ---------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"end": 1e300, "resolution": "raw"}, {"end": 1e300, "resolution": "1m"}, {"start": -1e300},
    {"start": math.nan}, {"end": math.inf}, {"start": 100.0, "end": 50.0},
    {"start": 1.0, "resolution": "raw"},  # decades at raw resolution
], ids=str)
def test_queries_outside_a_sane_range_are_refused_at_once(col, fields):
    with col.consumer_channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            col.stub(ch).Query(collector_pb2.QueryRequest(metric="test_marker", **fields), metadata=_metadata(col),
                               timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("names", [{"metric": ""}, {"metric": "m" * 10_000}, {"metric": "m", "host": "h" * 10_000}],
                         ids=["no metric", "10 KB metric", "10 KB host"])
def test_query_names_past_the_bound_are_refused_naming_it(col, names):
    with col.consumer_channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            col.stub(ch).Query(collector_pb2.QueryRequest(**names), metadata=_metadata(col), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 253 characters" in e.value.details()


def test_a_wide_rollup_query_reads_only_the_partitions_that_exist(col):
    with col.consumer_channel() as ch:
        out = col.stub(ch).Query(collector_pb2.QueryRequest(metric="test_marker", start=1.0, resolution="1m"),
                                 metadata=_metadata(col), timeout=10)
    assert out.resolution == "1m"


def _filled(tmp_path, hosts=1, series=20, seconds=30, t0=None):
    t0 = t0 or (int(time.time()) // 60 * 60 - 3600)
    store = SQLiteStore(tmp_path, flush_interval=0)
    seq = 0
    for s in range(seconds):
        for h in range(hosts):
            seq += 1
            b = collector_pb2.Batch(host_id=f"h{h}", epoch=1, seq=seq)
            for g in range(series):
                append_point(b, "gpu_power_watts", {"gpu": str(g)}, ts=t0 + s, count=1, sum=s, min=s, max=s, last=s)
            store.write([b], t0 + s)
    store.flush()
    return store, t0


@pytest.mark.parametrize("resolution", ["raw", "10s"])
def test_a_query_past_its_point_or_series_bound_is_resource_exhausted_before_it_is_built(tmp_path, resolution):
    store, t0 = _filled(tmp_path)
    reader = SQLiteReader(store.path, store.retention)
    args = ("gpu_power_watts", "", {}, t0 - 60, t0 + 120, resolution)
    _, series = reader.query(*args, bounds=QueryBounds(max_points=10_000))
    assert len(series) == 20
    with pytest.raises(QueryTooLarge, match="max_query_points"):
        reader.query(*args, bounds=QueryBounds(max_points=10 if resolution == "10s" else 100))
    with pytest.raises(QueryTooLarge, match="max_query_series"):
        reader.query(*args, bounds=QueryBounds(max_series=19))
    if resolution == "raw":
        with pytest.raises(QueryTooLarge, match="stored batches"):
            reader.query(*args, bounds=QueryBounds(max_raw_batches=29))
    reader.close()
    store.close()


def test_query_bounds_reach_the_consumer_as_resource_exhausted(collector_factory):
    c = collector_factory("small-queries", plaintext=True)
    store, t0 = _filled(c.data, series=40, seconds=30)
    store.close()
    _with_consumer_keys(c, "max_query_points = 1000\n").start()
    with c.consumer_channel() as ch:
        stub = c.stub(ch)
        ok = stub.Query(collector_pb2.QueryRequest(metric="gpu_power_watts", start=t0 - 60, end=t0 + 120,
                                                   resolution="10s"), metadata=_metadata(c), timeout=10)
        assert sum(len(s.points) for s in ok.series) == 40 * 3
        with pytest.raises(grpc.RpcError) as e:
            stub.Query(collector_pb2.QueryRequest(metric="gpu_power_watts", start=t0 - 60, end=t0 + 120,
                                                  resolution="raw"), metadata=_metadata(c), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_query_points" in e.value.details()


# --- identity (case 12) ----------------------------------------------------------------------

def test_a_certificate_with_only_an_ip_san_names_no_host(col, pki):
    b = _batch(1, epoch=500, host="127.0.0.1")
    acks, error, _ = _publish(col, pki, [b.SerializeToString()], cert="ip-only")
    assert acks == []
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert "127.0.0.1" not in {a.host for a in col.agents().agents}


# --- memory under the worst allowed query ----------------------------------------------------

def _vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_the_worst_allowed_query_keeps_the_collector_under_its_memory_bound(collector_factory):
    """A query answering exactly max_query_points points (200 series x 1,000 10 s buckets,
    here with max_query_points = 200,000): the collector's peak RSS grows by at most
    QUERY_BYTES_PER_POINT per point allowed (docs/collector.md, "Bounds")."""
    from agent.collector.server import QUERY_BYTES_PER_POINT
    allowed, series, buckets = 200_000, 200, 1000
    c = collector_factory("worst-query", plaintext=True)
    t0 = int(time.time()) // 60 * 60 - buckets * 10 - 600
    store = SQLiteStore(c.data, flush_interval=3600)
    for i in range(buckets):
        b = collector_pb2.Batch(host_id="big", epoch=1, seq=i + 1)
        for g in range(series):
            append_point(b, "gpu_power_watts", {"gpu": str(g)}, ts=t0 + 10 * i, count=1, sum=g, min=g, max=g, last=g)
        store.write([b], t0 + 10 * i)
    store.flush()
    store.close()
    _with_consumer_keys(c, f"max_query_points = {allowed}\n").start()
    request = collector_pb2.QueryRequest(metric="gpu_power_watts", start=t0 - 10, end=t0 + buckets * 10,
                                         resolution="10s", limit=buckets)
    with c.consumer_channel() as ch:
        c.stub(ch).Agents(collector_pb2.AgentsRequest(), metadata=_metadata(c), timeout=10)  # warm
        before = _vm_kib(c.proc.pid, "VmRSS")
        out = c.stub(ch).Query(request, metadata=_metadata(c), timeout=60)
        assert sum(len(s.points) for s in out.series) == allowed  # the worst allowed: exactly the bound
        peak = _vm_kib(c.proc.pid, "VmHWM")
    grown = (peak - before) * 1024
    print(f"peak RSS grew {grown / 2**20:.1f} MiB for {allowed} points ({grown / allowed:.0f} B/point)")
    assert grown <= allowed * QUERY_BYTES_PER_POINT
