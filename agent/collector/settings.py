"""The collector's own configuration file (`/etc/egs-collector/collector.toml`).

Validated with the same machinery as the agent's (`agent.config`: declared `Key`s, errors
naming file:line:key, exit 2), against the collector's sections only. Rules that span keys
(TLS files needed unless plaintext; plaintext only on loopback; consumer tokens needed
unless plaintext on loopback) are checked in `load` and located the same way.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from types import SimpleNamespace

from agent.config import ConfigError, Key, Section, parse, parse_duration, read, section_markdown

DEFAULT_PATH = "/etc/egs-collector/collector.toml"


def _duration(value: str) -> str | None:
    return None if parse_duration(value, strict=False) else "must be a duration like 30s, 6h (s, m, h suffixes; d not accepted)"


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        return "must be host:port (IPv6 as [addr]:port; port 0 picks a free one)"
    return None


def _retention(value: str) -> str | None:
    # Retention is often days; accept a `d` suffix here on top of s/m/h.
    return None if retention_seconds(value) else "must be a duration like 6h or 30d"


def retention_seconds(value: str) -> float | None:
    value = str(value).strip()
    if value.endswith("d") and value[:-1].replace(".", "", 1).isdigit():
        return float(value[:-1]) * 86400 or None
    return parse_duration(value, strict=False)


SECTIONS = {s.name: s for s in [
    Section("collector", "Where the collector keeps its data.", {
        "data_dir": Key("/var/lib/egs-collector", str, "Directory of the embedded store (SQLite, WAL mode)."),
        "log_level": Key("info", str, "Log level.", choices=("debug", "info", "warning", "error")),
    }),
    Section("ingest", "The port agents publish to (mutual TLS).", {
        "listen": Key("[::]:7443", str, "Address agents connect to.", check=_listen),
        "max_message_bytes": Key(8 << 20, int, "Largest batch accepted; larger ones get RESOURCE_EXHAUSTED (keep >= the agents' stream.max_message_bytes).",
                                 min=64 << 10, max=256 << 20),
        "max_points": Key(100_000, int, "Most points one batch may carry.", min=1),
        "max_uncommitted": Key(4096, int, "Batches received but not yet stored, all agents together; past it the collector stops reading (agents' spools absorb the backlog).",
                               min=16, max=1_000_000),
        "max_future": Key("10m", str, "A batch with a timestamp (point, event, created) later than the collector's clock plus this is refused (a host clock far ahead, or garbage).",
                          check=_duration),
        "max_age": Key("30d", str, "A batch with a timestamp older than this is refused (older than any rollup is kept by default; agents count the refusal).",
                       check=_retention),
    }),
    Section("consumers", "The port consumers (subscribe, query, agents) connect to: TLS and read-only bearer tokens.", {
        "listen": Key("[::]:7444", str, "Address consumers connect to.", check=_listen),
        "tokens": Key([], list, "Accepted read-only tokens (sent as 'authorization: Bearer TOKEN').", item_type=str),
        "tokens_file": Key("", str, "File with one accepted token per line (# comments); read at start."),
        "heartbeat": Key("5s", str, "Default interval of heartbeats on Subscribe streams.", check=_duration),
        "max_pending": Key(10_000, int, "Default bound of each consumer's queue, in distinct series (coalesced to the latest value); also the most a consumer may ask for.",
                           min=16, max=10_000_000),
        "max_subscribers": Key(256, int, "Subscribe streams open at once, all consumers together; one more gets RESOURCE_EXHAUSTED.",
                               min=1, max=100_000),
        "max_query_span": Key("6h", str, "Longest time range one raw-resolution query may cover (10s and 1m queries are bounded by their retention).",
                              check=_duration),
        "max_query_points": Key(1_000_000, int, "Most points one query may return, all series together; past it RESOURCE_EXHAUSTED (ask for a coarser resolution or fewer series).",
                                min=1000, max=50_000_000),
        "max_query_series": Key(20_000, int, "Most series one query may match.", min=10, max=1_000_000),
    }),
    Section("tls", "Certificates. Agents must present a client certificate from client_ca whose CN or DNS SAN is their host id.", {
        "plaintext": Key(False, bool, "No TLS and no client identity check; allowed only when both listen addresses are loopback."),
        "cert": Key("/etc/egs-collector/tls/collector.crt", str, "The collector's certificate chain (PEM)."),
        "key": Key("/etc/egs-collector/tls/collector.key", str, "Its private key (PEM)."),
        "client_ca": Key("/etc/egs-collector/tls/ca.crt", str, "CA (PEM) agents' client certificates must chain to."),
    }),
    Section("store", "The embedded store and how long it keeps what.", {
        "raw_retention": Key("1h", str, "How long per-second points are kept.", check=_retention),
        "rollup_10s_retention": Key("2d", str, "How long 10-second min/avg/max rollups are kept.", check=_retention),
        "rollup_1m_retention": Key("30d", str, "How long 1-minute rollups are kept.", check=_retention),
        "events_retention": Key("90d", str, "How long events are kept.", check=_retention),
        "synchronous": Key("normal", str, "SQLite synchronous mode: 'normal' survives a collector crash (kill -9) with WAL; 'full' also a power cut, at one fsync per commit.",
                           choices=("normal", "full")),
        "cleanup_interval": Key("60s", str, "How often expired rows are deleted.", check=_duration),
        "compress_raw": Key(True, bool, "zlib the per-second records (about 4.6x less disk, about 0.75 us of CPU per point)."),
        "rollup_flush": Key("10s", str, "How often the 10 s / 1 min buckets that have ended are written (a bucket reaches queries 5 s plus up to this long after it ends).", check=_duration),
        "cache_mib": Key(256, int, "SQLite page cache of the writer, MiB.", min=2, max=65536),
    }),
]}


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_tokens(path: str) -> list[str]:
    tokens = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.append(line)
    return tokens


def parse_text(text: str, file: str = "<config>") -> SimpleNamespace:
    cfg = parse(text, file, known=SECTIONS)
    where = cfg.locator
    if cfg.tls.plaintext:
        for section in ("ingest", "consumers"):
            if not _is_loopback(getattr(cfg, section).listen):
                raise where.error((section, "listen"), "plaintext is allowed only on loopback addresses (tls.plaintext = true)")
    else:
        for key in ("cert", "key", "client_ca"):
            if not getattr(cfg.tls, key):
                raise where.error(("tls", key), "is required unless tls.plaintext = true")
    tokens = list(cfg.consumers.tokens)
    if cfg.consumers.tokens_file:
        try:
            tokens += load_tokens(cfg.consumers.tokens_file)
        except OSError as e:
            raise where.error(("consumers", "tokens_file"), f"cannot read: {e.strerror}") from None
    if not tokens and not cfg.tls.plaintext:
        raise where.error(("consumers",), "tokens or tokens_file must give at least one token unless tls.plaintext = true")
    if any(len(t) < 16 for t in tokens):
        raise where.error(("consumers", "tokens"), "every token must be at least 16 characters")
    cfg.consumers.all_tokens = tokens
    return cfg


def markdown() -> str:
    """The config reference table of docs/collector.md (`python -m agent.collector.settings`)."""
    return "\n".join(line for sec in SECTIONS.values() for line in section_markdown(sec, "###"))


def load(path: str | os.PathLike | None = None) -> SimpleNamespace:
    return parse_text(*read(path, DEFAULT_PATH))


if __name__ == "__main__":
    print(markdown())
