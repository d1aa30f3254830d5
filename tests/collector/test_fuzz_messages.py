"""The fuzz layer over every message the collector accepts (Batch, SubscribeRequest,
QueryRequest, AgentsRequest): random values of every field — NaN, infinities, huge and
negative numbers, empty and very long strings, control characters, invalid UTF-8 and bytes
that are no protobuf at all — must give a clear error for that sender or a valid stored
result: never a failed commit, a crash, a stall or unbounded memory.

`make test` runs the short `ci` profile; `make fuzz` the `long` one (tests/conftest.py)."""
from __future__ import annotations

import itertools
import json
import random
import time

import grpc
import pytest
from hypothesis import example, given, strategies as st

from agent.collector.ingest import Refused, check
from agent.collector.server import _parse_batch
from agent.collector.store.sqlite import SQLiteStore
from agent.proto import collector_pb2
from agent.stream.client import PUBLISH
from agent.wire.columns import FIELDS, append_point

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]
NOW = time.time()

# --- strategies ----------------------------------------------------------------------------

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -1.0, 1e300, -1e300, 1e308, 5e-324, NOW, NOW - 31 * 86400, NOW + 3600,
                                    NOW - 1, 2.0 ** 63]))
recent = st.floats(min_value=NOW - 86400, max_value=NOW + 60)
uint64 = st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from([0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]))
# Mostly what an agent sends, so that many examples get as far as the store.
sane_seq = st.integers(1, 1 << 40)
text = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 300, "x" * 5000, "\x00", "a\nb", "\ud7ff", "gpu"]))
labels = st.dictionaries(text, text, max_size=70)
json_text = st.one_of(
    st.just(""), st.just("{}"), st.just('{"v": NaN}'), st.just("[" * 50_000), st.just("[1]"), text,
    st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=20)), max_size=5).map(json.dumps))


@st.composite
def batches(draw) -> collector_pb2.Batch:
    # Which fields are hostile comes from a seeded Random: hypothesis' own draws lean towards
    # their first choice, which made nearly every batch hostile somewhere.
    rnd = random.Random(draw(st.integers(0, 1 << 32)))

    def field(sane, hostile):
        """Each field is hostile one time in eight, so that about a quarter of the batches
        are wholly valid and get as far as the store."""
        return draw(hostile if rnd.random() < 0.125 else sane)

    sane_floats = st.floats(-1e6, 1e6)
    sane_labels = st.dictionaries(st.sampled_from(["gpu", "uuid", "zone"]), st.text(max_size=8), max_size=3)
    sane_json = st.sampled_from(["", "{}", '{"state": "ok"}'])
    b = collector_pb2.Batch(host_id=field(st.just("fuzz-host"), text), epoch=field(sane_seq, uint64),
                            seq=field(sane_seq, uint64), created=field(st.one_of(st.just(0.0), recent), floats))
    b.labels.update(field(sane_labels, labels))
    for _ in range(draw(st.integers(0, 5))):
        append_point(b, field(st.just("gpu_power_watts"), text), field(sane_labels, labels),
                     ts=field(recent, floats), count=field(st.integers(0, 1000), uint64), sum=field(sane_floats, floats),
                     min=field(sane_floats, floats), max=field(sane_floats, floats), last=field(sane_floats, floats))
    if field(st.just(False), st.just(True)):  # columns of different lengths
        getattr(b, draw(st.sampled_from(FIELDS))).append(1)
    if field(st.just(False), st.just(True)):  # a table that is no table
        b.series_table = draw(st.binary(max_size=64))
    for _ in range(draw(st.integers(0, 3))):
        e = b.events.add(kind=field(st.just("alarm"), text), ts=field(recent, floats),
                         data_json=field(sane_json, json_text))
        e.labels.update(field(sane_labels, labels))
    b.nic_json = field(sane_json, json_text)
    b.recording_json = field(sane_json, json_text)
    b.status.spool_backlog_records, b.status.spool_backlog_bytes, b.status.dropped_records = (
        field(st.integers(0, 1 << 40), uint64), field(st.integers(0, 1 << 40), uint64),
        field(st.integers(0, 1 << 40), uint64))
    b.status.health = field(st.just("ok"), text)
    return b


def _mutated(wire: bytes, flips: list[tuple[int, int]]) -> bytes:
    """The bytes of a valid batch with some bytes replaced (invalid UTF-8, broken lengths)."""
    data = bytearray(wire)
    for where, value in flips:
        if data:
            data[where % len(data)] = value
    return bytes(data)


# --- in process: check, then the store ---------------------------------------------------------

_seqs = itertools.count(1)
STORED: list[str] = []  # fuzzed batches that passed the checks (some must, or the layer tests nothing)


def _bystander(host: str) -> collector_pb2.Batch:
    b = collector_pb2.Batch(host_id=host, epoch=1, seq=next(_seqs), created=time.time())
    append_point(b, "test_marker", ts=time.time(), count=1, sum=1, min=1, max=1, last=1)
    return b


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = SQLiteStore(tmp_path_factory.mktemp("fuzz-store"), flush_interval=0)
    yield s
    s.close()


