"""The collector's own /metrics: ingest, acks, queues, agents, store errors.

Self-contained: its `[prometheus]` section (`SECTION`, for agent/collector/settings.py), the
ack-latency histogram the ingest service observes (`ACK_LATENCY`), and `start(settings,
committer, ingest, hub)` which serves the figures those objects already keep, read at scrape
time on the HTTP server's thread (no copy kept, nothing added to the ingest path but the
histogram's observe). Names go through `agent.exposition` like the agent's, so one name means
one thing everywhere; rates are PromQL's job (`rate(egs_collector_points_total[1m])`).

Served by the same server as the agent's (`agent.prometheus.web`: the exporter-toolkit web
config, bounded concurrency, a clear error when the port is taken).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prometheus_client import Histogram
from prometheus_client.core import Metric as PromMetric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Sample

from agent.config import Key, Section
from agent.exposition import series_name
from agent.metrics import Metric, register
from agent.prometheus.settings import check_listen, parse_listen
from agent.prometheus.web import MetricsServer, WebConfigError, load_web_config

log = logging.getLogger("egs-collector.metrics")

DEFAULT_LISTEN = "127.0.0.1:9474"  # the agent's default port + 1, loopback until an operator opens it


SECTION = Section("prometheus", "The collector's own /metrics (ingest, ack latency, queues, agents' last batch, "
                  "store errors) in Prometheus text format (docs/prometheus.md).", {
    "enabled": Key(False, bool, "Serve /metrics."),
    "listen": Key(DEFAULT_LISTEN, str, "Address to listen on: host:port, [v6]:port, or :port for every address.",
                  max_len=262, check=check_listen),
    "web_config_file": Key("", str, "A Prometheus exporter-toolkit web config file (TLS, bcrypt basic auth); "
                           "empty serves plain HTTP without authentication."),
})

# Acks are one commit away from the batch (group commit, fsync'd): milliseconds normally,
# seconds when the disk stalls.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def ack_histogram() -> Histogram:
    """A histogram of ack latencies, registered nowhere (the collector's /metrics serves it)."""
    return Histogram(series_name("collector_ack_latency_seconds"),
                     "Seconds from a batch read off an agent's stream to its ack (the group commit, fsync included).",
                     buckets=ACK_BUCKETS, registry=None)


ACK_LATENCY = ack_histogram()  # the ingest service observes this one

_C = "collector"
BATCHES = register(Metric("collector_batches_total", "batches", "Batches stored (duplicates not counted).",
                          kind="counter", scope=_C))
DUPLICATES = register(Metric("collector_duplicate_batches_total", "batches",
                             "Batches received again and acknowledged without storing (already stored).",
                             kind="counter", scope=_C))
POINTS = register(Metric("collector_points_total", "points", "Points stored.", kind="counter", scope=_C))
COMMITS = register(Metric("collector_commits_total", "commits", "Store transactions (group commits).",
                          kind="counter", scope=_C))
STORE_ERRORS = register(Metric("collector_store_errors_total", "errors",
                               "Store writes that failed (the agents send those batches again).",
                               kind="counter", scope=_C))
STORE_REFUSED = register(Metric("collector_store_refused_batches_total", "batches",
                                "Batches the store could not hold and refused (acked with an error, dropped).",
                                kind="counter", scope=_C))
INGEST_REFUSED = register(Metric("collector_ingest_refused_total", "batches",
                                 "Streams or batches refused at ingest, by reason (rejected: malformed; "
                                 "refused_identity: host id not the certificate's; unauthenticated).",
                                 kind="counter", scope=_C))
COMMIT_QUEUE = register(Metric("collector_commit_queue_batches", "batches",
                               "Batches waiting for the committer thread.", scope=_C))
UNCOMMITTED = register(Metric("collector_uncommitted_batches", "batches",
                              "Batches received and not yet acknowledged, all streams (bounded by "
                              "ingest.max_uncommitted).", scope=_C))
CONNECTED = register(Metric("collector_connected_agents", "agents", "Agents with an open stream.", scope=_C))
SUBSCRIBERS = register(Metric("collector_subscribers", "subscribers", "Open Subscribe streams.", scope=_C))
LAST_SEEN = register(Metric("collector_agent_last_batch_timestamp_seconds", "seconds",
                            "Unix time of the latest batch with points stored for each agent (label host); "
                            "time() - this is how long an agent has been silent.", scope=_C))
PART_UP = register(Metric("collector_part_up", "boolean",
                          "1 while a part the collector depends on works, else 0 (label part: store, bus); "
                          "`egs-collector agents` says why on its store line.", scope=_C))
AGENT_BATCHES = register(Metric("collector_agent_batches_total", "batches",
                                "Batches acknowledged per agent (label host) since the collector started.",
                                kind="counter", scope=_C))


def _settled(read: Callable[[], Any], default: Any) -> Any:
    """Read a dict another thread may be growing: retried when it changed size meanwhile."""
    for _ in range(3):
        try:
            return read()
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return default


class CollectorFigures:
    """prometheus-client's collector protocol over the collector's live objects."""

    def __init__(self, committer: Any, ingest: Any, hub: Any, ack_latency: Histogram = ACK_LATENCY,
                 parts: Callable[[], dict[str, bool]] | None = None):
        self.committer, self.ingest, self.hub, self.ack_latency = committer, ingest, hub, ack_latency
        self.parts = parts  # () -> {"store": ok, "bus": ok}

    def figures(self) -> list[tuple[Metric, list[tuple[dict[str, str], float]]]]:
        c = dict(self.committer.stats)
        ingest = self.ingest
        i = dict(ingest.stats)
        out = [(BATCHES, [({}, c.get("batches", 0))]), (DUPLICATES, [({}, c.get("duplicates", 0))]),
               (POINTS, [({}, c.get("points", 0))]), (COMMITS, [({}, c.get("commits", 0))]),
               (STORE_ERRORS, [({}, c.get("errors", 0))]), (STORE_REFUSED, [({}, c.get("refused", 0))]),
               (INGEST_REFUSED, [({"reason": k}, v) for k, v in sorted(i.items())])]
        queue = getattr(self.committer, "_queue", None)
        if queue is not None:
            out.append((COMMIT_QUEUE, [({}, queue.qsize())]))
        room, most = getattr(ingest, "_room", None), getattr(ingest, "max_uncommitted", None)
        if room is not None and most is not None:
            out.append((UNCOMMITTED, [({}, max(0, most - room._value))]))
        out.append((CONNECTED, [({}, len(ingest.connected))]))
        out.append((SUBSCRIBERS, [({}, len(self.hub.subscriptions))]))
        recent = _settled(lambda: [(host, q[-1][3]) for host, q in list(self.hub.recent.items()) if q], [])
        out.append((LAST_SEEN, [({"host": host}, at) for host, at in sorted(recent)]))
        counts = _settled(lambda: {host: n.get("batches", 0) for host, n in list(ingest.counts.items())}, {})
        out.append((AGENT_BATCHES, [({"host": host}, n) for host, n in sorted(counts.items())]))
        if self.parts is not None:
            out.append((PART_UP, [({"part": part}, 1.0 if ok else 0.0) for part, ok in sorted(self.parts().items())]))
        return out

    def collect(self):
        for metric, samples in self.figures():
            name = series_name(metric.name)
            counter = metric.kind == "counter"
            m = PromMetric(name[:-6] if counter else name, metric.help, "counter" if counter else "gauge")
            m.samples = [Sample(name, labels, float(value), None, None) for labels, value in samples]
            yield m
        yield from self.ack_latency.collect()


def start(settings: Any, committer: Any, ingest: Any, hub: Any,
          ack_latency: Histogram = ACK_LATENCY, parts: Callable[[], dict[str, bool]] | None = None) -> MetricsServer | None:
    """Serve the collector's /metrics per `settings` (its [prometheus] section); None when
    switched off. Raises OSError (port in use, naming the address) or WebConfigError (a web
    config file it cannot honour) at start, so the collector refuses to start with a clear error."""
    if not settings.enabled:
        return None
    host, port = parse_listen(settings.listen)
    try:
        web = load_web_config(settings.web_config_file)
    except WebConfigError as e:
        raise WebConfigError(f"prometheus.web_config_file: {e}") from None
    figures = CollectorFigures(committer, ingest, hub, ack_latency, parts)

    def render(accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(figures), content_type
    server = MetricsServer(host, port, render, web)
    server.start()
    log.info("serving the collector's /metrics on %s (port %d)", settings.listen, server.port)
    return server


def observe_ack(started: float, histogram: Histogram = ACK_LATENCY) -> None:
    """For the ingest service: one ack, `started` being time.monotonic() when its batch was read."""
    histogram.observe(time.monotonic() - started)
