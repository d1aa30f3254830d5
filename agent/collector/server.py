"""The collector's main process: gRPC ingest and consumer services over one store.

Threads: the gRPC servicers run on one asyncio loop; the committer thread takes every batch
waiting and has the store writer process (agent/collector/writer.py) commit them in one
transaction (group commit), then resolves each batch's future so its stream can send the
ack — an ack always follows a commit. Stored batches then go to the subscription hub on the
loop. Queries read the store file through a reader of their own.

Per-sender failures stay with the sender: a batch that fails validation
(agent/collector/ingest.py) ends *that* stream with INVALID_ARGUMENT (after acking everything
before it, and naming it in the `egs-rejected-seq` trailer so the agent drops it instead of
resending it forever); an oversized message gets RESOURCE_EXHAUSTED from gRPC itself; a host
id that the client certificate does not name gets PERMISSION_DENIED; a missing certificate
UNAUTHENTICATED. Should a batch that passed validation still fail its group's commit, the
committer writes that group's batches one by one, so the bystanders are stored and acked and
only the batch the store cannot hold is refused. Other streams and the committer carry on.

Consumers are bounded too (docs/collector.md, "Bounds"): how many subscribe at once, their
heartbeat and filters, and what one query may cover, read and return, and how many queries
run at once.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import signal
import threading
import time
from pathlib import Path

import grpc

from agent.collector import ingest as ingest_rules
from agent.collector.settings import retention_seconds
from agent.collector import bus as bus_room
from agent.collector import metrics as collector_metrics
from agent.collector import web
from agent.collector.store import QueryBounds, QueryTooLarge, StoreReader, StoreRefused, StoreUnavailable, StoreWriter
from agent.collector.store.engine import Auth
from agent.collector.store.promql import EngineQueryError, RemoteReader
from agent.collector.store.reader import SQLiteReader
from agent.collector.store.schema import R10, R60, RAW
from agent.collector.subscriptions import Hub, make_update
from agent.collector.writer import WriterGone, WriterProcess
from agent.config import parse_duration
from agent.proto import collector_pb2, collector_pb2_grpc
from agent.systemd import sd_notify
from agent.wire.columns import Points

log = logging.getLogger("egs-collector")
REJECTED_TRAILER = "egs-rejected-seq"
SNAPSHOT_CHUNK = 2000
UPDATE_CHUNK = 5000
# What a consumer may ask of Subscribe and Query (docs/collector.md, "Bounds").
HEARTBEAT_MIN, HEARTBEAT_MAX = 0.5, 3600.0
FILTER_ITEMS_MAX = 1000   # hosts, metrics or event kinds in one subscription
FILTER_LABELS_MAX = 64
NAME_MAX = 253            # any one host, metric, label or event kind named in a request
QUERIES_RUNNING, QUERIES_WAITING = 2, 32
MAX_SEND_BYTES = 64 << 20  # the largest response (a query's answer, a snapshot chunk)
# Peak memory a query's answer may cost the collector, per point it is allowed to return
# (its rows, the response message, gRPC's copy of it): measured 667 B at 200,000 points
# (tests/collector/test_hardening.py), bounded here with room. At the default
# consumers.max_query_points (500,000) and QUERIES_RUNNING (2): at most ~760 MiB.
QUERY_BYTES_PER_POINT = 800


class Committer:
    """The one thread that has the store written: group commit, then resolve the acks."""

    def __init__(self, store: StoreWriter, loop: asyncio.AbstractEventLoop, hub: Hub,
                 cleanup_interval: float = 60.0):
        self.store, self.loop, self.hub = store, loop, hub
        self.cleanup_interval = cleanup_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="egs-committer", daemon=True)
        self.stats = {"commits": 0, "batches": 0, "duplicates": 0, "points": 0, "errors": 0,
                      "refused": 0, "last_group": 0, "largest_group": 0}

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch, points, wire: bytes, future: asyncio.Future) -> None:
        self._queue.put((batch, points, wire, future))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        next_cleanup = time.monotonic() + self.cleanup_interval
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                first = ()
            group = [first] if first else []
            stop = first is None
            while not stop:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    group.append(item)
            group = [g for g in group if g]
            if group:
                try:
                    self._commit(group)
                except Exception as e:  # a bug here must not leave every stream waiting forever
                    log.exception("commit failed")
                    for *_, fut in group:
                        self.loop.call_soon_threadsafe(_fail, fut, e)
            if time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + self.cleanup_interval
                try:
                    done = self.store.cleanup(time.time())
                    if done["dropped_tables"]:
                        log.info("retention: dropped %s", ", ".join(done["dropped_tables"]))
                except Exception as e:
                    log.error("retention cleanup failed: %s", e)
            if stop:
                return

    def _commit(self, group: list) -> None:
        try:
            self._write(group)
            return
        except Exception as e:
            error = e
        self.stats["errors"] += 1
        if len(group) == 1 or isinstance(error, (WriterGone, StoreUnavailable)):  # nothing can be stored now: no ack
            log.error("store write failed for %d batches: %s", len(group), error)
            self._fail(group, error)
            return
        # One batch the checks let through may be what the store cannot hold: write them one
        # by one, so the others are stored and only that one is refused.
        log.error("store write failed for a group of %d batches (%s); writing them one by one", len(group), error)
        failed = []
        for item in group:
            try:
                self._write([item])
            except Exception as e:
                failed.append((item, e))
        for item, e in failed:
            if len(failed) < len(group):
                self.stats["refused"] += 1
                batch = item[0]
                log.error("the store cannot hold batch %s/%s of %s, refused: %s (the ingest checks missed it)",
                          batch.epoch, batch.seq, batch.host_id, e)
                self._fail([item], StoreRefused(f"the store could not hold it: {e}"))
            else:
                self._fail([item], e)

    def _fail(self, group: list, error: Exception) -> None:
        for *_, fut in group:
            self.loop.call_soon_threadsafe(_fail, fut, error)

    def _write(self, group: list) -> None:
        """Commit a group and hand its acks and stored batches to the loop; raises when the
        store refused the whole group (nothing of it is stored then)."""
        received = time.time()
        batches, points, wire, _ = zip(*group)
        results = self.store.write(list(batches), received, list(wire), list(points))
        self.stats["commits"] += 1
        self.stats["last_group"] = len(group)
        self.stats["largest_group"] = max(self.stats["largest_group"], len(group))
        stored, done = [], []
        for (batch, cols, _, fut), res in zip(group, results):
            if res.duplicate:
                self.stats["duplicates"] += 1
            else:
                self.stats["batches"] += 1
                self.stats["points"] += res.points
                stored.append((batch, cols, res.series))
            done.append((fut, res.duplicate))
        # One wake-up of the event loop per commit, not one per batch.
        self.loop.call_soon_threadsafe(self._deliver, done, stored, received)

    def _deliver(self, done: list, stored: list, received: float) -> None:
        for fut, duplicate in done:
            _resolve(fut, duplicate)
        if stored and self.hub is not None:  # behind a bus the hub is fed from the bus (agent/collector/bus.py)
            self.hub.publish(stored, received)


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, error: Exception) -> None:
    if not fut.done():
        fut.set_exception(error)


def peer_names(context) -> set[str] | None:
    """Names the client certificate vouches for: its CN and DNS SANs (gRPC's `peer_dns`),
    not its IP, URI or e-mail SANs (`x509_subject_alternative_name` holds all of those, so a
    certificate with only an IP SAN would otherwise publish as that IP); None without TLS."""
    auth = context.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", ()):
        return None
    names = set()
    for key in ("x509_common_name", "peer_dns"):
        for value in auth.get(key, ()):
            names.add(value.decode() if isinstance(value, bytes) else str(value))
    names.discard("")  # gRPC reports a subject without a CN as an empty x509_common_name
    return names


class Ingest(collector_pb2_grpc.IngestServicer):
    def __init__(self, committer, plaintext: bool, limits: ingest_rules.Limits = ingest_rules.Limits(),
                 max_uncommitted: int = 4096, on_disconnect=None):
        # `committer`: what takes each checked batch (`submit(batch, points, wire, future)`):
        # the Committer (store, then ack), or the bus Publisher (JetStream, then ack).
        self.committer = committer
        self.on_disconnect = on_disconnect  # async callable(host), when a host's stream ends
        self.plaintext = plaintext
        self.limits = limits
        self.connected: dict[str, str] = {}  # host -> peer
        self.counts: dict[str, dict[str, int]] = {}
        self.stats = {"rejected": 0, "refused_identity": 0, "unauthenticated": 0}
        # Batches received and not yet acked, all streams together. When the store falls
        # behind, readers wait here, gRPC flow control holds the agents back (their spools
        # absorb it) and the collector's memory stays bounded.
        self._room = asyncio.Semaphore(max_uncommitted)
        self.max_uncommitted = max_uncommitted  # the collector's /metrics: uncommitted batches

    async def Publish(self, request_iterator, context):
        # Asked once, while the call is surely alive: context.peer() on a call the client
        # has already dropped (an agent killed mid-stream) crashed the process in gRPC's C
        # core (SIGSEGV in cygrpc; reproduced by killing agents with -9 in a loop).
        peer = context.peer()
        names = peer_names(context)
        if names is None and not self.plaintext:
            self.stats["unauthenticated"] += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "publishing needs a client certificate (mutual TLS)")
        if names is not None and not names:
            self.stats["unauthenticated"] += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the client certificate names no host (no CN, no DNS SAN)")
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue = asyncio.Queue(maxsize=256)
        host: str | None = None

        async def read() -> None:
            # Hands each batch on in order; however reading ends, the writer side hears of it.
            try:
                async for wire, batch in request_iterator:
                    points = self._check(batch, names)
                    if not isinstance(points, Points):
                        await pending.put(("reject", batch, *points))
                        return
                    await self._room.acquire()
                    fut = loop.create_future()
                    fut.add_done_callback(lambda _: self._room.release())
                    self.committer.submit(batch, points, wire, fut)
                    await pending.put(("ack", batch, fut, time.monotonic()))
                await pending.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # the client went away, or a request did not decode
                await pending.put(("error", e))

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await pending.get()
                if item is None:
                    return
                if item[0] == "error":
                    raise item[1]
                if item[0] == "reject":
                    _, batch, code, details = item
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        self.stats["rejected"] += 1
                        context.set_trailing_metadata(((REJECTED_TRAILER, f"{batch.epoch}/{batch.seq}"),))
                    else:
                        self.stats["refused_identity"] += 1
                    log.warning("refused batch %s/%s from %s: %s", batch.epoch, batch.seq, peer, details)
                    await context.abort(code, details)
                _, batch, fut, read_at = item
                try:
                    duplicate = await fut
                except StoreRefused as e:
                    self.stats["rejected"] += 1
                    context.set_trailing_metadata(((REJECTED_TRAILER, f"{batch.epoch}/{batch.seq}"),))
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.epoch}/{batch.seq}: {e}")
                except WriterGone as e:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"the collector's store is down: {e}")
                except Exception as e:  # the disk or the database failed: the agent sends it again later
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"the collector could not store the batch: {e}")
                if host is None:
                    host = batch.host_id
                    self.connected[host] = peer
                c = self.counts.setdefault(batch.host_id, {"batches": 0, "duplicates": 0})
                c["duplicates" if duplicate else "batches"] += 1
                collector_metrics.observe_ack(read_at)
                yield collector_pb2.Ack(epoch=batch.epoch, seq=batch.seq, duplicate=duplicate)
        finally:
            reader.cancel()
            if host is not None and self.connected.get(host) == peer:
                del self.connected[host]
                if self.on_disconnect is not None:
                    asyncio.get_running_loop().create_task(self.on_disconnect(host))

    def _check(self, batch, names: set[str] | None) -> Points | tuple:
        """The batch's points, or (status code, details) saying why it is refused."""
        if names is not None and batch.host_id not in names:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"host id {batch.host_id[:NAME_MAX]!r} is not a name of the client certificate ({', '.join(sorted(names))})")
        try:
            return ingest_rules.check(batch, time.time(), self.limits)
        except ingest_rules.Refused as e:
            return grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.epoch}/{batch.seq}: {e}"


