"""The collector's main process: gRPC ingest and consumer services over one store.

Threads: the gRPC servicers run on one asyncio loop; the committer thread takes every batch
waiting and has the store writer process (agent/collector/writer.py) commit them in one
transaction (group commit), then resolves each batch's future so its stream can send the
ack — an ack always follows a commit. Stored batches then go to the subscription hub on the
loop. Queries read the store file through a StoreReader of their own.

Per-sender failures stay with the sender: a batch that fails validation ends *that* stream
with INVALID_ARGUMENT (after acking everything before it, and naming it in the
`egs-rejected-seq` trailer so the agent drops it instead of resending it forever); an
oversized message gets RESOURCE_EXHAUSTED from gRPC itself; a host id that the client
certificate does not name gets PERMISSION_DENIED; a missing certificate UNAUTHENTICATED.
Other streams and the committer carry on.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path

import grpc

from agent.collector.settings import retention_seconds
from agent.collector.store import R10, R60, RAW, Store, StoreReader, check
from agent.collector.subscriptions import Hub, make_update
from agent.collector.writer import WriterProcess
from agent.config import parse_duration
from agent.proto import collector_pb2, collector_pb2_grpc
from agent.stream.columns import Points

log = logging.getLogger("egs-collector")
REJECTED_TRAILER = "egs-rejected-seq"
SNAPSHOT_CHUNK = 2000
UPDATE_CHUNK = 5000


class Committer:
    """The one thread that has the store written: group commit, then resolve the acks."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, hub: Hub,
                 cleanup_interval: float = 60.0):
        self.store, self.loop, self.hub = store, loop, hub
        self.cleanup_interval = cleanup_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="egs-committer", daemon=True)
        self.stats = {"commits": 0, "batches": 0, "duplicates": 0, "points": 0, "errors": 0,
                      "last_group": 0, "largest_group": 0}

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
        received = time.time()
        batches, points, wire, _ = zip(*group)
        try:
            results = self.store.write(list(batches), received, list(wire), list(points))
        except Exception as e:  # the disk or the database failed: nobody gets an ack
            self.stats["errors"] += 1
            log.error("store write failed for %d batches: %s", len(group), e)
            for *_, fut in group:
                self.loop.call_soon_threadsafe(_fail, fut, e)
            return
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
        if stored:
            self.hub.publish(stored, received)


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, error: Exception) -> None:
    if not fut.done():
        fut.set_exception(error)


def peer_names(context) -> set[str] | None:
    """Names the client certificate vouches for (CN and DNS SANs); None without TLS."""
    auth = context.auth_context() or {}
    if b"ssl" not in auth.get("transport_security_type", ()):
        return None
    names = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            names.add(value.decode() if isinstance(value, bytes) else str(value))
    return names


class Ingest(collector_pb2_grpc.IngestServicer):
    def __init__(self, committer: Committer, plaintext: bool, max_points: int, max_uncommitted: int = 4096):
        self.committer = committer
        self.plaintext = plaintext
        self.max_points = max_points
        self.connected: dict[str, str] = {}  # host -> peer
        self.counts: dict[str, dict[str, int]] = {}
        self.stats = {"rejected": 0, "refused_identity": 0, "unauthenticated": 0}
        # Batches received and not yet acked, all streams together. When the store falls
        # behind, readers wait here, gRPC flow control holds the agents back (their spools
        # absorb it) and the collector's memory stays bounded.
        self._room = asyncio.Semaphore(max_uncommitted)

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
                    await pending.put(("ack", batch, fut))
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
                _, batch, fut = item
                duplicate = await fut
                if host is None:
                    host = batch.host_id
                    self.connected[host] = peer
                c = self.counts.setdefault(batch.host_id, {"batches": 0, "duplicates": 0})
                c["duplicates" if duplicate else "batches"] += 1
                yield collector_pb2.Ack(epoch=batch.epoch, seq=batch.seq, duplicate=duplicate)
        finally:
            reader.cancel()
            if host is not None and self.connected.get(host) == peer:
                del self.connected[host]

    def _check(self, batch, names: set[str] | None) -> Points | tuple:
        """The batch's points, or (status code, details) saying why it is refused."""
        if names is not None and batch.host_id not in names:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"host id {batch.host_id!r} is not a name of the client certificate ({', '.join(sorted(names))})")
        if len(batch.ts) > self.max_points:
            return grpc.StatusCode.INVALID_ARGUMENT, f"batch has {len(batch.ts)} points, over ingest.max_points ({self.max_points})"
        try:
            return check(batch)
        except ValueError as e:
            return grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.epoch}/{batch.seq}: {e}"


