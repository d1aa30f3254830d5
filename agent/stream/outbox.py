"""The outbox: turns what the daemon produces into spooled, numbered batches.

`put_*` never blocks the caller (the daemon's main loop): items go into a bounded in-memory
queue, and when that is full the item is dropped and counted (`queue_dropped`). A writer
thread drains the queue, builds `Batch`es (identity, labels, epoch, sequence, points,
events, NIC state, recordings, the outbox's own counters), appends them to the spool with
one fsync for everything drained together, and wakes the stream client.

Buckets gather for `stream.interval` (5 s) before the writer spools them: a batch's cost (the
fsync, the gRPC message, its acknowledgement, the cursor) is mostly per batch, not per point,
so five seconds in one batch cost a fraction of five one-second batches. Anything else (an
event, the NIC state, a recording) is spooled the moment it is drained, with the buckets
gathered before it, so an alarm or an XID reaches the collector without waiting; `flush()`
and `stop()` spool everything at once.

Every kind of loss has its own counter (`_drops`): the spool's bound, corrupt or torn
records, a spool write the disk refused, spool segments deleted or unreadable under the
running agent, a full queue, non-finite points, items that cannot be encoded, batches the
collector refused or that were too large to send, recordings that could not be read. Their
sum is `status()["dropped"]` and each batch's `status.dropped_records`, and each is a metric
(`_figures`), so what status shows and what the collector receives cannot disagree.

Epoch: a number that changes every time the outbox starts (microseconds since 1970, forced
above the previous epoch of this state directory so a clock step back cannot reuse one).
Sequence numbers restart at 1 in each epoch; batches still in the spool from an earlier run
keep their own (epoch, seq), which is what lets the collector recognise replays.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.config import parse_duration
from agent.fsio import atomic_write
from agent.metrics import Metric, register
from agent.proto import collector_pb2
from agent.stream.client import StreamClient
from agent.stream.spool import Spool, SpoolError
from agent.threads import name_os_thread
from agent.windows import Bucket
from agent.wire.columns import Columns, SeriesEntries

# The outbox's own figures, sent with every batch and shown in `status`.
SPOOL_BACKLOG_RECORDS = register(Metric("stream_spool_backlog_records", "records", "Batches in the spool not yet acknowledged by the collector.", scope="agent"))
SPOOL_BACKLOG_BYTES = register(Metric("stream_spool_backlog_bytes", "bytes", "Bytes in the spool not yet acknowledged by the collector.", scope="agent"))
SPOOL_DROPPED = register(Metric("stream_spool_dropped_records_total", "records", "Batches deleted unsent because the spool reached its bound (oldest first).", kind="counter", scope="agent"))
SPOOL_CORRUPT = register(Metric("stream_spool_corrupt_records_total", "records", "Spool records skipped because their checksum or framing was wrong.", kind="counter", scope="agent"))
SPOOL_TORN = register(Metric("stream_spool_torn_tails_total", "events", "Times a record cut short by a crash was found at the spool's end and truncated.", kind="counter", scope="agent"))
QUEUE_DROPPED = register(Metric("stream_queue_dropped_total", "items", "Bucket sets and events dropped because the in-memory queue in front of the spool was full.", kind="counter", scope="agent"))
REJECTED = register(Metric("stream_rejected_batches_total", "batches", "Batches the collector refused as malformed, or too large to send; dropped.", kind="counter", scope="agent"))
SPOOL_MISSING = register(Metric("stream_spool_missing_records_total", "records", "Batches lost unsent because their spool segment file was deleted while the agent ran.", kind="counter", scope="agent"))
SPOOL_UNREADABLE = register(Metric("stream_spool_unreadable_records_total", "records", "Batches lost unsent because their spool segment could not be read (permissions, I/O error, not a file); a segment unreadable at start counts as one.", kind="counter", scope="agent"))
SPOOL_WRITE_FAILED = register(Metric("stream_spool_write_failed_items_total", "items", "Bucket sets, events and other queued items lost because the disk refused the spool write (full, read-only), or the writer failed on them (logged).", kind="counter", scope="agent"))
INVALID = register(Metric("stream_invalid_items_total", "items", "Points, events and other items left out of a batch because a field could not be encoded (logged with the reason).", kind="counter", scope="agent"))
NONFINITE = register(Metric("stream_nonfinite_points_total", "points", "Points left out of a batch because a value was NaN or infinite (the collector refuses such a batch).", kind="counter", scope="agent"))
RECORDING_ERRORS = register(Metric("stream_recording_errors_total", "recordings", "Flight recordings that could not be read and were not sent.", kind="counter", scope="agent"))
DROPPED = register(Metric("stream_dropped_total", "items", "Everything the stream lost, all kinds together (the sum of the counters above; the batch header's dropped_records).", kind="counter", scope="agent"))
CONNECTED = register(Metric("stream_connected", "boolean", "1 while a stream to a collector is open.", scope="agent"))


# What a malformed item raises while it is encoded (a field of the wrong type, missing).
_BAD_ITEM = (TypeError, ValueError, KeyError, AttributeError)

# Put in the queue by flush() and stop(): the writer spools everything queued before it now.
_FLUSH = ("flush", None)


def next_epoch(state_dir: Path) -> int:
    """A new epoch for this state directory, persisted atomically before it is used."""
    path = state_dir / "stream-epoch"
    try:
        previous = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        previous = 0
    epoch = max(time.time_ns() // 1000, previous + 1)
    atomic_write(path, str(epoch).encode())
    return epoch


def _add_point(item: Any, columns: Columns, entries: SeriesEntries) -> bool:
    """One windows Bucket, sources Sample or dict with the same fields into `columns`;
    False when a value is not finite (left out). A field that cannot be encoded raises
    before anything is added (a count outside uint64 would only fail later, in protobuf,
    taking the whole batch with it)."""
    if type(item) is Bucket:  # the daemon's own (windows.close): unpacked, no lookups by name
        metric, labels, ts, count, sum_, min_, max_, last = item
    else:
        get = item.get if isinstance(item, dict) else lambda k: getattr(item, k)
        metric, labels, ts, count, sum_, min_, max_, last = (
            get(k) for k in ("metric", "labels", "ts", "count", "sum", "min", "max", "last"))
    count = int(count)
    if not 0 <= count < 1 << 64:
        raise ValueError(f"count {count} is not a uint64")
    return columns.add(entries(metric, labels or {}), float(ts), count, float(sum_), float(min_), float(max_),
                       float(last))


def _metric_of(item: Any) -> str:
    return str(item.get("metric") if isinstance(item, dict) else getattr(item, "metric", "?"))


def _add_event(batch: collector_pb2.Batch, event) -> None:
    """One event into the batch; every field is encoded before it is added, so a bad one
    leaves the batch as it was."""
    labels = {str(k): str(v) for k, v in event.labels.items()}
    data_json = json.dumps(event.data, sort_keys=True, default=str)
    batch.events.add(kind=event.kind, ts=float(event.ts), data_json=data_json).labels.update(labels)


class Outbox:
    name = "stream"

    def __init__(self, settings, state_dir: str | os.PathLike, host_id: str | None = None,
                 labels: dict[str, str] | None = None, clock: Callable[[], float] = time.time,
                 log: logging.Logger | None = None,
                 status_of: Callable[[str], Any] | None = None):
        self.settings = settings
        # The daemon's view of another component's status (main loop only): the NIC state
        # travels in `Batch.nic_json` whenever it changes.
        self.status_of = status_of
        self._nic_sent: str | None = None  # the NIC state last handed to the writer, as JSON
        self._nic_seen: dict | None = None  # a copy of the NIC state as of the last tick
        self.state_dir = Path(state_dir)
        self.host_id = host_id or socket.gethostname()
        self.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        self.clock = clock
        self.log = log or logging.getLogger("egs.stream")
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self.interval = parse_duration(settings.interval)  # buckets gather this long (reload may change it)
        self._gathered = 0  # items drained and waiting for the interval (status)
        self._counts = {"queued": 0, "spooled": 0, "queue_dropped": 0, "batches": 0, "spool_errors": 0,
                        "nonfinite_points": 0, "invalid_items": 0, "recordings_sent": 0,
                        "recordings_truncated": 0, "recording_errors": 0}
        self._progress = threading.Condition()
        self._entries = SeriesEntries()  # writer thread only
        # Serialises replacing the client (reload) with stopping it (stop). Readers elsewhere
        # (the writer, status) take `self.client` once into a local and use only that.
        self._client_lock = threading.Lock()
        self._stopping = threading.Event()
        self._urgent = threading.Event()  # something in the queue must not wait (_write_loop)
        self._writer: threading.Thread | None = None
        self.spool: Spool | None = None
        self.client: StreamClient | None = None
        self.epoch = 0
        self._seq = 0
        self._last_spool_error: str | None = None  # logged once until an append succeeds again
        self._last_invalid: str | None = None  # the same bad item every second is logged once

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool, take a new epoch, start the writer and the stream client. A start
        that fails closes what it opened, so that starting again is a clean retry."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(self.state_dir / "spool", max_bytes=self.settings.spool_max_bytes,
                      segment_bytes=self.settings.spool_segment_bytes, fsync=self.settings.fsync, log=self.log)
        try:
            self.epoch = next_epoch(self.state_dir)
        except OSError:
            spool.close()
            raise
        self.spool = spool
        st = spool.status()
        if st["torn_tails"] or st["corrupt_records"]:
            self.log.warning("spool: truncated %d torn tail(s), skipped %d corrupt record(s)",
                             st["torn_tails"], st["corrupt_records"])
        self.client = StreamClient(self.settings, self.spool, self.log)
        self._writer = threading.Thread(target=self._write_loop, name="egs-outbox", daemon=True)
        self._writer.start()
        self.client.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Spool what is queued, stop sending, close the spool. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._writer is not None:
            self._mark_flush(timeout)
            self._writer.join(timeout)
        with self._client_lock:
            if self.client is not None:
                self.client.stop(timeout)
        if self.spool is not None:
            self.spool.close()

    # --- the component contract ----------------------------------------------------------

    def on_buckets(self, buckets: Iterable[Any]) -> None:
        self.put_buckets(list(buckets))

    def on_event(self, event) -> None:
        self.put_event(event)
        if event.kind == "recording" and event.data.get("path"):
            # The file is read on the writer thread, not here on the emitter's.
            self._put(("recording_file", event.data["path"]))

    def tick(self, now: float) -> None:
        """Send the NIC state when it changed (the writer thread and the stream client run
        on their own)."""
        if self.status_of is None:
            return
        state = self.status_of("nic")
        if state is None:
            return
        # Compared as values first: serialising the state every tick to learn that it had not
        # changed was most of this component's main-loop time. The JSON text still decides
        # (a NaN is unequal to itself; an object without == compares by identity).
        if state == self._nic_seen:
            return
        text = json.dumps(state, sort_keys=True, default=str)
        if text == self._nic_sent or self.put_nic(state):  # a full queue: tried again next tick
            self._nic_sent, self._nic_seen = text, copy.deepcopy(state)

    # Keys that take effect by restarting the stream client; the spool's and the queue's
    # own sizes are fixed for the life of the process.
    CLIENT_KEYS = ("endpoints", "plaintext", "ca", "cert", "key", "server_name", "max_message_bytes",
                   "max_in_flight", "keepalive_time", "keepalive_timeout", "connect_timeout",
                   "backoff_base", "backoff_multiplier", "backoff_jitter", "backoff_max")
    RESTART_KEYS = ("spool_max_bytes", "spool_segment_bytes", "fsync", "queue_size")

    def reload(self, cfg) -> None:
        """SIGHUP: new endpoints, TLS files, timeouts and labels apply now (the stream
        reconnects, resuming at the spool's cursor); the rest waits for a restart."""
        new = cfg.stream
        self.labels = {str(k): str(v) for k, v in (cfg.agent.labels or {}).items()}
        self.interval = parse_duration(new.interval)  # the writer reads it at its next item
        later = [k for k in self.RESTART_KEYS if getattr(new, k) != getattr(self.settings, k)]
        if not new.endpoints:
            later.append("endpoints (empty: streaming off)")
        if later:
            self.log.warning("stream: %s changed; that takes effect on restart", ", ".join(later))
        changed = [k for k in self.CLIENT_KEYS if getattr(new, k) != getattr(self.settings, k)]
        if changed and new.endpoints:
            with self._client_lock:
                self.settings = new
                if self.spool is None or self._stopping.is_set():
                    return  # not running: start() builds its client from these settings
                # The old client stops before the new one starts: two would both read and
                # acknowledge the one spool. Until then the writer may still wake the old one
                # (harmless); the new one reads from the spool's cursor when it starts.
                old, self.client = self.client, StreamClient(new, self.spool, self.log)
                if old is not None:
                    old.stop()
                self.client.start()
            self.log.info("stream: reconnecting with new %s", ", ".join(changed))

    # --- producers -----------------------------------------------------------------------

    def put_buckets(self, buckets: list) -> bool:
        return self._put(("points", buckets)) if buckets else True

    def put_event(self, event) -> bool:
        return self._put(("event", event))

    def put_nic(self, state: dict) -> bool:
        return self._put(("nic", state))

    def _put(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._progress:
                self._counts["queue_dropped"] += 1
            return False
        with self._progress:
            self._counts["queued"] += 1
        if item[0] != "points":
            self._urgent.set()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Spool everything put so far now (not at the end of its interval) and wait until it
        is durable."""
        deadline = time.monotonic() + timeout
        with self._progress:
            target = self._counts["queued"]
        if not self._mark_flush(timeout):
            return False
        with self._progress:
            while self._counts["spooled"] < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def _mark_flush(self, timeout: float) -> bool:
        """Queue the flush mark behind everything put so far; False if the queue stays full
        (a writer that does not drain) for `timeout`."""
        try:
            self._queue.put(_FLUSH, timeout=timeout)
        except queue.Full:
            return False
        self._urgent.set()
        return True

    # --- the writer ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Drain the queue into `gathered`; spool it when the oldest bucket set in it has
        waited `interval`, when anything else comes (an event goes at once), and at a flush
        mark. No polling: with nothing gathered it sleeps in the queue; with bucket sets
        gathered it sleeps until they are due, and only an urgent item (`_urgent`: an event,
        the NIC state, a recording, a flush mark) wakes it sooner, not the next second's
        bucket set (which waits in the queue)."""
        name_os_thread()
        gathered: list = []
        due: float | None = None  # when the oldest gathered bucket set must be spooled
        while True:
            if due is None:
                items = [self._queue.get()]
            else:
                self._urgent.wait(max(0.0, due - time.monotonic()))
                items = []
            # Cleared before the drain: an urgent item put from here on sets it again and
            # ends the next wait at once; one put before is in the queue and drained now.
            self._urgent.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            now = False
            for item in items:
                if item is _FLUSH:
                    now = True
                    continue
                gathered.append(item)
                if item[0] != "points":
                    now = True
                elif due is None:
                    due = time.monotonic() + self.interval
            self._gathered = len(gathered)
            if gathered and (now or time.monotonic() >= due):
                self._spool_or_count(gathered)
                with self._progress:
                    self._counts["spooled"] += len(gathered)
                    self._progress.notify_all()
                gathered, due, self._gathered = [], None, 0
                client = self.client  # one read: reload may swap it meanwhile
                if client is not None:
                    client.notify()
            if self._stopping.is_set() and now and self._queue.empty():
                return

    def _spool_or_count(self, items: list) -> None:
        """Spool one drain; when that fails, count its items as lost and say why, once per
        episode. The writer carries on whatever happened: a writer thread that died here
        would stop the outbox silently."""
        try:
            self._spool_items(items)
        except Exception as e:  # noqa: BLE001 - see the docstring
            with self._progress:
                self._counts["spool_errors"] += len(items)
            if str(e) != self._last_spool_error:
                if isinstance(e, (SpoolError, OSError)):  # the disk refused (full, read-only)
                    self.log.error("%s (%d items lost)", e, len(items))
                else:
                    self.log.exception("stream: writing %d items to the spool failed (lost)", len(items))
                self._last_spool_error = str(e)
            return
        if self._last_spool_error is not None:
            self.log.info("stream: spooling works again")
            self._last_spool_error = None

    def _spool_items(self, items: list) -> None:
        batches = self._build(items)
        records = []
        for batch in batches:
            self._seq += 1
            batch.seq = self._seq
            records.append((self.epoch, self._seq, batch.SerializeToString()))
        self.spool.append(records)
        with self._progress:
            self._counts["batches"] += len(records)

    def _new_batch(self) -> tuple[collector_pb2.Batch, Columns]:
        batch = collector_pb2.Batch(host_id=self.host_id, epoch=self.epoch, created=self.clock())
        batch.labels.update(self.labels)
        return batch, Columns()

    def _build(self, items: list) -> list[collector_pb2.Batch]:
        limit = self.settings.max_batch_points
        entries = self._entries
        counts = {"nonfinite_points": 0, "invalid_items": 0, "recordings_sent": 0, "recordings_truncated": 0,
                  "recording_errors": 0}
        batches = [self._new_batch()]
        for kind, value in items:
            batch = batches[-1][0]
            if kind == "points":
                for bucket in value:
                    if len(batches[-1][1]) >= limit:
                        batches.append(self._new_batch())
                    # The collector refuses a batch holding a NaN or an infinity (and the
                    # agent would then drop all of it): such a point is left out and counted.
                    try:
                        finite = _add_point(bucket, batches[-1][1], entries)
                    except _BAD_ITEM as e:
                        self._invalid(f"a point of {_metric_of(bucket)}", e, counts)
                        continue
                    if not finite:
                        counts["nonfinite_points"] += 1
            elif kind == "event":
                try:
                    _add_event(batch, value)
                except _BAD_ITEM as e:
                    self._invalid(f"{getattr(value, 'kind', '?')} event", e, counts)
            elif kind == "nic":
                batch.nic_json = json.dumps(value, sort_keys=True, default=str)
            elif kind == "recording_file":
                text = self._recording_json(value, counts)
                if text is None:
                    continue
                if batch.recording_json:
                    batches.append(self._new_batch())
                batches[-1][0].recording_json = text
                counts["recordings_sent"] += 1
        with self._progress:
            for name, n in counts.items():
                self._counts[name] += n
        self._add_own_figures(*batches[-1])
        for batch, columns in batches:
            columns.write_to(batch)
        return [batch for batch, _ in batches]

    def _invalid(self, what: str, error: Exception, counts: dict[str, int]) -> None:
        """An item a producer handed over with a field that cannot be encoded: left out and
        counted, its neighbours still sent; said once for as long as it keeps coming."""
        counts["invalid_items"] += 1
        text = f"stream: left out {what} that cannot be encoded: {type(error).__name__}: {error}"
        if text != self._last_invalid:
            self.log.error("%s", text)
            self._last_invalid = text

    def _recording_json(self, path: str, counts: dict[str, int]) -> str | None:
        """A flight-recorder file as the JSON a batch carries. One that would not fit in a
        message goes as its header alone, marked truncated: the operator fetches the full
        samples from the node (`egs-agent recordings ID`), and the collector still learns
        that the recording exists."""
        from agent.recorder.store import RecordingError, read_file
        try:
            recording = read_file(path)
        except (OSError, ValueError, RecordingError) as e:
            counts["recording_errors"] += 1
            self.log.warning("stream: recording %s not sent: %s", path, e)
            return None
        text = json.dumps(recording, sort_keys=True, default=str)
        # Leave room for the batch's points and identity beside the recording.
        if len(text) > self.settings.max_message_bytes // 2:
            counts["recordings_truncated"] += 1
            recording.pop("data", None)
            recording["truncated"] = (f"{len(text)} bytes of samples exceed half of stream.max_message_bytes; "
                                      "read them on the node with `egs-agent recordings ID`")
            text = json.dumps(recording, sort_keys=True, default=str)
        return text

    def _add_own_figures(self, batch, columns: Columns) -> None:
        client = self.client  # one read: reload may swap it meanwhile
        spool, cs = self.spool.status(), client.status() if client is not None else {}
        with self._progress:
            counts = dict(self._counts)
        drops = _drops(spool, cs, counts)
        batch.status.spool_backlog_records = spool["backlog_records"]
        batch.status.spool_backlog_bytes = spool["backlog_bytes"]
        batch.status.dropped_records = sum(drops.values())
        batch.status.health = "ok" if cs.get("connected") or not cs.get("last_error") else "reconnecting"
        ts = float(int(self.clock()))
        for metric, value in _figures(spool, cs, counts, drops):
            if metric is not CONNECTED:  # the collector knows whether the stream is open
                v = float(value)
                columns.add(self._entries(metric.name, {}), ts, 1, v, v, v, v)

    # --- status --------------------------------------------------------------------------

    def status(self) -> dict:
        client = self.client  # one read: reload may swap it meanwhile
        spool = self.spool.status() if self.spool else {}
        cs = client.status() if client is not None else {}
        with self._progress:
            counts = dict(self._counts)
        drops = _drops(spool, cs, counts)
        return {"endpoint": cs.get("endpoint"), "connected": cs.get("connected", False),
                "backlog": spool.get("backlog_records", 0), "backlog_bytes": spool.get("backlog_bytes", 0),
                "dropped": sum(drops.values()), "drops": drops, "epoch": self.epoch, "last_seq": self._seq,
                "interval_s": self.interval,
                "queue": {"size": self._queue.qsize(), "max": self.settings.queue_size, "gathered": self._gathered,
                          **counts},
                "spool": spool, "client": cs,
                "metrics": {m.name: v for m, v in _figures(spool, cs, counts, drops)}}


def _drops(spool: dict, client: dict, counts: dict) -> dict[str, int]:
    """Every kind of loss, by name: the one definition status() and the batch header share.
    Units differ (spool records, queued items, points, batches, recordings); each is one
    thing that did not reach the collector."""
    return {"spool_full": spool.get("dropped_records", 0),
            "spool_corrupt": spool.get("corrupt_records", 0),
            "spool_torn": spool.get("torn_tails", 0),
            "spool_write_failed": counts["spool_errors"],
            "spool_missing": spool.get("missing_records", 0),
            "spool_unreadable": spool.get("unreadable_records", 0),
            "queue_full": counts["queue_dropped"],
            "nonfinite_points": counts["nonfinite_points"],
            "invalid_items": counts["invalid_items"],
            "rejected_batches": client.get("rejected_batches", 0),
            "oversized_batches": client.get("oversized_batches", 0),
            "recording_errors": counts["recording_errors"]}


def _figures(spool: dict, client: dict, counts: dict, drops: dict[str, int]) -> list[tuple[Metric, float]]:
    """The outbox's own metrics, as status() shows them and every batch carries them."""
    return [(SPOOL_BACKLOG_RECORDS, spool.get("backlog_records", 0)),
            (SPOOL_BACKLOG_BYTES, spool.get("backlog_bytes", 0)),
            (SPOOL_DROPPED, drops["spool_full"]),
            (SPOOL_CORRUPT, drops["spool_corrupt"]),
            (SPOOL_TORN, drops["spool_torn"]),
            (SPOOL_WRITE_FAILED, drops["spool_write_failed"]),
            (SPOOL_MISSING, drops["spool_missing"]),
            (SPOOL_UNREADABLE, drops["spool_unreadable"]),
            (QUEUE_DROPPED, drops["queue_full"]),
            (NONFINITE, drops["nonfinite_points"]),
            (INVALID, drops["invalid_items"]),
            (REJECTED, drops["rejected_batches"] + drops["oversized_batches"]),
            (RECORDING_ERRORS, drops["recording_errors"]),
            (DROPPED, sum(drops.values())),
            (CONNECTED, 1 if client.get("connected") else 0)]
