"""The `[stream]` configuration section: where the agent sends its data and how.

Declared beside the outbox that reads it; `agent.config` collects it through
SECTION_MODULES, so `docs/config.md` lists it with the core sections.

Default spool bound (`spool_max_bytes`, 1 GiB): a large host sends about 100 series a
second (8 GPUs x 11 GPU metrics, CPU and memory, 4 figures for each of 2 NICs). One
one-second batch of 100 points is about 22 KB of protobuf, and 3.9 KB spooled once zlib
(level 1) has squeezed the repeated label strings (bench/collector.py prints both figures),
so a day is about 86,400 x 3.9 KB = 337 MB; 1 GiB holds about three days at that rate, and
still a full day if a host has three times as many series.
"""
from __future__ import annotations

import re

from agent.config import Key, Section
from agent.netaddr import is_loopback_endpoint

_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
MAX_ENDPOINTS = 16  # a failover list, tried in order; more is a mistake, not a fleet
ENDPOINT_LEN = 262  # a 253-character DNS name, ':' and a 5-digit port (with room for [v6])


def check_endpoints(value: list[str]) -> str | None:
    for item in value:
        m = _ENDPOINT.match(item)
        if not m or not 0 < int(m.group(2)) < 65536:
            return f"{item!r} is not host:port (IPv6 as [addr]:port)"
    return None


def check_section(s) -> tuple[str, str] | None:
    """Rules across the keys of [stream], so `check-config` refuses what `run` cannot do."""
    if s.plaintext:
        for endpoint in s.endpoints:
            if not is_loopback_endpoint(endpoint):
                return ("plaintext", f"plaintext is only allowed when every endpoint is loopback (an IP address in "
                                     f"127.0.0.0/8, ::1 or localhost); {endpoint} is not")
    if s.spool_segment_bytes * 2 > s.spool_max_bytes:
        return ("spool_segment_bytes", f"must be at most half of stream.spool_max_bytes ({s.spool_max_bytes}), "
                                       f"got {s.spool_segment_bytes}")
    if s.backoff_base > s.backoff_max:
        return ("backoff_base", f"must be <= stream.backoff_max ({s.backoff_max:g}), got {s.backoff_base:g}")
    return None


SECTIONS = [
    Section("stream", "The outbound stream to the collector (durable spool, gRPC with mutual TLS).", {
        "endpoints": Key([], list, "Collector addresses, host:port, tried in order with failover; empty turns streaming off.",
                         item_type=str, max_items=MAX_ENDPOINTS, max_len=ENDPOINT_LEN, check=check_endpoints),
        "plaintext": Key(False, bool, "Send without TLS. Allowed only when every endpoint is a loopback address: an IP "
                         "address in 127.0.0.0/8, ::1, or the name localhost (other names are refused, not resolved)."),
        "ca": Key("/etc/egs-agent/tls/ca.crt", str, "CA certificate (PEM) the collector's certificate must chain to."),
        "cert": Key("/etc/egs-agent/tls/agent.crt", str, "This agent's client certificate (PEM); its CN or a DNS SAN must equal agent.host_id."),
        "key": Key("/etc/egs-agent/tls/agent.key", str, "The client certificate's private key (PEM)."),
        "server_name": Key("", str, "Name to verify the collector's certificate against; empty means the endpoint's host.",
                           max_len=253),
        "spool_max_bytes": Key(1 << 30, int, "Bound of the on-disk spool; when full the oldest unsent batches are dropped and counted. "
                               "At most 1 TiB (a bound, not an allocation: a typo of many digits is refused).",
                               min=1 << 20, max=1 << 40),
        "spool_segment_bytes": Key(8 << 20, int, "Size of one spool segment file (at most half of spool_max_bytes).",
                                   min=64 << 10, max=256 << 20),
        "fsync": Key(True, bool, "fsync the spool before sending (turn off only for tests on tmpfs)."),
        "interval": Key("5s", (str, int, float), "How long one-second buckets gather before they are spooled and sent "
                        "together, as one batch (1s..1m). Events, the NIC state and recordings go at once, with the "
                        "buckets gathered so far. Each batch costs a spool fsync, a message and an acknowledgement "
                        "whatever it holds, so a longer interval costs less CPU; a crash of the agent (not of the "
                        "collector or the network) loses at most this much.", duration=True, min=1, max=60),
        "queue_size": Key(1000, int, "Bucket sets and events held in memory in front of the spool; overflow is dropped and counted.",
                          min=1, max=1_000_000),
        "max_batch_points": Key(5000, int, "Most points in one batch; a larger bucket set is split.", min=1, max=100_000),
        "max_message_bytes": Key(4 << 20, int, "Largest batch sent; larger ones are dropped and counted (the collector's limit must be at least this).",
                                 min=64 << 10, max=64 << 20),
        "max_in_flight": Key(256, int, "Batches sent and not yet acknowledged.", min=1, max=100_000),
        "keepalive_time": Key(30.0, (int, float), "Seconds between HTTP/2 keepalive pings on an idle connection.", min=10, max=3600),
        "keepalive_timeout": Key(10.0, (int, float), "Seconds to wait for a ping's answer before the connection counts as dead.", min=1, max=600),
        "connect_timeout": Key(20.0, (int, float), "Seconds one connection attempt may take (gRPC's MIN_CONNECT_TIMEOUT).", min=0.1, max=600),
        "backoff_base": Key(1.0, (int, float), "First reconnect delay, seconds (gRPC connection backoff: 1 s); at most backoff_max.",
                            min=0.01, max=600),
        "backoff_multiplier": Key(1.6, (int, float), "Growth of the delay per failed round (gRPC: 1.6).", min=1, max=10),
        "backoff_jitter": Key(0.2, (int, float), "Random spread of each delay, as a fraction (gRPC: 0.2).", min=0, max=1),
        "backoff_max": Key(120.0, (int, float), "Largest reconnect delay, seconds (gRPC: 120 s).", min=0.01, max=3600),
    }, check=check_section),
]