class Consumers(collector_pb2_grpc.ConsumersServicer):
    def __init__(self, store: StoreReader, hub: Hub, ingest: Ingest, tokens: list[str],
                 heartbeat: float, max_pending: int, max_subscribers: int = 256,
                 bounds: QueryBounds = QueryBounds(), max_send_bytes: int = 64 << 20,
                 store_state=lambda: "", fleet_agents=None):
        self.store, self.hub, self.ingest = store, hub, ingest
        self.fleet_agents = fleet_agents  # behind a bus: async () -> every host's record (agent/collector/bus.py)
        self.store_state = store_state  # the writer's account of the store (Agents' `store`)
        self.tokens = [t.encode() for t in tokens]
        self.heartbeat, self.max_pending = heartbeat, max_pending
        self.max_subscribers, self.bounds, self.max_send_bytes = max_subscribers, bounds, max_send_bytes
        self._running = asyncio.Semaphore(QUERIES_RUNNING)  # created on the loop that serves
        self._queries = 0  # running or waiting

    async def _authorize(self, context) -> None:
        if not self.tokens:
            return  # plaintext on loopback with no tokens configured (checked by settings)
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t) for t in self.tokens):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid consumer token is needed (authorization: Bearer TOKEN)")

    def _subscribe_error(self, request) -> str | None:
        """Why a SubscribeRequest is refused (INVALID_ARGUMENT), or None."""
        beat = request.heartbeat_seconds
        if beat and not HEARTBEAT_MIN <= beat <= HEARTBEAT_MAX:  # NaN fails the comparison too
            return f"heartbeat_seconds must be 0 (the default) or {HEARTBEAT_MIN:g}..{HEARTBEAT_MAX:g}, not {beat}"
        if request.max_pending > self.max_pending:
            return f"max_pending may be at most {self.max_pending} (consumers.max_pending)"
        for name in ("hosts", "metrics", "event_kinds"):
            items = getattr(request, name)
            if len(items) > FILTER_ITEMS_MAX or any(len(x) > NAME_MAX for x in items):
                return f"{name}: at most {FILTER_ITEMS_MAX} items of at most {NAME_MAX} characters"
        return _labels_error(request.labels)

    async def Subscribe(self, request, context):
        await self._authorize(context)
        error = self._subscribe_error(request)
        if error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        if len(self.hub.subscriptions) >= self.max_subscribers:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.max_subscribers} subscriptions are open (consumers.max_subscribers); try again later")
        heartbeat = request.heartbeat_seconds or self.heartbeat
        sub = self.hub.add(request, request.max_pending or self.max_pending)
        try:
            if not request.no_snapshot:
                snap = self.hub.snapshot(sub)
                for i in range(0, len(snap), SNAPSHOT_CHUNK):
                    yield make_update(snap[i:i + SNAPSHOT_CHUNK], [], sub, snapshot=True)
            yield make_update([], [], sub, snapshot_done=True)
            while True:
                try:
                    await asyncio.wait_for(sub.wake.wait(), heartbeat)
                except asyncio.TimeoutError:
                    yield make_update([], [], sub, heartbeat=True)
                    continue
                samples, events = sub.take(UPDATE_CHUNK)
                if samples or events:
                    yield make_update(samples, events, sub)
        finally:
            self.hub.remove(sub)

    async def Query(self, request, context):
        await self._authorize(context)
        try:  # the store checks them too (QueryBounds.names); here before the query queues
            self.bounds.names(request.metric, request.host)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        error = _labels_error(request.labels)
        if error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        # A query holds its answer in memory while it runs: at most QUERIES_RUNNING of them
        # at once, QUERIES_WAITING more queued, the rest refused.
        if self._queries >= QUERIES_RUNNING + QUERIES_WAITING:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self._queries} queries are running or waiting; try again later")
        self._queries += 1
        try:
            async with self._running:
                out = await asyncio.get_running_loop().run_in_executor(None, self._query, request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except QueryTooLarge as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except EngineQueryError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        finally:
            self._queries -= 1
        return out

    def _query(self, request) -> collector_pb2.QueryResponse:
        resolution, found = self.store.query(
            request.metric, request.host, dict(request.labels), request.start, request.end,
            request.resolution, request.limit or 10000, self.bounds)
        out = collector_pb2.QueryResponse(resolution=resolution)
        for s in found:
            series = out.series.add(host=s.host, metric=s.metric)
            series.labels.update(s.labels)
            for ts, count, total, lo, hi, last in s.points:
                series.points.add(ts=ts, count=count, sum=total, min=lo, max=hi, last=last)
        size = out.ByteSize()
        if size > self.max_send_bytes:
            raise QueryTooLarge(f"the answer is {size} bytes, over the {self.max_send_bytes} a response may have; "
                                "narrow the range, the series or the resolution")
        return out

    async def Agents(self, request, context):
        await self._authorize(context)
        rows = None
        if self.fleet_agents is not None:
            try:
                rows = await asyncio.wait_for(self.fleet_agents(), 10.0)
            except Exception as e:  # the bus is down: what this collector's own store knows, and why
                log.warning("agents: the bus cannot list the fleet's agents (%s); answering from this collector's store", e)
        if rows is None:
            rows = await asyncio.get_running_loop().run_in_executor(None, self.store.agents)
        out = collector_pb2.AgentsResponse(now=time.time(), store=self.store_state())
        for row in rows:
            here = row["host"] in self.ingest.connected
            info = out.agents.add(host=row["host"], epoch=row["epoch"] or 0, last_seq=row["last_seq"] or 0,
                                  last_seen=row["last_seen"] or 0, connected=here or bool(row.get("connected")),
                                  peer=self.ingest.connected.get(row["host"]) or row.get("peer") or "",
                                  collector=row.get("collector") or "")
            info.labels.update(row["labels"])
            info.status.spool_backlog_records = row["backlog_records"] or 0
            info.status.spool_backlog_bytes = row["backlog_bytes"] or 0
            info.status.dropped_records = row["dropped"] or 0
            info.status.health = row["health"] or ""
            c = self.ingest.counts.get(row["host"], {})
            info.batches, info.duplicates = c.get("batches", 0), c.get("duplicates", 0)
        return out


def _labels_error(labels) -> str | None:
    if len(labels) > FILTER_LABELS_MAX or any(len(k) > NAME_MAX or len(v) > NAME_MAX for k, v in labels.items()):
        return f"labels: at most {FILTER_LABELS_MAX} pairs of at most {NAME_MAX} characters each"
    return None


def _parse_batch(wire: bytes) -> tuple[bytes, collector_pb2.Batch]:
    # The store keeps the bytes as they came (no re-encoding), the rest uses the message.
    return wire, collector_pb2.Batch.FromString(wire)


def ingest_handler(ingest: Ingest) -> grpc.GenericRpcHandler:
    """Ingest.Publish as generated, except that requests arrive as (bytes, Batch)."""
    return grpc.method_handlers_generic_handler("egs.collector.v1.Ingest", {
        "Publish": grpc.stream_stream_rpc_method_handler(
            ingest.Publish, request_deserializer=_parse_batch,
            response_serializer=collector_pb2.Ack.SerializeToString)})


def server_options(cfg) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", cfg.ingest.max_message_bytes),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # Agents ping every stream.keepalive_time (>= 10 s); allow that, and ping back.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 60000),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.so_reuseport", 0),
    ]


