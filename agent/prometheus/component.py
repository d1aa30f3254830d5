"""The `/metrics` component: a prometheus-client custom collector over the live state.

A scrape builds its families when it comes (`agent.prometheus.families`, plus the
dcgm-exporter names with `dcgm_names`), on the HTTP server's thread; the main loop's only
work is `tick`, which gathers the few figures only it may read (the outbox's and the
alarms' status, the windows' and sources' counters) into one dict replaced whole. So a
scrape never waits on the main loop or the sampler, and the main loop waits on a scrape
only for the windows' lock while one copy of the latest values is taken.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client.core import Metric as PromMetric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Sample

from agent.prometheus.dcgm import dcgm_families
from agent.prometheus.encode import CachingEncoder
from agent.prometheus.families import LiveState, families
from agent.prometheus.settings import parse_listen
from agent.prometheus.web import MetricsServer, WebConfigError, load_web_config

log = logging.getLogger("egs-agent.prometheus")

# Units OpenMetrics can state: the name (without _total) must end in _<unit>.
_OM_UNITS = ("percent", "bytes", "celsius", "watts", "joules", "hertz", "seconds", "errors", "records",
             "ticks", "samples", "series")


def om_unit(base: str, unit: str) -> str:
    """The catalogue unit when OpenMetrics can carry it (a `# UNIT` line): the family's name
    (a counter's without _total) must end in _<unit>; else ""."""
    return unit if unit in _OM_UNITS and base.endswith("_" + unit) else ""


class ScrapeCollector:
    """prometheus-client's custom collector protocol, `collect()` (metric families with their
    samples), and `rows()`, the same families for `CachingEncoder` without making a
    prometheus-client sample object per series per scrape."""

    def __init__(self, state: LiveState, native: bool = True, dcgm: bool = False):
        self.state, self.native, self.dcgm = state, native, dcgm
        self._families: dict[tuple, PromMetric] = {}  # the sample-less family objects, made once

    def _family(self, name: str, help: str, kind: str, unit: str = "") -> PromMetric:
        key = (name, help, kind, unit)
        fam = self._families.get(key)
        if fam is None:
            fam = self._families[key] = PromMetric(name, help, kind, unit)
        return fam

    def rows(self):
        """(family without samples, sample name, [(labels, value)]) per family."""
        state = self.state
        gpus = state.gpu_status()  # once: both name sets read the same
        if self.native:
            for fam in families(state, gpus):
                counter = fam.metric.kind == "counter" and fam.name.endswith("_total")
                # prometheus-client names a counter family without its _total (OpenMetrics)
                base = fam.name[:-6] if counter else fam.name
                yield (self._family(base, fam.metric.help, "counter" if counter else "gauge",
                                    om_unit(base, fam.metric.unit)), fam.name, fam.samples)
        if self.dcgm:
            for field, samples in dcgm_families(gpus, state.gpu_health(), state.host,
                                                dict(state.agent_labels()), state.remember):
                yield self._family(field.name, field.help, field.kind), field.name, samples

    def collect(self):
        for fam, name, samples in self.rows():
            m = PromMetric(fam.name, fam.documentation, fam.type, fam.unit)
            m.samples = [Sample(name, labels, value, None, None) for labels, value in samples]
            yield m


class PrometheusExporter:
    """The daemon component serving /metrics (`[prometheus]`)."""

    name = "prometheus"

    def __init__(self, settings: Any, ctx: Any, stale_s: float):
        self.settings = settings
        self.ctx = ctx
        self.state = LiveState.from_context(ctx, stale_s)
        self.collector = ScrapeCollector(self.state, settings.native_names, settings.dcgm_names)
        self.server: MetricsServer | None = None
        self.encoder = CachingEncoder()
        self._bodies: dict[str, tuple[int, bytes]] = {}  # content type -> (generation, body)
        self.scrape_seconds = 0.0  # wall and thread CPU time spent building answers, for status and bench/
        self.scrape_cpu_seconds = 0.0
        self.renders = 0
        self._lock = threading.Lock()

    def render(self, accept: str) -> tuple[bytes, str]:
        """The answer to one scrape. The windows change once a tick, so a second scrape in
        the same tick (a Prometheus HA pair, a 10/s scraper) gets the first one's bytes."""
        started, cpu = time.perf_counter(), time.thread_time()
        encoder, content_type = choose_encoder(accept)
        generation = self.state.generation
        cached = self._bodies.get(content_type)
        if cached is not None and cached[0] == generation:
            body = cached[1]
        else:
            body = self.encoder.encode(self.collector, encoder, content_type)
            self._bodies[content_type] = (generation, body)
        with self._lock:  # several scrapes may render at once
            self.scrape_seconds += time.perf_counter() - started
            self.scrape_cpu_seconds += time.thread_time() - cpu
            self.renders += 1
        return body, content_type

    def start(self) -> None:
        host, port = parse_listen(self.settings.listen)
        try:
            web = load_web_config(self.settings.web_config_file)
        except WebConfigError as e:
            raise ValueError(f"prometheus.web_config_file: {e}") from None
        self.tick(self.ctx.clock())  # the first scrape already has the agent's own figures
        self.server = MetricsServer(host, port, self.render, web, self.settings.max_concurrent_scrapes,
                                    self.settings.client_timeout)
        self.server.start()
        log.info("serving /metrics on %s (port %d)%s%s", self.settings.listen, self.server.port,
                 ", TLS" if web.tls else "", ", basic auth" if web.users else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def tick(self, now: float) -> None:
        self.state.publish(self.ctx)

    def status(self) -> dict:
        server = self.server
        stats = dict(server.stats) if server is not None else {}
        n = self.renders
        return {"listen": self.settings.listen, "port": server.port if server is not None else None,
                "tls": bool(server and server.tls), "basic_auth": bool(server and server.auth),
                "native_names": self.settings.native_names, "dcgm_names": self.settings.dcgm_names, **stats,
                "render_ms_avg": round(1000 * self.scrape_seconds / n, 3) if n else None,
                "render_cpu_ms_avg": round(1000 * self.scrape_cpu_seconds / n, 3) if n else None,
                "render_cpu_s": round(self.scrape_cpu_seconds, 6), "renders": n}

    def reload(self, cfg) -> None:
        new = cfg.prometheus
        if not new.enabled:
            log.warning("reload: prometheus.enabled = false takes effect on restart")
        # A web config file is read again on every reload (new certificates, new users).
        restart = (new.listen != self.settings.listen or new.web_config_file != self.settings.web_config_file
                   or bool(new.web_config_file) or new.max_concurrent_scrapes != self.settings.max_concurrent_scrapes
                   or new.client_timeout != self.settings.client_timeout)
        self.collector.native, self.collector.dcgm = new.native_names, new.dcgm_names
        self._bodies = {}  # the names served may have changed
        old, self.settings = self.settings, new
        if not restart:
            return
        try:
            host, port = parse_listen(new.listen)
            web = load_web_config(new.web_config_file)
        except (WebConfigError, ValueError) as e:
            self.settings = old
            log.error("reload: /metrics keeps its running settings: %s", e)
            return
        same_port = new.listen == old.listen
        if same_port:  # the port must be free before the new server binds it
            self.stop()
        try:
            server = MetricsServer(host, port, self.render, web, new.max_concurrent_scrapes, new.client_timeout)
        except OSError as e:
            self.settings = old
            log.error("reload: /metrics keeps %s: %s", old.listen, e)
            if same_port:
                self.start()
            return
        self.stop()
        self.server = server
        server.start()
        log.info("reload: serving /metrics on %s", new.listen)


def build(cfg, ctx) -> PrometheusExporter | None:
    """The /metrics component, when `prometheus.enabled`."""
    if not cfg.prometheus.enabled:
        return None
    stale_s = max(10.0, 3.0 * float(cfg.host.interval))
    return PrometheusExporter(cfg.prometheus, ctx, stale_s)
