"""The agent in the Prometheus and OpenTelemetry ecosystem (docs/prometheus.md).

`settings` the `[prometheus]` and `[otlp]` sections; `families` what a scrape or an OTLP
export reads from the daemon's live state, named by `agent.exposition`; `dcgm` the
dcgm-exporter-compatible names; `web` the HTTP(S) server with the exporter-toolkit's web
config (TLS, basic auth); `component` the daemon component serving `/metrics`;
`agent.otlp` the OTLP push.
"""
