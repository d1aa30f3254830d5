"""Scale-out mode: collectors that share one truth through NATS JetStream (`[bus]`).

Without a bus a collector stores what it receives and fans it out to its own subscribers.
With one, every accepted batch goes through JetStream first, and each collector plays three
parts (docs/collector.md, "Many collectors"):

- **Publisher** (`Publisher`, in place of the committer on the ingest side): a batch is
  published to `egs.batches.<host>` of the stream (`[bus] stream`) with the message id
  `host/epoch/seq`, and the agent is acknowledged only once JetStream acknowledged the
  publish (stored on `replicas` servers). JetStream drops a publish whose id it saw within
  `duplicate_window` (PubAck.duplicate: the agent gets a duplicate ack). A host's batches
  are published one at a time in order, so the stream holds each host's batches in
  sequence order. Beyond the window, the highest sequence published per (host, epoch) is in
  the `EGS_AGENTS` key-value bucket (with which collector has the host, its status and
  last-seen time: what `agents` shows fleet-wide), written for each host at most every
  `AGENT_RECORD_INTERVAL` s — well inside the window, so a batch the record does not cover
  yet is still one JetStream remembers.
- **Store writer** (`StoreFeed`): every collector pulls from one durable consumer
  (`egs-store`), so the stream's batches are shared among the collectors' store writers;
  a message is acknowledged to JetStream once its group is committed to the store, else
  left to be delivered again (to this or another collector). The stream keeps a message
  until that consumer acknowledged it (interest retention), so nothing acknowledged to an
  agent is lost while every store writer is down; `max_bytes` bounds it (then publishes
  fail and agents spool). Delivery is at least once and, after a collector dies, not in
  order: the store is written without its own per-host sequence check (a redelivered
  batch older than one already stored is not a duplicate here), and a batch delivered
  twice is the same samples at the same timestamps twice, which the store keeps once
  (the remote-write engines' duplicate handling, docs/collector.md, "Replays").
- **Fan-out** (`Fanout`): every collector follows the whole stream from its start with an
  ordered consumer and hands each batch, once per (host, epoch, seq), to its subscription
  hub: `Subscribe` on any collector sees every host.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import socket
import time
from dataclasses import dataclass

from agent.collector.store.schema import labels_text
from agent.proto import collector_pb2
from agent.wire import columns

log = logging.getLogger("egs-collector")

SUBJECT_PREFIX = "egs.batches"
AGENTS_BUCKET = "EGS_AGENTS"
STORE_CONSUMER = "egs-store"
AGENT_RECORD_INTERVAL = 10.0  # seconds between two records of a connected host (<< duplicate_window)
FETCH = 256  # messages a store writer pulls at once
STORE_ACK_WAIT = 15.0  # seconds
STREAM_CREATE_WAIT = 30.0  # seconds a forming cluster is given to place the stream at start
# nats-server 2.9 acknowledges a publish once the message is in its file store's buffer; a
# single server killed (-9, OOM) loses the last moments of them (seen: one batch in a test;
# with replicas = 3 a quorum holds each). A publisher keeps what JetStream acknowledged in
# the last REPUBLISH_WINDOW seconds (at most REPUBLISH_MAX_BYTES) and publishes it again,
# with the same message ids, once the bus is back. A batch the server still holds is a
# duplicate by id; one already stored and removed (interest retention) is stored again, and
# the store keeps it once; one the server lost is stored.
REPUBLISH_WINDOW = 10.0
REPUBLISH_MAX_BYTES = 256 << 20
_TOKEN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class BusUnavailable(Exception):
    """JetStream did not take the batch (no servers, no quorum, full, a timeout)."""


class BusConfigError(ValueError):
    """The bus cannot be used as configured: the collector says which setting and exits 1."""


def subject(host: str) -> str:
    """A host's subject. A host id that is a DNS name is used as it is (its dots become
    subject tokens); any other is hex-encoded after `x.` so that no host id can name a
    wildcard or an empty token."""
    if _TOKEN.fullmatch(host) and not host.startswith("x."):
        return f"{SUBJECT_PREFIX}.{host}"
    return f"{SUBJECT_PREFIX}.x.{host.encode().hex()}"


def agent_key(host: str) -> str:
    return subject(host)[len(SUBJECT_PREFIX) + 1:]


@dataclass
class BusSettings:
    servers: list[str]
    stream: str = "EGS_BATCHES"
    replicas: int = 1
    duplicate_window: float = 120.0
    max_bytes: int = 10 << 30
    name: str = ""
    user: str = ""
    password_file: str = ""
    tls_ca: str = ""
    timeout: float = 5.0

    @classmethod
    def from_config(cls, cfg, ingest_port: int | str = "") -> "BusSettings":
        from agent.config import parse_duration
        bus = cfg.bus
        name = bus.name or f"{socket.gethostname()}:{ingest_port or cfg.ingest.listen.rpartition(':')[2]}"
        return cls(list(bus.nats), bus.stream, bus.replicas, parse_duration(bus.duplicate_window),
                   bus.max_mib << 20, name, bus.user, bus.password_file, bus.tls_ca, parse_duration(bus.timeout))


class Bus:
    """The connection, the stream and the agents bucket; `state_text` for `agents`."""

    def __init__(self, settings: BusSettings):
        self.settings = settings
        self.nc = None
        self.js = None
        self.agents_kv = None
        self.ok, self.since, self.reason = True, time.time(), ""
        self.published = self.duplicates = self.failures = 0
        self.closing = False
        self.on_disconnected = None  # callables the Publisher sets (republishing after an outage)
        self.on_reconnected = None

    async def connect(self) -> None:
        import nats
        from nats.errors import NoServersError
        s = self.settings
        options = dict(servers=s.servers, name=f"egs-collector {s.name}", connect_timeout=s.timeout,
                       max_reconnect_attempts=-1, reconnect_time_wait=1.0,
                       disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                       error_cb=self._error)
        if s.user:
            options["user"] = s.user
            options["password"] = _read(s.password_file, "bus.password_file") if s.password_file else ""
        if s.tls_ca:
            import ssl
            options["tls"] = ssl.create_default_context(cafile=s.tls_ca)
        try:
            self.nc = await nats.connect(**options)
        except (NoServersError, OSError, asyncio.TimeoutError) as e:
            raise BusConfigError(f"bus.nats {', '.join(s.servers)}: cannot connect: {e or type(e).__name__}") from None
        self.js = self.nc.jetstream(timeout=s.timeout)
        await self._check_jetstream()
        await self._ensure_stream()
        await self._ensure_store_consumer()
        await self._ensure_agents_bucket()

    async def _check_jetstream(self) -> None:
        from nats.js.errors import ServiceUnavailableError
        from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
        try:
            await self.js.account_info()
        except (NoRespondersError, ServiceUnavailableError) as e:
            raise BusConfigError(f"bus.nats {', '.join(self.settings.servers)}: the server has no JetStream "
                                 f"(start nats-server with -js / a jetstream {{}} block): {e}") from None
        except NatsTimeout:
            raise BusConfigError(f"bus.nats {', '.join(self.settings.servers)}: JetStream did not answer "
                                 f"within bus.timeout ({self.settings.timeout:g} s)") from None

    async def _ensure_stream(self) -> None:
        from nats.js import api
        from nats.js.errors import APIError, NotFoundError
        s = self.settings
        want = api.StreamConfig(name=s.stream, subjects=[f"{SUBJECT_PREFIX}.>"], retention=api.RetentionPolicy.INTEREST,
                                storage=api.StorageType.FILE, num_replicas=s.replicas,
                                duplicate_window=s.duplicate_window, max_bytes=s.max_bytes,
                                discard=api.DiscardPolicy.NEW)
        try:
            info = await self.js.stream_info(s.stream)
        except NotFoundError:
            try:
                await self._add_stream(want)
            except APIError as e:
                raise BusConfigError(f"bus.stream {s.stream!r} cannot be created with bus.replicas {s.replicas} and "
                                     f"bus.max_mib {s.max_bytes >> 20}: {e.description} (each server's JetStream "
                                     "max_file_store must allow max_mib; replicas at most the cluster's size)") from None
            log.info("bus: created stream %s (%d replica(s), duplicate window %g s, at most %d MiB)",
                     s.stream, s.replicas, s.duplicate_window, s.max_bytes >> 20)
            return
        have = info.config
        differences = []
        for key, setting, mine, theirs in (
                ("replicas", "bus.replicas", s.replicas, have.num_replicas),
                ("duplicate_window", "bus.duplicate_window", s.duplicate_window, have.duplicate_window),
                ("max_bytes", "bus.max_mib", s.max_bytes, have.max_bytes),
                ("subjects", "(the collector's subjects)", [f"{SUBJECT_PREFIX}.>"], have.subjects),
                ("retention", "(the collector's retention)", "interest", getattr(have.retention, "value", have.retention))):
            if mine != theirs and not (isinstance(mine, float) and theirs and abs(mine - float(theirs)) < 1e-6):
                differences.append(f"{setting} asks {key} {mine!r}, the stream has {theirs!r}")
        if differences:
            raise BusConfigError(f"bus.stream {s.stream!r} exists with another configuration: "
                                 + "; ".join(differences) + " (every collector of a fleet must use the same [bus] "
                                 "settings; change them on all, and update or recreate the stream with the nats CLI)")

    async def _add_stream(self, config) -> None:
        """Create the stream; a cluster still forming ("no suitable peers for placement",
        JetStream not yet available) is waited for up to STREAM_CREATE_WAIT s."""
        from nats.js.errors import APIError
        deadline = time.monotonic() + STREAM_CREATE_WAIT
        while True:
            try:
                await self.js.add_stream(config)
                return
            except APIError as e:
                transient = "peers" in str(e.description or "") or e.code == 503
                if not transient or time.monotonic() >= deadline:
                    raise
                log.info("bus: the cluster cannot place stream %s yet (%s); trying again", config.name, e.description)
                await asyncio.sleep(0.5)

    async def _ensure_store_consumer(self) -> None:
        """The store writers' durable consumer exists before anything is published: with
        interest retention a message no consumer wants is not kept."""
        await self.js.add_consumer(self.settings.stream, store_consumer_config())

    async def _ensure_agents_bucket(self) -> None:
        from nats.js.errors import BucketNotFoundError, NotFoundError
        try:
            self.agents_kv = await self.js.key_value(AGENTS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            self.agents_kv = await self.js.create_key_value(bucket=AGENTS_BUCKET, history=1,
                                                            replicas=self.settings.replicas)

    # --- state -----------------------------------------------------------------------------

    def down(self, reason: str) -> None:
        if self.ok:
            self.ok, self.since = False, time.time()
            log.error("bus: JetStream cannot take batches now: %s (agents keep what is not acknowledged)", reason)
        self.reason = reason

    def up(self) -> None:
        if not self.ok:
            log.warning("bus: JetStream takes batches again (it did not for %.0f s)", time.time() - self.since)
            self.ok, self.since, self.reason = True, time.time(), ""

    def state_text(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        where = f"bus {self.settings.stream} on {', '.join(self.settings.servers)} (collector {self.settings.name})"
        counts = f" (published {self.published}, duplicates {self.duplicates}, failed {self.failures})"
        return where + (": ok" if self.ok else f": unavailable since {since}: {self.reason}") + counts

    async def _disconnected(self) -> None:
        if not self.closing:
            self.down("disconnected from NATS")
            if self.on_disconnected is not None:
                self.on_disconnected()

    async def _reconnected(self) -> None:
        log.warning("bus: reconnected to %s", self.nc.connected_url.netloc if self.nc else "?")
        if self.reason.startswith("disconnected"):  # a failed publish since says more: that stays until one passes
            self.up()
        if self.on_reconnected is not None:
            asyncio.get_running_loop().create_task(self.on_reconnected())

    async def _error(self, e: Exception) -> None:
        log.warning("bus: %s", e)

    async def close(self) -> None:
        """Flush what is buffered and close, in a few seconds at most (not nats-py's drain,
        which waits up to 30 s on the subscriptions: the store feed's unacknowledged messages
        are delivered again anyway, to this collector's next start or another one)."""
        self.closing = True
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.flush(), 2.0)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.nc.close(), 3.0)
            except Exception as e:
                log.warning("bus: closing the connection: %s", e or type(e).__name__)


