"""The gRPC stream client: sends spooled batches to the collector, moves the ack cursor.

One long-lived bidirectional `Ingest.Publish` stream per agent, run by grpc.aio on its own
thread so the daemon's main loop never waits on the network. The sender reads records from
the spool at the acknowledgement cursor, keeps up to `max_in_flight` of them on the wire,
and advances the cursor as acks arrive, in order. After any failure it reconnects with
gRPC's connection backoff, moving to the next endpoint in the list (failover); the first
endpoint that answers is kept until it fails. Every reconnect starts again at the cursor,
so the collector may see a batch twice; it de-duplicates by (host, epoch, seq).

Payloads travel as the spooled bytes (a serialized `Batch`), so nothing is parsed or
re-encoded on the way out.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from pathlib import Path

import grpc

from agent.backoff import Backoff
from agent.netaddr import is_loopback_endpoint
from agent.proto import collector_pb2
from agent.stream.spool import Entry, Spool
from agent.threads import name_os_thread

PUBLISH = "/egs.collector.v1.Ingest/Publish"
REJECTED_TRAILER = "egs-rejected-seq"  # set by the collector when it refuses one batch


def channel_options(settings) -> list[tuple[str, int | str]]:
    return [
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", 1 << 20),
        # We run our own backoff across endpoints; keep the channel's own short.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def make_channel(target: str, settings) -> grpc.aio.Channel:
    options = channel_options(settings)
    if settings.plaintext:
        if not is_loopback_endpoint(target):
            raise ValueError(f"stream.plaintext is only allowed to loopback endpoints, not {target}")
        return grpc.aio.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(settings.ca).read_bytes(),
        private_key=Path(settings.key).read_bytes(),
        certificate_chain=Path(settings.cert).read_bytes())
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    return grpc.aio.secure_channel(target, creds, options=options)


class _SessionEnded(Exception):
    pass


class StreamClient:
    """Drains a `Spool` to the first collector endpoint that accepts it."""

    def __init__(self, settings, spool: Spool, log: logging.Logger | None = None):
        self.settings = settings
        self.spool = spool
        self.log = log or logging.getLogger("egs.stream")
        self.endpoints = list(settings.endpoints)
        self._backoff = Backoff(settings.backoff_base, settings.backoff_multiplier,
                                settings.backoff_jitter, settings.backoff_max)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.state = {"endpoint": None, "connected": False, "last_error": None, "last_error_at": None,
                      "connects": 0, "failures": 0, "sent_batches": 0, "acked_batches": 0,
                      "duplicate_acks": 0, "rejected_batches": 0, "oversized_batches": 0,
                      "next_attempt_in": None, "last_ack_at": None}

    # --- thread plumbing -----------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="egs-stream", daemon=True)
        self._thread.start()
        ready.wait(5)

    def _main(self, ready: threading.Event) -> None:
        name_os_thread()
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        ready.set()
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    def notify(self) -> None:
        """New records are in the spool (called by the outbox writer, any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed between the check and the call
                pass

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
            self._thread.join(timeout)

    def status(self) -> dict:
        return dict(self.state)

    # --- the connection loop -------------------------------------------------------------

    async def _run(self) -> None:
        index = 0
        failed_in_round = 0
        while not self._stop.is_set():
            target = self.endpoints[index]
            progressed = False
            session = asyncio.create_task(self._session(target))
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done():  # stopping: do not wait out a connect or a stream
                session.cancel()
            stopper.cancel()
            try:
                progressed = await session
            except asyncio.CancelledError:
                break
            except Exception as e:  # any failure ends the session; the loop decides what next
                self._failed(target, e)
            self.state["connected"] = False
            if self._stop.is_set():
                break
            if progressed:
                self._backoff.reset()
                failed_in_round = 0
                continue  # same endpoint first: it worked a moment ago
            failed_in_round += 1
            index = (index + 1) % len(self.endpoints)
            if failed_in_round < len(self.endpoints):
                continue  # try the next endpoint at once; back off after a whole round
            failed_in_round = 0
            delay = self._backoff.next()
            self.state["next_attempt_in"] = round(delay, 3)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.state["next_attempt_in"] = None

    def _failed(self, target: str, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError):
            text = f"{e.code().name}: {e.details()}"
        elif isinstance(e, asyncio.TimeoutError):
            text = f"no connection within {self.settings.connect_timeout:g} s"
        elif isinstance(e, _SessionEnded):
            text = str(e)
        else:
            text = f"{type(e).__name__}: {e}"
        self.state["failures"] += 1
        if self.state["last_error"] != f"{target}: {text}":
            self.log.warning("collector %s: %s", target, text)
        self.state["last_error"], self.state["last_error_at"] = f"{target}: {text}", time.time()

    async def _session(self, target: str) -> bool:
        """One connection: send from the cursor, apply acks; returns whether any ack came."""
        acked_before = self.state["acked_batches"] + self.state["duplicate_acks"]
        channel = make_channel(target, self.settings)
        try:
            await asyncio.wait_for(channel.channel_ready(), self.settings.connect_timeout)
            publish = channel.stream_stream(PUBLISH, request_serializer=None,
                                            response_deserializer=collector_pb2.Ack.FromString)
            call = publish()
            self.state.update(endpoint=target, connected=True)
            self.state["connects"] += 1
            self.log.info("streaming to collector %s", target)
            inflight: collections.deque[Entry] = collections.deque()
            room = asyncio.Event()
            room.set()
            sender = asyncio.create_task(self._send(call, inflight, room))
            stopper = asyncio.create_task(self._stop.wait())
            try:
                while True:
                    reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({reader, sender, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        reader.cancel()
                        call.cancel()
                        break
                    if sender in done and sender.exception() is not None:
                        # A write fails when the collector has just ended the call; its
                        # status (e.g. PERMISSION_DENIED) says why, the write error does not.
                        reader.cancel()
                        await self._raise_status(call)
                        raise sender.exception()
                    try:
                        ack = await reader
                    except grpc.aio.AioRpcError as e:
                        self._refused(e, inflight)
                        raise
                    if ack is grpc.aio.EOF:
                        raise _SessionEnded("the collector closed the stream")
                    self._apply_ack(ack, inflight)
                    room.set()
            finally:
                for task in (sender, stopper):
                    task.cancel()
                await asyncio.gather(sender, stopper, return_exceptions=True)
        finally:
            self.spool.flush_cursor()
            await channel.close(grace=None)
        return self.state["acked_batches"] + self.state["duplicate_acks"] > acked_before

    async def _send(self, call, inflight: collections.deque, room: asyncio.Event) -> None:
        pos = self.spool.start()
        limit = self.settings.max_in_flight
        while True:
            if len(inflight) >= limit:
                room.clear()
                await room.wait()
                continue
            self._wake.clear()
            entries = self.spool.read(pos, limit=min(64, limit - len(inflight)))
            if not entries:
                # notify() sets _wake (cleared before the read, so a record appended meanwhile
                # is never missed); the timeout is only a safety net, not a poll.
                try:
                    await asyncio.wait_for(self._wake.wait(), 10.0)
                except asyncio.TimeoutError:
                    pass
                continue
            for entry in entries:
                pos = entry.end
                if len(entry.payload) > self.settings.max_message_bytes:
                    # The collector would refuse it and the stream would stall on it forever.
                    self.state["oversized_batches"] += 1
                    self.log.error("dropping batch %d/%d: %d bytes is over stream.max_message_bytes",
                                   entry.epoch, entry.seq, len(entry.payload))
                    if not inflight:
                        self.spool.ack(entry.end)
                    continue
                inflight.append(entry)
                await call.write(entry.payload)
                self.state["sent_batches"] += 1

    @staticmethod
    async def _raise_status(call) -> None:
        try:
            code = await asyncio.wait_for(call.code(), 2.0)
        except (asyncio.TimeoutError, grpc.RpcError):
            return
        if code is not None and code != grpc.StatusCode.OK:
            raise _SessionEnded(f"{code.name}: {await call.details()}")

    def _apply_ack(self, ack, inflight: collections.deque) -> None:
        # Acks come in the order batches were sent; anything before the acked one was
        # either acked already or skipped locally (oversized).
        while inflight and (inflight[0].epoch, inflight[0].seq) != (ack.epoch, ack.seq):
            inflight.popleft()
        if not inflight:
            raise _SessionEnded(f"ack for {ack.epoch}/{ack.seq} matches nothing sent")
        entry = inflight.popleft()
        self.spool.ack(entry.end)
        self.state["duplicate_acks" if ack.duplicate else "acked_batches"] += 1
        self.state["last_ack_at"] = time.time()

    def _refused(self, error: grpc.aio.AioRpcError, inflight: collections.deque) -> None:
        """A batch the collector refused (malformed) is dropped and counted, not resent forever.

        The collector names it in a trailer and ends the stream after acking everything
        before it, so it is the oldest batch in flight.
        """
        rejected = dict(error.trailing_metadata() or ()).get(REJECTED_TRAILER)
        if rejected and inflight and rejected == f"{inflight[0].epoch}/{inflight[0].seq}":
            entry = inflight.popleft()
            self.spool.ack(entry.end)
            self.state["rejected_batches"] += 1
            self.log.error("collector refused batch %s: %s (dropped, counted)", rejected, error.details())
