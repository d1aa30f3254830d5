"""The agent in the Prometheus and OpenTelemetry ecosystem (docs/prometheus.md).

`settings` the `[prometheus]` and `[otlp]` sections; `families` what a scrape or an OTLP
export reads from the daemon's live state, named by `agent.exposition`; `dcgm` the
dcgm-exporter-compatible names; `web` the HTTP(S) server with the exporter-toolkit's web
config (TLS, basic auth); `component` the daemon component serving `/metrics`;
`agent.otlp` the OTLP push.
"""


def build(cfg, ctx):
    """The daemon's `/metrics` component when `prometheus.enabled`, else None. The exporter
    (and prometheus-client, about 2.5 MiB of a daemon's RSS) is imported only then."""
    if not cfg.prometheus.enabled:
        return None
    from agent.prometheus.component import build as build_exporter
    return build_exporter(cfg, ctx)
