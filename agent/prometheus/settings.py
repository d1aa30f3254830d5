"""The `[prometheus]` and `[otlp]` configuration sections, declared beside the code that reads them.

Default port 9473: the agent lives beside dcgm-exporter (9400), node_exporter (9100),
nvidia_gpu_exporter (9835), Prometheus itself (9090-9093), OpenTelemetry's Prometheus
exporter (9464) and AMD's device-metrics-exporter (5000) on GPU hosts, so it must not take
any of those. Prometheus' port registry (the "Default port allocations" page of its wiki)
has handed out the whole 9100-9999 range, so no number there is unclaimed; 9473 is clear of
every exporter a GPU host is likely to run, and `listen` changes it (docs/prometheus.md).
"""
from __future__ import annotations

import re

from agent.config import Key, Section
from agent.netaddr import is_loopback_endpoint

DEFAULT_PORT = 9473
# host:port, [v6]:port or :port (every address). A port of 0 is refused: a scrape target
# needs a known port.
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)?:([0-9]{1,5})")
_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def parse_listen(value: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or ":port" -> (host, port); "" host means every address.
    ValueError with the reason when `value` is none of those."""
    m = _LISTEN.fullmatch(value.strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{value!r} is not an address to listen on: use host:port, [v6]:port or :port "
                         "(port 1-65535)")
    host = m.group(1) or ""
    if host.startswith("["):
        host = host[1:-1]
    return host, int(m.group(2))


def check_listen(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as e:
        return str(e)
    return None


def _check_endpoint(value: str) -> str | None:
    if value == "":
        return None
    m = _ENDPOINT.fullmatch(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        return f"{value!r} is not host:port (IPv6 as [addr]:port); empty turns OTLP off"
    return None


def _check_headers(value: dict) -> str | None:
    for name, v in value.items():
        if not isinstance(v, str):
            return f"header {name!r} must be a string, got {type(v).__name__}"
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            return f"header name {name!r} must be letters, digits and '-'"
    return None


def _check_otlp(s) -> tuple[str, str] | None:
    if s.insecure and s.endpoint and not is_loopback_endpoint(s.endpoint):
        return ("insecure", f"insecure (no TLS) is only allowed to a loopback endpoint (127.0.0.0/8, ::1 or "
                            f"localhost); {s.endpoint} is not")
    if bool(s.cert) != bool(s.key):
        return ("cert", "cert and key go together (a client certificate needs its key)")
    return None


SECTIONS = [
    Section("prometheus", "The agent's own /metrics (Prometheus text 0.0.4, OpenMetrics when asked for): every "
            "catalogue metric, health, read errors and the agent's own figures, read from the live state at "
            "scrape time (docs/prometheus.md).", {
        "enabled": Key(False, bool, "Serve /metrics."),
        "listen": Key(f":{DEFAULT_PORT}", str, f"Address to listen on: host:port, [v6]:port, or :port for every "
                      f"address. {DEFAULT_PORT} keeps clear of dcgm-exporter (9400), node_exporter (9100) and "
                      "nvidia_gpu_exporter (9835).", max_len=262, check=check_listen),
        "web_config_file": Key("", str, "A Prometheus exporter-toolkit web config file (YAML: tls_server_config, "
                               "basic_auth_users with bcrypt hashes); empty serves plain HTTP without "
                               "authentication. Read at start and on reload."),
        "native_names": Key(True, bool, "Serve the egs_ names (the catalogue's)."),
        "dcgm_names": Key(False, bool, "Also serve dcgm-exporter's names, labels and units (DCGM_FI_DEV_GPU_TEMP, ...) "
                          "for what the agent measures, NVIDIA and AMD alike, so dashboards built for "
                          "dcgm-exporter work unchanged; with native_names = false, only those."),
        "max_concurrent_scrapes": Key(4, int, "Scrapes answered at once; one more is answered 503 at once rather "
                                      "than queued.", min=1, max=64),
        "client_timeout": Key(10.0, (int, float), "Seconds a client may take to send its request or read the "
                              "answer before the connection is closed.", min=0.5, max=300),
    }),
    Section("otlp", "Push the same metrics to an OpenTelemetry collector over OTLP/gRPC (docs/prometheus.md).", {
        "endpoint": Key("", str, "OTLP gRPC receiver, host:port; empty turns OTLP off.", max_len=262,
                        check=_check_endpoint),
        "interval": Key("15s", (str, int, float), "Time between exports (a duration or seconds, 1s..1h).",
                        duration=True, min=1, max=3600),
        "timeout": Key("10s", (str, int, float), "Time one export may take (1s..5m).", duration=True, min=1, max=300),
        "insecure": Key(False, bool, "Send without TLS; only to a loopback endpoint."),
        "ca": Key("", str, "CA certificate (PEM) the receiver's certificate must chain to; empty: the system's."),
        "cert": Key("", str, "Client certificate (PEM) for mutual TLS; empty: none."),
        "key": Key("", str, "The client certificate's private key (PEM)."),
        "headers": Key({}, dict, "Headers sent with every export (an API key, a tenant): string values.", max_items=32,
                       check=_check_headers),
    }, check=_check_otlp),
]
