"""OTLP export (`[otlp] endpoint = ...`): the /metrics families pushed with the OpenTelemetry SDK.

The same families a scrape reads (`agent.prometheus.families`: same names, same labels as
attributes, same rules for stale and lost GPUs) are observed by the SDK's observable
instruments, one per catalogue metric, on the SDK's own export thread every `interval`;
the OTLP/gRPC exporter sends them. Counters (`kind="counter"`, `_total`) are observable
counters, cumulative; everything else is an observable gauge. Units are the catalogue's in
UCUM, as OpenTelemetry asks (`Cel`, `W`, `By`, `J`, `%`, ...).

Resource: the host, following OpenTelemetry's semantic conventions (`host.name`,
`host.id` = agent.host_id, `service.name` = egs-agent, `service.version`,
`service.instance.id`) plus the agent's configured labels. A resource describes one
producer, and the SDK has one per meter provider, so the GPUs are not resources of their
own: each GPU data point carries the `hw.*` attributes of the hardware conventions
(`hw.type` = gpu, `hw.id` = the UUID, `hw.vendor`, `hw.model`) beside gpu/uuid/vendor/model.

The main loop's only work is the same `tick` as the /metrics component's: it publishes the
agent's own figures (the outbox's, the alarms') in one dict.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import parse_duration
from agent.metrics import BY_NAME
from agent.exposition import series_name
from agent.prometheus.families import LiveState, families

log = logging.getLogger("egs-agent.otlp")

UCUM = {"percent": "%", "bytes": "By", "celsius": "Cel", "watts": "W", "joules": "J", "MHz": "MHz",
        "hertz": "Hz", "seconds": "s", "bytes/s": "By/s", "boolean": "1", "state": "1", "": "1",
        "packets/s": "{packet}/s", "errors/s": "{error}/s"}


def ucum(unit: str) -> str:
    """A catalogue unit in UCUM; a count of things is an annotation (`{record}`)."""
    found = UCUM.get(unit)
    if found is not None:
        return found
    return "{" + (unit[:-1] if unit.endswith("s") else unit) + "}"


def hw_attributes(labels: dict[str, str]) -> dict[str, str]:
    if "uuid" not in labels or "gpu" not in labels:
        return {}
    return {"hw.type": "gpu", "hw.id": labels["uuid"], "hw.vendor": labels.get("vendor", ""),
            "hw.model": labels.get("model", "")}


class Snapshot:
    """The families of one export: computed by the first instrument callback of an export
    and reused by the others (they are called one after another on the export thread)."""

    def __init__(self, state: LiveState, max_age_s: float = 0.5):
        self.state = state
        self.max_age_s = max_age_s
        self._at = -1e18
        self._by_name: dict[str, list] = {}
        self._lock = threading.Lock()

    def samples(self, metric: str) -> list[tuple[dict[str, str], float]]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.max_age_s:
                self._by_name = {f.metric.name: f.samples for f in families(self.state)}
                self._at = now
            return self._by_name.get(metric, [])


class OtlpExport:
    name = "otlp"

    def __init__(self, settings: Any, ctx: Any, stale_s: float):
        self.settings = settings
        self.ctx = ctx
        self.state = LiveState.from_context(ctx, stale_s)
        self.snapshot = Snapshot(self.state)
        self.provider = None
        self.exporter = None
        self.results = {"exports": 0, "failed": 0, "last_error": None, "last_export": None}

    def _credentials(self):
        import grpc

        s = self.settings
        if s.insecure:
            return None

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(s.ca), read(s.key), read(s.cert))

    def start(self) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        s = self.settings
        results = self.results

        class Exporter(OTLPMetricExporter):
            def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
                result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                results["exports"] += 1
                results["last_export"] = time.time()
                if result is not MetricExportResult.SUCCESS:
                    results["failed"] += 1
                    results["last_error"] = f"export to {s.endpoint} failed ({result.name})"
                return result

        self.tick(self.ctx.clock())
        self.exporter = Exporter(endpoint=s.endpoint, insecure=s.insecure, credentials=self._credentials(),
                                 headers=dict(s.headers) or None, timeout=parse_duration(s.timeout))
        reader = PeriodicExportingMetricReader(self.exporter,
                                               export_interval_millis=1000 * parse_duration(s.interval),
                                               export_timeout_millis=1000 * parse_duration(s.timeout))
        attributes = {"host.name": self.ctx.host_id, "host.id": self.ctx.host_id, "service.name": "egs-agent",
                      "service.version": __version__, "service.instance.id": self.ctx.host_id}
        attributes.update({f"egs.label.{k}": v for k, v in self.ctx.labels.items()})
        self.provider = MeterProvider(resource=Resource.create(attributes), metric_readers=[reader])
        meter = self.provider.get_meter("egs-agent", __version__)
        snapshot = self.snapshot

        def observe(metric: str):
            def callback(options):
                return [Observation(value, {**labels, **hw_attributes(labels)})
                        for labels, value in snapshot.samples(metric)]
            return callback

        for metric in sorted(BY_NAME.values(), key=lambda m: m.name):
            make = meter.create_observable_counter if metric.kind == "counter" else meter.create_observable_gauge
            make(series_name(metric.name), callbacks=[observe(metric.name)], unit=ucum(metric.unit),
                 description=metric.help)
        log.info("OTLP export to %s every %s%s", s.endpoint, s.interval, " (insecure)" if s.insecure else "")

    def tick(self, now: float) -> None:
        self.state.publish(self.ctx)

    def stop(self) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            # Bounded: one last export gets at most the export timeout.
            provider.shutdown(timeout_millis=1000 * min(5.0, parse_duration(self.settings.timeout)))

    def status(self) -> dict:
        return {"endpoint": self.settings.endpoint, "interval": self.settings.interval, **self.results}

    def force_export(self, timeout_s: float = 10.0) -> bool:
        """Export now (tests, and a stop that must not lose the last figures)."""
        return self.provider is not None and self.provider.force_flush(timeout_millis=int(1000 * timeout_s))


def build(cfg, ctx) -> OtlpExport | None:
    """The OTLP export component, when `otlp.endpoint` is set."""
    if not cfg.otlp.endpoint:
        return None
    return OtlpExport(cfg.otlp, ctx, max(10.0, 3.0 * float(cfg.host.interval)))