class Publisher:
    """Takes the committer's place on the ingest side: `submit` publishes, the future
    resolves to `duplicate` once JetStream acknowledged it."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop):
        self.bus, self.loop = bus, loop
        self._queues: dict[str, collections.deque] = {}  # host -> batches waiting to be published
        self._workers: dict[str, asyncio.Task] = {}
        self._published: dict[tuple[str, int], int] = {}  # (host, epoch) -> highest seq published
        self._latest: dict[str, object] = {}  # host -> its latest batch published here
        self._first_seen: dict[str, float] = {}
        self._nic: dict[str, str] = {}  # host -> its latest NIC report
        self._written: dict[str, tuple[float, tuple]] = {}  # host -> (when its record was written, (connected, peer))
        self.connected: dict[str, str] = {}  # host -> peer (from Ingest)
        self._recent: collections.deque = collections.deque()  # (when, subject, wire, msg id) acknowledged lately
        self._recent_bytes = 0
        self._republish: list = []
        self._republishing = False
        self.republished = self.republished_kept = 0
        bus.on_disconnected, bus.on_reconnected = self._outage, self._republish_lost

    def submit(self, batch, points, wire: bytes, future: asyncio.Future) -> None:
        # A stream that ended (its agent gone) no longer awaits its futures: a failure set on
        # one is then nobody's to read, and asyncio would log it as never retrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        host = batch.host_id
        pending = self._queues.get(host)
        if pending is None:
            pending = self._queues[host] = collections.deque()
        pending.append((batch, wire, future))
        if host not in self._workers:  # one worker per host while it has batches waiting
            self._workers[host] = self.loop.create_task(self._worker(host, pending))

    async def _worker(self, host: str, pending: collections.deque) -> None:
        """One host's batches, one publish at a time, in order; ends when none is waiting."""
        try:
            while pending:
                batch, wire, fut = pending.popleft()
                if fut.done():
                    continue
                try:
                    duplicate = await self._publish(batch, wire)
                except Exception as e:
                    if not fut.done():
                        fut.set_exception(e)
                    continue
                if not fut.done():
                    fut.set_result(duplicate)
        finally:
            del self._workers[host]
            if not pending:
                self._queues.pop(host, None)

    async def _publish(self, batch, wire: bytes) -> bool:
        from nats.errors import Error as NatsError
        host, key = batch.host_id, (batch.host_id, batch.epoch)
        known = self._published.get(key)
        if known is None:
            known = self._published[key] = await self._recorded_seq(host, batch.epoch)
        if batch.seq <= known:
            self.bus.duplicates += 1
            return True
        try:
            ack = await self.bus.js.publish(subject(host), wire, headers={"Nats-Msg-Id": f"{host}/{batch.epoch}/{batch.seq}"})
        except (NatsError, asyncio.TimeoutError, OSError) as e:
            self.bus.failures += 1
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.bus.down(why)
            raise BusUnavailable(f"JetStream did not take the batch: {why}") from None
        self.bus.up()
        self._remember(subject(host), wire, f"{host}/{batch.epoch}/{batch.seq}")
        self._published[key] = batch.seq
        if ack.duplicate:
            self.bus.duplicates += 1
        else:
            self.bus.published += 1
        await self._record(batch)
        return bool(ack.duplicate)

    def _remember(self, subj: str, wire: bytes, ident: str) -> None:
        now = time.monotonic()
        self._recent.append((now, subj, wire, ident))
        self._recent_bytes += len(wire)
        while self._recent and (self._recent[0][0] < now - REPUBLISH_WINDOW or self._recent_bytes > REPUBLISH_MAX_BYTES):
            self._recent_bytes -= len(self._recent.popleft()[2])

    def _outage(self) -> None:
        """The connection to NATS dropped: what JetStream acknowledged lately may be lost."""
        if not self._republish:
            self._republish = list(self._recent)

    async def _republish_lost(self) -> None:
        """Back on the bus: the batches acknowledged just before the outage, published again
        (the same message ids: those the server kept are duplicates)."""
        from nats.errors import Error as NatsError
        if self._republishing:
            return
        self._republishing = True
        pending, sent, kept = self._republish, 0, 0
        try:
            while pending and not self.bus.closing:
                _, subj, wire, ident = pending[0]
                try:
                    ack = await self.bus.js.publish(subj, wire, headers={"Nats-Msg-Id": ident})
                except (NatsError, asyncio.TimeoutError, OSError):
                    await asyncio.sleep(1.0)  # JetStream not ready yet (a leader being elected)
                    continue
                pending.pop(0)
                sent += 1
                kept += bool(ack.duplicate)
        finally:
            self._republishing = False
        self.republished += sent
        self.republished_kept += kept
        if sent:
            log.info("bus: published the %d batches acknowledged in the last %.0f s before the outage again "
                     "(%d were duplicates by id; the rest are stored again or for the first time, and the "
                     "store keeps each once)", sent, REPUBLISH_WINDOW, kept)

    async def _recorded_seq(self, host: str, epoch: int) -> int:
        """The highest sequence the agents bucket says was published for (host, epoch)."""
        record = await self._read_record(host)
        if record and record.get("epoch") == epoch:
            return int(record.get("last_seq") or 0)
        return 0

    async def _read_record(self, host: str) -> dict | None:
        from nats.js.errors import KeyNotFoundError, NotFoundError
        try:
            entry = await self.bus.agents_kv.get(agent_key(host))
        except (KeyNotFoundError, NotFoundError):
            return None
        except Exception as e:  # the bucket unreadable now: JetStream's own window still dedups
            log.warning("bus: cannot read %s's record: %s", host, e)
            return None
        try:
            return json.loads(entry.value)
        except (TypeError, ValueError):
            return None

    async def _record(self, batch) -> None:
        """Note the host's latest batch; write its record when it connected or moved, or
        AGENT_RECORD_INTERVAL after the last one (built only then: this runs per batch)."""
        host = batch.host_id
        now = time.time()
        self._latest[host] = batch
        self._first_seen.setdefault(host, now)
        where = (host in self.connected, self.connected.get(host, ""))
        written = self._written.get(host)
        if written is None or written[1] != where or now - written[0] >= AGENT_RECORD_INTERVAL:
            await self._write_record(host, self._record_of(host, now), where)

    def _record_of(self, host: str, now: float) -> dict:
        batch = self._latest[host]
        nic = batch.nic_json or self._nic.get(host)
        if batch.nic_json:
            self._nic[host] = batch.nic_json
        return {"host": host, "collector": self.bus.settings.name, "peer": self.connected.get(host, ""),
                "connected": host in self.connected, "labels": dict(batch.labels), "epoch": batch.epoch,
                "last_seq": self._published.get((host, batch.epoch), batch.seq), "last_seen": now,
                "first_seen": self._first_seen[host],
                "backlog_records": batch.status.spool_backlog_records, "backlog_bytes": batch.status.spool_backlog_bytes,
                "dropped": batch.status.dropped_records, "health": batch.status.health, "nic": nic}

    async def _write_record(self, host: str, record: dict, where: tuple) -> None:
        try:
            await self.bus.agents_kv.put(agent_key(host), json.dumps(record).encode())
            self._written[host] = (time.time(), where)
        except Exception as e:
            log.warning("bus: cannot record %s in %s: %s", host, AGENTS_BUCKET, e)

    async def disconnected(self, host: str) -> None:
        """The host's stream ended here: its record says so (unless it is connected again)."""
        if host in self._latest and host not in self.connected:
            await self._write_gone(host)

    async def flush_records(self) -> None:
        """Every host's latest record now (a clean stop: none is connected here any more)."""
        for host in list(self._latest):
            await self._write_gone(host)

    async def _write_gone(self, host: str) -> None:
        """Record `host` as no longer connected here, unless another collector has it now."""
        current = await self._read_record(host)
        if current is not None and current.get("collector") != self.bus.settings.name:
            return
        await self._write_record(host, {**self._record_of(host, time.time()), "connected": False, "peer": ""},
                                 (False, ""))

    def stop(self) -> None:
        for task in self._workers.values():
            task.cancel()