class Consumers(collector_pb2_grpc.ConsumersServicer):
    def __init__(self, store: Store, hub: Hub, ingest: Ingest, tokens: list[str],
                 heartbeat: float, max_pending: int):
        self.store, self.hub, self.ingest = store, hub, ingest
        self.tokens = [t.encode() for t in tokens]
        self.heartbeat, self.max_pending = heartbeat, max_pending

    async def _authorize(self, context) -> None:
        if not self.tokens:
            return  # plaintext on loopback with no tokens configured (checked by settings)
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t) for t in self.tokens):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid consumer token is needed (authorization: Bearer TOKEN)")

    async def Subscribe(self, request, context):
        await self._authorize(context)
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
        if not request.metric:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "metric is required")
        loop = asyncio.get_running_loop()
        try:
            resolution, found = await loop.run_in_executor(None, lambda: self.store.query(
                request.metric, request.host, dict(request.labels), request.start, request.end,
                request.resolution, request.limit or 10000))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        out = collector_pb2.QueryResponse(resolution=resolution)
        for s in found:
            series = out.series.add(host=s.host, metric=s.metric)
            series.labels.update(s.labels)
            for ts, count, total, lo, hi, last in s.points:
                series.points.add(ts=ts, count=count, sum=total, min=lo, max=hi, last=last)
        return out

    async def Agents(self, request, context):
        await self._authorize(context)
        rows = await asyncio.get_running_loop().run_in_executor(None, self.store.agents)
        out = collector_pb2.AgentsResponse(now=time.time())
        for row in rows:
            info = out.agents.add(host=row["host"], epoch=row["epoch"] or 0, last_seq=row["last_seq"] or 0,
                                  last_seen=row["last_seen"] or 0, connected=row["host"] in self.ingest.connected,
                                  peer=self.ingest.connected.get(row["host"], ""))
            info.labels.update(row["labels"])
            info.status.spool_backlog_records = row["backlog_records"] or 0
            info.status.spool_backlog_bytes = row["backlog_bytes"] or 0
            info.status.dropped_records = row["dropped"] or 0
            info.status.health = row["health"] or ""
            c = self.ingest.counts.get(row["host"], {})
            info.batches, info.duplicates = c.get("batches", 0), c.get("duplicates", 0)
        return out


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
        ("grpc.max_send_message_length", 64 << 20),
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


def sd_notify(message: str) -> None:
    """One sd_notify(3) datagram when systemd asked for it (Type=notify); else nothing."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.send(message.encode())
        except OSError as e:
            log.warning("sd_notify failed: %s", e)


class Collector:
    """The whole collector, started and stopped from one place (the CLI and the tests)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.writer: WriterProcess | None = None
        self.store: StoreReader | None = None
        self.server: grpc.aio.Server | None = None
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        cfg = self.cfg
        retention = {RAW: retention_seconds(cfg.store.raw_retention),
                     R10: retention_seconds(cfg.store.rollup_10s_retention),
                     R60: retention_seconds(cfg.store.rollup_1m_retention),
                     "events": retention_seconds(cfg.store.events_retention)}
        store_args = dict(data_dir=cfg.collector.data_dir, synchronous=cfg.store.synchronous, retention=retention,
                          cache_mib=cfg.store.cache_mib, flush_interval=parse_duration(cfg.store.rollup_flush),
                          compress_raw=cfg.store.compress_raw)
        loop = asyncio.get_running_loop()
        self.writer = await loop.run_in_executor(None, lambda: WriterProcess(store_args, cfg.collector.log_level))
        if self.writer.recovered:
            log.info("store: refolded %d batches whose rollups were not flushed before the last stop", self.writer.recovered)
        self.store = StoreReader(self.writer.path, retention)
        self.hub = Hub()
        self.committer = Committer(self.writer, loop, self.hub, parse_duration(cfg.store.cleanup_interval))
        self.committer.start()
        self.ingest = Ingest(self.committer, cfg.tls.plaintext, cfg.ingest.max_points,
                             cfg.ingest.max_uncommitted)
        self.consumers = Consumers(self.store, self.hub, self.ingest, cfg.consumers.all_tokens,
                                   parse_duration(cfg.consumers.heartbeat), cfg.consumers.max_pending)
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
        log.info("serving: ingest on %s (port %d), consumers on %s (port %d), store %s%s",
                 cfg.ingest.listen, self.ports["ingest"], cfg.consumers.listen, self.ports["consumers"],
                 self.store.path, ", PLAINTEXT" if cfg.tls.plaintext else ", mutual TLS")

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        loop = asyncio.get_running_loop()
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