def _accepted_or_refused(store, wire: bytes) -> None:
    """The property: a clear refusal, or stored in a group with bystanders without failing it."""
    try:
        _, batch = _parse_batch(wire)
    except Exception as e:  # protobuf's DecodeError: gRPC ends that sender's call
        assert "pars" in str(e).lower() or "decode" in type(e).__name__.lower(), e
        return
    try:
        points = check(batch, time.time())
    except Refused as e:
        assert str(e)  # says why
        return
    STORED.append(batch.host_id)
    group = [_bystander("bystander-1"), batch, _bystander("bystander-2")]
    results = store.write(group, time.time(), [g.SerializeToString() for g in group],
                          [check(g, time.time()) for g in group[:1]] + [points] + [check(group[2], time.time())])
    assert not results[0].duplicate and not results[2].duplicate
    # Whatever was stored can be read back: the fleet listing, events and a query of it.
    assert {"bystander-1", "bystander-2"} <= {a["host"] for a in store.agents()}
    store.events(time.time() - 3600)
    for metric in set(points.layout.metrics):
        store.query(metric, host=batch.host_id, start=time.time() - 600, end=time.time() + 60, resolution="raw")


@given(batches())
@example(_bystander("fuzz-example-1"))  # two that surely reach the store, whatever the draw
@example(_bystander("fuzz-example-2"))
def test_any_batch_is_refused_by_name_or_stored_without_failing_its_group(store, batch):
    _accepted_or_refused(store, batch.SerializeToString())


@given(batches(), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4))
def test_any_bytes_are_refused_by_name_or_stored_without_failing_their_group(store, batch, flips):
    _accepted_or_refused(store, _mutated(batch.SerializeToString(), flips))


@given(st.binary(max_size=512))
def test_random_bytes_are_refused_by_name_or_stored(store, wire):
    _accepted_or_refused(store, wire)


def test_the_store_survives_the_fuzzing_with_its_rollups(store):
    # The two explicit examples, and at least one the strategies drew (4 to 10 of 180 a run).
    assert len(STORED) >= 3, "the strategies reach the store too rarely to test it"
    store.flush()  # every accepted batch's rollups can be written
    assert store.reader.query("test_marker", resolution="10s")[0] == "10s"


# --- through a real collector ---------------------------------------------------------------

OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def col(module_procs):
    make_collector, _, _ = module_procs
    return make_collector("fuzz", plaintext=True).start()


@pytest.fixture(scope="module")
def consumer(col):
    channel = col.consumer_channel()
    yield col.stub(channel)
    channel.close()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _call(fn):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() in OK_CODES, (e.code(), e.details())


@given(host=text, metric=text, query_labels=labels, start=floats, end=floats,
       resolution=st.one_of(st.sampled_from(["", "raw", "10s", "1m", "1h"]), text), limit=st.integers(0, (1 << 32) - 1))
def test_any_query_gets_an_answer_or_a_clear_refusal(col, consumer, host, metric, query_labels, start, end,
                                                     resolution, limit):
    request = collector_pb2.QueryRequest(host=host, metric=metric, start=start, end=end, resolution=resolution,
                                         limit=limit)
    request.labels.update(query_labels)
    _call(lambda: consumer.Query(request, metadata=[("authorization", f"Bearer {col.token}")], timeout=30))


@given(hosts=st.lists(text, max_size=5), metrics=st.lists(text, max_size=5), kinds=st.lists(text, max_size=3),
       sub_labels=labels, heartbeat=floats, max_pending=st.integers(0, (1 << 32) - 1), no_snapshot=st.booleans())
def test_any_subscription_gets_a_snapshot_or_a_clear_refusal(col, consumer, hosts, metrics, kinds, sub_labels,
                                                             heartbeat, max_pending, no_snapshot):
    request = collector_pb2.SubscribeRequest(hosts=hosts, metrics=metrics, event_kinds=kinds,
                                             heartbeat_seconds=heartbeat, max_pending=max_pending,
                                             no_snapshot=no_snapshot)
    request.labels.update(sub_labels)

    def first_updates():
        stream = consumer.Subscribe(request, metadata=[("authorization", f"Bearer {col.token}")], timeout=30)
        try:
            while not next(stream).snapshot_done:
                pass
        finally:
            stream.cancel()
    _call(first_updates)


@given(st.lists(batches(), min_size=1, max_size=4))
def test_any_stream_of_batches_gets_acks_or_a_clear_refusal(col, batches_):
    with grpc.insecure_channel(f"127.0.0.1:{col.ingest_port}") as ch:
        call = ch.stream_stream(PUBLISH, request_serializer=collector_pb2.Batch.SerializeToString,
                                response_deserializer=collector_pb2.Ack.FromString)(iter(batches_), timeout=30)
        _call(lambda: list(call))


def test_after_the_fuzzing_the_collector_is_up_stores_and_stayed_small(col, consumer):
    assert col.proc.poll() is None
    marker = _bystander("after-fuzz")
    with grpc.insecure_channel(f"127.0.0.1:{col.ingest_port}") as ch:
        call = ch.stream_stream(PUBLISH, request_serializer=collector_pb2.Batch.SerializeToString,
                                response_deserializer=collector_pb2.Ack.FromString)(iter([marker]), timeout=30)
        assert [a.seq for a in call] == [marker.seq]
    assert "after-fuzz" in {a.host for a in consumer.Agents(collector_pb2.AgentsRequest(), timeout=10,
                                                             metadata=[("authorization", f"Bearer {col.token}")]).agents}
    assert _rss_mib(col.proc.pid) < 400  # docs/collector.md, "Bounds": the collector's memory