async def agents(bus: Bus) -> list[dict]:
    """Every host's latest record in the agents bucket, in the shape of `StoreReader.agents`
    plus "collector" and "connected".

    The bucket's stream is read up to the last sequence it had when asked (its stream info),
    one entry per key (the latest), deletions skipped. nats-py's watcher also puts a None
    "initial values done" mark in its queue, but it decides that from the consumer's pending
    count before its own callback has taken any message: when the server has already pushed
    every entry, the mark comes first and a listing that stopped at it came back empty (seen
    under load: a collector answered Agents without the host connected to it)."""
    out = []
    try:
        info = await bus.js.stream_info(f"KV_{AGENTS_BUCKET}")
        last = info.state.last_seq if info.state.messages else 0
        watcher = await bus.agents_kv.watchall(include_history=False, ignore_deletes=False)
    except Exception as e:
        raise BusUnavailable(f"cannot read {AGENTS_BUCKET}: {e}") from None
    try:
        while last:
            entry = await watcher.updates(timeout=5.0)
            if entry is None:  # the watcher's own "done" mark, not to be trusted: see above
                continue
            if entry.operation not in ("DEL", "PURGE"):
                try:
                    out.append(json.loads(entry.value))
                except (TypeError, ValueError):
                    pass
            if entry.revision >= last:
                break
    except Exception as e:
        raise BusUnavailable(f"cannot read {AGENTS_BUCKET}: {e}") from None
    finally:
        await watcher.stop()
    return sorted(out, key=lambda r: r.get("host", ""))


