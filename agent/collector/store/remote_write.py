"""The remote-write store: agents' points go to a time-series engine by Prometheus remote write
1.0 (VictoriaMetrics, Prometheus, Mimir, Thanos receive...); what is not a time series (the
exactly-once ledger, agents, events, recordings) stays in `<data_dir>/ledger.db`.

`write` keeps `StoreWriter`'s promises this way:
- Durable on return: the group's points are sent (`samples_per_request` samples a request,
  snappy protobuf) and `write` returns only once the engine accepted every request (2xx);
  then the ledger commits. An engine acknowledges only what it will keep (its WAL).
- Exactly once: the ledger's per-(host, epoch) sequence says which batches are duplicates, as
  in the SQLite store. A crash between the engine's 2xx and the ledger's commit makes the
  agent send the batch again, and the engine then receives the same samples at the same
  timestamps a second time, which it keeps once (docs/collector.md, "Replays"):
  VictoriaMetrics with `-dedup.minScrapeInterval`, Prometheus by ignoring a sample equal to
  the one it has at that timestamp (out-of-order window on for samples not at the head).
- The engine's trouble (5xx, 429, no answer, a timeout): the request is retried with backoff
  for up to `retry_for`, then `StoreUnavailable` (nothing of the group is acknowledged; agents
  keep it spooled and send it again). Once the engine has failed a group, later groups get
  one try each until it answers again, so a dead engine does not hold every group for the
  whole retry time.
- An engine that acknowledges before its data is on disk loses them in a crash of its own
  (VictoriaMetrics 1.79 killed with -9 loses up to ~10 s of acknowledged writes, new
  series the longest: measured with tests/engines.py). So the last `replay_window`
  of accepted requests is kept (bounded by `replay_max_bytes`) and, when the engine answers
  again after failing, sent again before anything new: what it lost comes back, what it kept
  is the same samples again.
- The engine refuses a request (400/413/422: out of order, too old, too large; also a 5xx that
  says so, as Prometheus 2 does for "too old sample"): the request is
  split in halves until the refused series are found; each is logged with the engine's own
  words, counted, and left out; the rest of the batch is stored and acknowledged. A refusal
  of the collector itself (401, 403, 404...) is a configuration fault: `StoreUnavailable`
  naming it, nothing acknowledged.

There are no rollups here: the engine keeps every per-second point for its own retention, and
queries (agent/collector/store/promql.py) compute 10 s and 1 min buckets from the five series
of each point when asked (docs/collector.md says why, and how to add the engine's own
downsampling).
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import sqlite3
import time
from pathlib import Path

import cramjam

from agent.backoff import Backoff
from agent.collector.store import ReadsThroughReader, StoreConfigError, StoreUnavailable, WriteResult, ledger
from agent.collector.store.engine import Auth, EngineClient, EngineDown
from agent.collector.store.promwrite import AGGREGATES, Encoder, Series
from agent.collector.store.schema import TABLES, labels_text
from agent.proto import collector_pb2
from agent.wire import columns
from agent.wire.columns import Points

log = logging.getLogger("egs-collector")

HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}
REFUSED = (400, 413, 422)  # the request's content: split it, find the series
# Prometheus 2.x answers 500 for a sample past its out-of-order window ("too old sample"):
# a refusal of the content however often it is sent, so it is treated as one.
CONTENT_ERRORS = (b"too old sample", b"out of bounds", b"out of order sample", b"duplicate sample for timestamp")
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused series


class EngineState:
    """Whether the engine takes writes now, and what it refused; `text` is what `agents` shows."""

    def __init__(self, url: str, clock=time.time):
        self.url, self.clock = url, clock
        self.ok, self.since, self.reason = True, clock(), ""
        self.requests = self.samples = self.retries = 0
        self.refused_series = self.refused_samples = 0
        self.last_refusal = ""

    def down(self, reason: str) -> None:
        if self.ok:
            self.ok, self.since = False, self.clock()
            log.error("store: the engine at %s cannot store now: %s (agents keep what is not "
                      "acknowledged and send it again)", self.url, reason)
        self.reason = reason

    def up(self) -> None:
        if not self.ok:
            log.warning("store: the engine at %s stores again (it was unavailable for %.0f s)",
                        self.url, self.clock() - self.since)
            self.ok, self.since, self.reason = True, self.clock(), ""

    def text(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        out = f"remote_write {self.url}: " + ("ok" if self.ok else f"unavailable since {since}: {self.reason}")
        if self.refused_series:
            out += f"; {self.refused_series} series refused by the engine (last: {self.last_refusal})"
        return out


class RemoteWriteStore(ReadsThroughReader):
    """A `StoreWriter` (agent/collector/store) into a remote-write engine, with the ledger in
    `<data_dir>/ledger.db`. `query_url` (optional) lets the same object answer queries."""

    def __init__(self, data_dir: str | Path, remote_write_url: str, query_url: str = "",
                 auth: Auth = Auth(), timeout: float = 10.0, retry_for: float = 30.0,
                 samples_per_request: int = 10_000, retention: dict[str, float] | None = None,
                 synchronous: str = "normal", replay_window: float = 15.0, replay_max_bytes: int = 256 << 20,
                 concurrency: int = 2, aggregates=AGGREGATES, exactly_once: bool = True,
                 clock=time.time, sleep=time.sleep):
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "ledger.db"
        self.retention = dict(retention or {})
        self.query_url, self.auth, self.timeout = query_url, auth, timeout
        self.retry_for, self.samples_per_request = retry_for, max(1, samples_per_request)
        self.clock, self.sleep = clock, sleep
        self.exactly_once = exactly_once  # False: the bus sees to it (agent/collector/bus.py)
        self.recovered = 0  # nothing to rebuild: the engine computes rollups when asked
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(TABLES)
        self._max_seq: dict[tuple[str, int], int] = {
            (h, e): s for h, e, s in self._db.execute("SELECT host, epoch, max_seq FROM epochs")}
        self._series: dict[tuple[str, str, str], int] = {
            (h, m, l): i for i, h, m, l in self._db.execute("SELECT id, host, metric, labels FROM series")}
        self._next_sid = max(self._series.values(), default=0) + 1
        self._sids: dict[tuple[str, bytes], tuple[int, ...]] = {}  # (host, series table) -> ids
        self.client = EngineClient(remote_write_url, auth, timeout)
        self.aggregates = tuple(aggregates)
        self.encoder = Encoder(self.aggregates)
        self.state = EngineState(remote_write_url, clock)
        self._last_refusal_log = 0.0
        self._refusals_unlogged = 0
        # Requests the engine accepted lately: (when, body), their bytes summed.
        self.replay_window, self.replay_max_bytes = replay_window, replay_max_bytes
        self._recent: collections.deque[tuple[float, bytes]] = collections.deque()
        self._recent_bytes = 0
        self._replay: list[bytes] = []  # what to send again once the engine answers after failing
        self._pool = concurrent.futures.ThreadPoolExecutor(concurrency, "egs-remote-write") if concurrency > 1 else None
        self._check_engine()

    # --- start ---------------------------------------------------------------------------

    def _check_engine(self) -> None:
        """An empty write: a wrong URL or credentials stop the start; an engine that is down
        only degrades it (agents spool until it answers)."""
        try:
            answer = self.client.request("POST", body=bytes(cramjam.snappy.compress_raw(b"")), headers=HEADERS)
        except EngineDown as e:
            self.state.down(f"no answer at start: {e}")
            return
        if answer.ok:
            return
        if answer.retry:
            self.state.down(f"at start: {answer.text()}")
            return
        hint = {401: "check bearer_token_file / basic_auth_*", 403: "check bearer_token_file / basic_auth_*",
                404: "is it the engine's remote-write path (VictoriaMetrics and Prometheus: /api/v1/write)?",
                405: "is it the engine's remote-write path (VictoriaMetrics and Prometheus: /api/v1/write)?"}
        raise StoreConfigError(f"store.remote_write_url {self.client.url}: the engine refused a remote write: "
                               f"{answer.text()}" + (f" ({hint[answer.status]})" if answer.status in hint else ""))

    # --- writing -------------------------------------------------------------------------

    def write(self, batches: list[collector_pb2.Batch], received: float,
              wire: list[bytes] | None = None, points: list[Points] | None = None) -> list[WriteResult]:
        """As `StoreWriter.write`: the engine first, then the ledger."""
        results: list[WriteResult] = []
        entries = ledger.Entries()
        timeseries: list[bytes] = []
        names: list[Series] = []
        new_series: dict[tuple[str, str, str], int] = {}
        new_tables: dict[tuple[str, bytes], tuple[int, ...]] = {}
        for i, batch in enumerate(batches):
            key = (batch.host_id, batch.epoch)
            if self.exactly_once and batch.seq <= max(self._max_seq.get(key, 0), entries.seqs.get(key, 0)):
                results.append(WriteResult(True))
                continue
            entries.add(batch, received)
            cols = points[i] if points is not None else columns.read(batch)
            encoded, series = self.encoder.timeseries(batch, cols)
            timeseries += encoded
            names += series
            sids = self._series_ids(batch, cols, new_series, new_tables)
            results.append(WriteResult(False, len(cols), sids))
        if not entries.seqs:
            return results
        self._send(timeseries, names)
        db = self._db
        db.execute("BEGIN")
        try:
            if new_series:
                db.executemany("INSERT INTO series(id, host, metric, labels) VALUES (?,?,?,?)",
                               [(sid, *key) for key, sid in new_series.items()])
            entries.write(db, received)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._next_sid -= len(new_series)
            raise
        self._series.update(new_series)
        if len(self._sids) + len(new_tables) > 4096:
            self._sids.clear()
        self._sids.update(new_tables)
        for key, seq in entries.seqs.items():
            if seq > self._max_seq.get(key, 0):
                self._max_seq[key] = seq
        return results

    def _series_ids(self, batch, cols: Points, new_series: dict, new_tables: dict) -> tuple[int, ...]:
        """Each point's series id (stable for the ledger's life, the subscriptions' key); ids
        new in this group join `new_series` and count only once the ledger committed them."""
        table_key = (batch.host_id, batch.series_table)
        sids = self._sids.get(table_key) or new_tables.get(table_key)
        if sids is not None:
            return sids
        out = []
        texts: dict[tuple, str] = {}  # a table may name a series more than once: its labels' text once
        for metric, labels in zip(cols.layout.metrics, cols.layout.labels):
            items = tuple(labels.items())
            text = texts.get(items)
            if text is None:
                text = texts[items] = labels_text(labels)
            key = (batch.host_id, metric, text)
            sid = self._series.get(key) or new_series.get(key)
            if sid is None:
                sid = new_series[key] = self._next_sid
                self._next_sid += 1
            out.append(sid)
        new_tables[table_key] = sids = tuple(out)
        return sids

    def _send(self, timeseries: list[bytes], names: list[Series]) -> None:
        """Every time series to the engine, `samples_per_request` a request; returns when the
        engine has accepted or refused (per series) each, raises `StoreUnavailable` else."""
        state = self.state
        deadline = self.clock() + (self.retry_for if state.ok else 0.0)
        backoff = Backoff(base=0.25, multiplier=2.0, jitter=0.2, maximum=5.0)
        n, step = len(timeseries), self.samples_per_request
        chunks = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
        if self._pool is not None and len(chunks) > 1 and state.ok and not self._replay:
            chunks = self._send_concurrently(timeseries, chunks)
        pending = chunks[::-1]  # popped from the end: first first
        while pending:
            lo, hi = pending.pop()
            body = bytes(cramjam.snappy.compress_raw(b"".join(timeseries[lo:hi])))
            state.requests += 1
            try:
                answer = self.client.request("POST", body=body, headers=HEADERS)
                if answer.ok and self._replay:
                    answer = self._send_replay() or answer
            except EngineDown as e:
                answer, why = None, str(e)
            if answer is not None:
                if answer.ok:
                    state.samples += hi - lo
                    self._remember(body)
                    continue
                if answer.status in REFUSED or (answer.status >= 500 and _about_content(answer)):
                    if hi - lo == 1:
                        self._refused(names[lo], timeseries[lo], answer.text())
                    else:
                        mid = (lo + hi) // 2
                        pending += [(mid, hi), (lo, mid)]
                    continue
                why = answer.text()
                if not answer.retry:  # 401, 403, 404...: the collector's own configuration
                    self._down(why)
                    raise StoreUnavailable(f"the engine refused the collector: {why}")
            self._down(why)
            delay = backoff.next()
            if self.clock() + delay > deadline:
                raise StoreUnavailable(f"the engine did not store the group: {why}")
            state.retries += 1
            self.sleep(delay)
            pending.append((lo, hi))
        state.up()

    def _send_concurrently(self, timeseries: list[bytes], chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The happy path at fleet rates: the chunks on `concurrency` connections at once (an
        engine parses each request on one core). Returns the chunks not accepted, for the
        one-at-a-time path to retry, split or refuse."""
        def post(chunk):
            lo, hi = chunk
            body = bytes(cramjam.snappy.compress_raw(b"".join(timeseries[lo:hi])))
            try:
                return chunk, body, self.client.request("POST", body=body, headers=HEADERS)
            except EngineDown:
                return chunk, body, None
        left = []
        for chunk, body, answer in self._pool.map(post, chunks):
            self.state.requests += 1
            if answer is not None and answer.ok:
                self.state.samples += chunk[1] - chunk[0]
                self._remember(body)
            else:
                left.append(chunk)
        return left

    def _down(self, why: str) -> None:
        if self.state.ok:  # the first failure: what the engine accepted lately may be lost
            self._replay = [body for _, body in self._recent]
        self.state.down(why)

    def _remember(self, body: bytes) -> None:
        if self.replay_window <= 0 or self.replay_max_bytes <= 0:
            return
        now = self.clock()
        self._recent.append((now, body))
        self._recent_bytes += len(body)
        while self._recent and (self._recent[0][0] < now - self.replay_window or self._recent_bytes > self.replay_max_bytes):
            self._recent_bytes -= len(self._recent.popleft()[1])

    def _send_replay(self):
        """The requests accepted just before the engine failed, once more; None when all were
        accepted, else the failing answer (EngineDown propagates)."""
        while self._replay:
            answer = self.client.request("POST", body=self._replay[0], headers=HEADERS)
            if not answer.ok and answer.status not in REFUSED and not _about_content(answer):
                return answer
            self._replay.pop(0)  # accepted, or refused as a whole (too old by now): done with it
        log.info("store: sent the engine's last %.0f s of accepted writes again after its outage "
                 "(what it kept is stored once)", self.replay_window)
        return None

    def _refused(self, series: Series, timeseries: bytes, why: str) -> None:
        state = self.state
        state.refused_series += 1
        state.refused_samples += 1
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(series.labels.items()))
        state.last_refusal = f"{series.name}{{{labels}}}: {why}"
        now = self.clock()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            more = f" ({self._refusals_unlogged} more since the last such line)" if self._refusals_unlogged else ""
            log.error("store: the engine refused a sample of %s; it is left out, the rest of the batch "
                      "is stored%s", state.last_refusal, more)
            self._last_refusal_log, self._refusals_unlogged = now, 0
        else:
            self._refusals_unlogged += 1

    def state_text(self) -> str:
        return self.state.text()

    # --- upkeep --------------------------------------------------------------------------

    def cleanup(self, now: float) -> dict:
        """Events and recordings past `events` retention; the engine keeps points for its own."""
        deleted = ledger.delete_old(self._db, now - self.retention["events"]) if "events" in self.retention else 0
        return {"dropped_tables": [], "deleted_events": deleted}

    # --- reading (tests; the collector reads through a RemoteReader of its own) ----------

    @functools.cached_property
    def reader(self):
        from agent.collector.store.promql import RemoteReader
        return RemoteReader(self.query_url, self.path, self.retention, self.auth, self.timeout, self.aggregates)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.client.close()
        self._db.close()
        if "reader" in self.__dict__:
            self.reader.close()


def _about_content(answer) -> bool:
    body = answer.body[:4096].lower()
    return any(marker in body for marker in CONTENT_ERRORS)