def _credentials(cfg, client_auth: bool) -> grpc.ServerCredentials:
    pair = [(Path(cfg.tls.key).read_bytes(), Path(cfg.tls.cert).read_bytes())]
    if client_auth:
        return grpc.ssl_server_credentials(pair, root_certificates=Path(cfg.tls.client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def store_plan(cfg, retention: dict[str, float], exactly_once: bool = True):
    """What `[store]` asks for: the writer process's store arguments, and how to open the
    reader once the writer has made its file (SQLite store: the store file; remote write: the
    engine's query API and the ledger)."""
    store = cfg.store
    if store.backend == "remote_write":
        auth = Auth(store.bearer_token_file, store.basic_auth_user, store.basic_auth_password_file,
                    store.tls_ca, store.tls_cert, store.tls_key, store.tls_insecure_skip_verify, store.tenant)
        timeout = parse_duration(store.remote_timeout)
        args = dict(backend="remote_write", data_dir=cfg.collector.data_dir, remote_write_url=store.remote_write_url,
                    auth=auth, timeout=timeout, retry_for=parse_duration(store.remote_retry),
                    samples_per_request=store.remote_samples_per_request, retention=retention,
                    synchronous=store.synchronous, replay_window=parse_duration(store.replay_window),
                    replay_max_bytes=store.replay_max_mib << 20, concurrency=store.remote_concurrency,
                    aggregates=tuple(store.remote_aggregates), exactly_once=exactly_once)

        def remote_reader(ledger_path: Path) -> RemoteReader:
            reader = RemoteReader(store.query_url, ledger_path, retention, auth, max(timeout, 30.0),
                                  tuple(store.remote_aggregates))
            problem = reader.check()  # a wrong URL or credentials raise StoreConfigError
            if problem:
                log.error("store: the engine's query API at %s does not answer (%s); queries fail until it does",
                          store.query_url, problem)
            return reader
        return args, remote_reader
    args = dict(backend="sqlite", data_dir=cfg.collector.data_dir, synchronous=store.synchronous, retention=retention,
                cache_mib=store.cache_mib, flush_interval=parse_duration(store.rollup_flush),
                compress_raw=store.compress_raw, exactly_once=exactly_once)
    return args, lambda path: SQLiteReader(path, retention)


class Collector:
    """The whole collector, started and stopped from one place (the CLI and the tests)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.writer: WriterProcess | None = None
        self.store: StoreReader | None = None
        self.bus: bus_room.Bus | None = None
        self.metrics_server = None
        self.web_server = None
        self.server: grpc.aio.Server | None = None
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        cfg = self.cfg
        retention = {RAW: retention_seconds(cfg.store.raw_retention),
                     R10: retention_seconds(cfg.store.rollup_10s_retention),
                     R60: retention_seconds(cfg.store.rollup_1m_retention),
                     "events": retention_seconds(cfg.store.events_retention)}
        loop = asyncio.get_running_loop()
        if cfg.bus.nats:  # first: a bus that cannot be used stops the start before anything else
            self.bus = bus_room.Bus(bus_room.BusSettings.from_config(cfg))
            await self.bus.connect()
        store_args, make_reader = store_plan(cfg, retention, exactly_once=self.bus is None)
        self.writer = await loop.run_in_executor(None, lambda: WriterProcess(store_args, cfg.collector.log_level))
        if self.writer.recovered:
            log.info("store: refolded %d batches whose rollups were not flushed before the last stop", self.writer.recovered)
        self.store = await loop.run_in_executor(None, make_reader, self.writer.path)
        self.hub = Hub()
        self.committer = Committer(self.writer, loop, None if self.bus else self.hub,
                                   parse_duration(cfg.store.cleanup_interval))
        self.committer.start()
        limits = ingest_rules.Limits(cfg.ingest.max_points, parse_duration(cfg.ingest.max_future),
                                     retention_seconds(cfg.ingest.max_age))
        bounds = QueryBounds(max_span=parse_duration(cfg.consumers.max_query_span),
                             max_points=cfg.consumers.max_query_points, max_series=cfg.consumers.max_query_series)
        store_state = lambda: self.writer.state or f"sqlite {self.writer.path}"  # noqa: E731
        fleet_agents = None
        if self.bus is not None:
            self.publisher = bus_room.Publisher(self.bus, loop)
            self.ingest = Ingest(self.publisher, cfg.tls.plaintext, limits, cfg.ingest.max_uncommitted,
                                 on_disconnect=self.publisher.disconnected)
            self.publisher.connected = self.ingest.connected
            self.store_feed = bus_room.StoreFeed(self.bus, self.committer, loop)
            await self.store_feed.start()
            self.fanout = bus_room.Fanout(self.bus, self.hub)
            await self.fanout.start()
            feed = self.store_feed
            store_state = lambda: (f"{self.bus.state_text()}; store {self.writer.state or self.writer.path} "  # noqa: E731
                                   f"(from the bus: stored {feed.stored}, duplicates {feed.duplicates}, "
                                   f"redelivered {feed.redelivered}, failed {feed.failed}, malformed {feed.malformed})")
            fleet_agents = lambda: bus_room.agents(self.bus)  # noqa: E731
        else:
            self.ingest = Ingest(self.committer, cfg.tls.plaintext, limits, cfg.ingest.max_uncommitted)
        self.consumers = Consumers(self.store, self.hub, self.ingest, cfg.consumer_tokens,
                                   parse_duration(cfg.consumers.heartbeat), cfg.consumers.max_pending,
                                   cfg.consumers.max_subscribers, bounds, MAX_SEND_BYTES,
                                   store_state=store_state, fleet_agents=fleet_agents)
        self.server = grpc.aio.server(options=server_options(cfg))
        self.server.add_generic_rpc_handlers((ingest_handler(self.ingest),))
        collector_pb2_grpc.add_ConsumersServicer_to_server(self.consumers, self.server)
        for name, client_auth in (("ingest", True), ("consumers", False)):
            address = getattr(cfg, name).listen
            try:
                if cfg.tls.plaintext:
                    port = self.server.add_insecure_port(address)
                else:
                    port = self.server.add_secure_port(address, _credentials(cfg, client_auth))
            except RuntimeError:  # grpc reports a failed bind this way; the log line has the errno
                port = 0
            if not port:
                raise OSError(f"cannot listen on {address} ({name}.listen)")
            self.ports[name] = port
        await self.server.start()
        self.metrics_server = collector_metrics.start(cfg.prometheus, self.committer, self.ingest, self.hub,
                                                      parts=self.parts_up)
        self.web_server = await web.start(cfg, self)
        log.info("serving: ingest on %s (port %d), consumers on %s (port %d), store %s%s",
                 cfg.ingest.listen, self.ports["ingest"], cfg.consumers.listen, self.ports["consumers"],
                 self.writer.state or self.writer.path, ", PLAINTEXT" if cfg.tls.plaintext else ", mutual TLS")

    def parts_up(self) -> dict[str, bool]:
        """What the collector's /metrics says works (collector_part_up)."""
        parts = {"store": self.writer is not None and self.writer.alive and "unavailable" not in (self.writer.state or "")}
        if self.bus is not None:
            parts["bus"] = self.bus.ok
        return parts

    async def stop(self, grace: float = 2.0) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.web_server is not None:
            await self.web_server.stop()
            self.web_server = None
        if self.server is not None:
            await self.server.stop(grace)
        loop = asyncio.get_running_loop()
        if self.bus is not None:
            # Each step bounded: a bus that is down must not hold the stop past systemd's
            # TimeoutStopSec (nothing here loses data: unacknowledged messages come again).
            if getattr(self, "store_feed", None) is not None:
                self.store_feed.stop()
            for step in (getattr(self, "fanout", None) and self.fanout.stop(),
                         getattr(self, "publisher", None) and self.publisher.flush_records()):
                if step is not None:
                    try:
                        await asyncio.wait_for(step, 3.0)
                    except Exception as e:
                        log.warning("bus: at stop: %s", e or type(e).__name__)
            if getattr(self, "publisher", None) is not None:
                self.publisher.stop()
            await self.bus.close()
        if self.writer is not None:
            if self.store is not None:
                await loop.run_in_executor(None, self.committer.stop)
                self.store.close()
            await loop.run_in_executor(None, self.writer.close)


async def _watch_writer(collector: Collector, stopping: asyncio.Event, failed: list) -> None:
    while not stopping.is_set():
        await asyncio.sleep(1.0)
        if not collector.writer.alive:
            log.error("the store writer process exited (code %s): stopping so that systemd restarts the collector; "
                      "agents keep what was not acknowledged and send it again", collector.writer.exitcode)
            failed.append(1)
            stopping.set()


async def serve(cfg) -> int:
    collector = Collector(cfg)
    try:
        await collector.start()
    except BaseException:
        await collector.stop()
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    failed: list = []
    watch = asyncio.create_task(_watch_writer(collector, stopping, failed))
    sd_notify("READY=1")
    await stopping.wait()
    watch.cancel()
    log.info("stopping")
    sd_notify("STOPPING=1")
    await collector.stop()
    return 1 if failed else 0