class StoreFeed:
    """This collector's share of the store writing: pulls from the durable consumer, has the
    committer write each fetch as one or more groups, acknowledges what was committed."""

    def __init__(self, bus: Bus, committer, loop: asyncio.AbstractEventLoop):
        self.bus, self.committer, self.loop = bus, committer, loop
        self._task: asyncio.Task | None = None
        self.stored = self.duplicates = self.redelivered = self.failed = self.malformed = 0

    async def start(self) -> None:
        self.sub = await self.bus.js.pull_subscribe(f"{SUBJECT_PREFIX}.>", durable=STORE_CONSUMER,
                                                     stream=self.bus.settings.stream, config=store_consumer_config())
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        while True:
            try:
                msgs = await self.sub.fetch(FETCH, timeout=1.0)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the bus is down: nats-py reconnects; try again shortly
                log.debug("bus: store fetch failed: %s", e)
                await asyncio.sleep(1.0)
                continue
            await self._store(msgs)

    async def _store(self, msgs) -> None:
        futures = []
        for msg in msgs:
            try:
                # The store reads the points from the bytes itself (the writer process):
                # the message alone is needed here.
                batch = collector_pb2.Batch.FromString(msg.data)
                points = None
            except Exception as e:  # not ours to store, ever: say so and drop it
                self.malformed += 1
                log.error("bus: message %s on %s is not a batch the store can hold (%s); terminated",
                          msg.metadata.sequence.stream, msg.subject, e)
                await msg.term()
                continue
            if msg.metadata.num_delivered > 1:
                self.redelivered += 1
            fut = self.loop.create_future()
            self.committer.submit(batch, points, msg.data, fut)
            futures.append((msg, fut))
        for msg, fut in futures:
            try:
                duplicate = await fut
            except Exception as e:
                self.failed += 1
                log.debug("bus: store write failed, %s left for redelivery: %s", msg.subject, e)
                try:
                    await msg.nak(delay=2.0)
                except Exception:
                    pass
                continue
            if duplicate:
                self.duplicates += 1
            else:
                self.stored += 1
            try:
                await msg.ack()
            except Exception as e:  # delivered again later: the store keeps it once
                log.debug("bus: ack of %s failed: %s", msg.subject, e)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def store_consumer_config():
    from nats.js import api
    # ack_wait: a batch fetched by a writer whose ack never reached JetStream (the writer, or
    # the consumer's leader, died) is delivered again after this long; a write that takes
    # longer (an engine retried for remote_retry) is delivered twice, which the engine keeps once.
    return api.ConsumerConfig(durable_name=STORE_CONSUMER, ack_policy=api.AckPolicy.EXPLICIT,
                              deliver_policy=api.DeliverPolicy.ALL, ack_wait=STORE_ACK_WAIT, max_ack_pending=20_000,
                              filter_subject=f"{SUBJECT_PREFIX}.>")


