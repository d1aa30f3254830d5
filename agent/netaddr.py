"""Whether a configured host is loopback: one decision for the agent's stream and the collector.

Plaintext (no TLS) is allowed only to and on loopback, so the decision must not be fooled by
a name: `127.evil.example` is a DNS name that anyone can point anywhere, not an address in
127.0.0.0/8 (issue 10, item 11). The decision is made on IP literals with `ipaddress`
(127.0.0.0/8, ::1, and IPv4-mapped ::ffff:127.x.y.z); the one name accepted is `localhost`,
which RFC 6761 section 6.3 reserves for loopback and which resolvers answer from the hosts
file without asking DNS. Every other name is refused rather than resolved: what a name
resolves to at check time need not be what it resolves to when the connection is made.
"""
from __future__ import annotations

import ipaddress

LOCALHOST = ("localhost", "localhost.")


def is_loopback_host(host: str) -> bool:
    """`host` as written in an endpoint or a listen address (IPv6 with or without brackets)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in LOCALHOST:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def split_host_port(endpoint: str) -> tuple[str, str]:
    """"host:port" or "[v6]:port" -> (host, port); the host keeps no brackets."""
    host, _, port = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def is_loopback_endpoint(endpoint: str) -> bool:
    return is_loopback_host(split_host_port(endpoint)[0])