class SeriesIds:
    """Series ids for the subscription hub of a collector that did not store the batch:
    one per (host, metric, labels) for this process's life (the hub's only need)."""

    KEPT_TABLES = 4096

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str, str], int] = {}
        self._tables: dict[tuple[str, bytes], tuple[int, ...]] = {}

    def of(self, batch, points) -> tuple[int, ...]:
        key = (batch.host_id, batch.series_table)
        found = self._tables.get(key)
        if found is None:
            found = tuple(self._ids.setdefault((batch.host_id, m, labels_text(lab)), len(self._ids) + 1)
                          for m, lab in zip(points.layout.metrics, points.layout.labels))
            if len(self._tables) >= self.KEPT_TABLES:
                self._tables.clear()
            self._tables[key] = found
        return found


class Fanout:
    """Every batch of the stream, once per (host, epoch, seq), to this collector's hub.

    While no one subscribes, a batch is not decoded: the message id (host/epoch/seq) is
    enough to keep the order and drop repeats, and each host's last `Hub.RECENT` messages
    are held as bytes; the first subscription has them decoded for its snapshot
    (`Hub.before_add`)."""

    def __init__(self, bus: Bus, hub):
        self.bus, self.hub = bus, hub
        self.ids = SeriesIds()
        self._seen: dict[tuple[str, int], int] = {}
        self._held: dict[str, collections.deque] = {}  # host -> last messages' bytes, while no one subscribes
        self.delivered = self.skipped = 0
        self.sub = None
        hub.before_add = self._release

    async def start(self) -> None:
        from nats.js import api
        self.sub = await self.bus.js.subscribe(f"{SUBJECT_PREFIX}.>", stream=self.bus.settings.stream,
                                               ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW,
                                               cb=self._on_message, idle_heartbeat=5.0)

    async def _on_message(self, msg) -> None:
        ident = _message_id(msg)
        if ident is None:
            return  # not published by a collector
        host, epoch, seq = ident
        key = (host, epoch)
        if seq <= self._seen.get(key, 0):
            self.skipped += 1  # published twice (after the duplicate window): seen already
            return
        self._seen[key] = seq
        if not self.hub.subscriptions:
            held = self._held.get(host)
            if held is None:
                held = self._held[host] = collections.deque(maxlen=self.hub.RECENT)
            held.append((msg.data, time.time()))
            return
        self._deliver(msg.data, time.time())

    def _deliver(self, data: bytes, received: float) -> None:
        try:
            batch = collector_pb2.Batch.FromString(data)
            points = columns.read(batch)
        except Exception:
            return  # the store writer says so (StoreFeed)
        self.delivered += 1
        self.hub.publish([(batch, points, self.ids.of(batch, points))], received)

    def _release(self) -> None:
        held, self._held = self._held, {}
        for messages in held.values():
            for data, received in messages:
                self._deliver(data, received)

    async def stop(self) -> None:
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:
                pass


def _message_id(msg) -> tuple[str, int, int] | None:
    """(host, epoch, seq) from the message id a collector published with."""
    ident = (msg.headers or {}).get("Nats-Msg-Id", "")
    try:
        head, _, seq = ident.rpartition("/")
        host, _, epoch = head.rpartition("/")
        return host, int(epoch), int(seq)
    except ValueError:
        return None


def _read(path: str, key: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise BusConfigError(f"{key} {path}: {e.strerror or e}") from None
