"""The collector's own configuration file (`/etc/egs-collector/collector.toml`).

Validated with the same machinery as the agent's (`agent.config`: declared `Key`s, errors
naming file:line:key, exit 2), against the collector's sections only. Rules that span keys
(TLS files needed unless plaintext; plaintext only on loopback; consumer tokens needed
unless plaintext on loopback) are checked in `load` and located the same way.
"""
from __future__ import annotations

import os
import re
from typing import Any

from agent.collector.metrics import SECTION as METRICS_SECTION
from agent.collector.web import SECTION as WEB_SECTION
from agent.config import MAX_FILE_BYTES, Key, Section, parse, parse_duration, read, section_markdown
from agent.netaddr import is_loopback_endpoint

DEFAULT_PATH = "/etc/egs-collector/collector.toml"

DAY = 86400.0
# Retention and age bounds: ten years is past any fleet's horizon and keeps every cutoff
# (now - retention) a representable time; below a minute nothing would ever reach a query.
MAX_RETENTION_S = 3650 * DAY
MAX_TOKENS = 1024
TOKEN_LEN = (16, 4096)
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP/2 header value can carry
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def _listen(value: str) -> str | None:
    m = _LISTEN.fullmatch(value)
    if not m or not 0 <= int(m.group(2)) < 65536:
        return "must be host:port (IPv6 as [addr]:port; port 0 picks a free one)"
    return None


def _tokens(value: list[str]) -> str | None:
    for i, token in enumerate(value):
        problem = token_problem(token)
        if problem:
            return f"{problem} (item {i})"
    return None


def _aggregates(value: list[str]) -> str | None:
    known = ("min", "max", "sum", "count")
    unknown = [a for a in value if a not in known]
    if unknown:
        return f"unknown aggregate {unknown[0]!r} (known: {', '.join(known)})"
    return None


def _http_url(value: str) -> str | None:
    if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s#]*)?", value):
        return "must be an http:// or https:// URL"
    return None


def token_problem(token: str) -> str | None:
    low, high = TOKEN_LEN
    if not low <= len(token) <= high:
        return f"every token must be at least {low} characters and at most {high}, got {len(token)}"
    if not _TOKEN.fullmatch(token):
        return "a token must be visible ASCII characters without spaces (it travels in an HTTP/2 header)"
    return None


def retention_seconds(value: str) -> float | None:
    """A retention or age ('6h', '30d') -> seconds; None when it is not a duration."""
    return parse_duration(value, strict=False, days=True)


def _duration_key(default: str, doc: str, low: float, high: float, days: bool = False) -> Key:
    return Key(default, str, doc, duration=True, min=low, max=high, days=days, max_len=64)


SECTIONS = {s.name: s for s in [
    Section("collector", "Where the collector keeps its data.", {
        "data_dir": Key("/var/lib/egs-collector", str, "Directory of the embedded store (SQLite, WAL mode)."),
        "log_level": Key("info", str, "Log level.", choices=("debug", "info", "warning", "error")),
    }),
    Section("ingest", "The port agents publish to (mutual TLS).", {
        "listen": Key("[::]:7443", str, "Address agents connect to.", max_len=262, check=_listen),
        "max_message_bytes": Key(8 << 20, int, "Largest batch accepted; larger ones get RESOURCE_EXHAUSTED (keep >= the agents' stream.max_message_bytes).",
                                 min=64 << 10, max=256 << 20),
        "max_points": Key(100_000, int, "Most points one batch may carry.", min=1, max=10_000_000),
        "max_uncommitted": Key(4096, int, "Batches received but not yet stored, all agents together; past it the collector stops reading (agents' spools absorb the backlog).",
                               min=16, max=1_000_000),
        "max_future": _duration_key("10m", "A batch with a timestamp (point, event, created) later than the collector's clock plus this is refused (a host clock far ahead, or garbage).",
                                    1, DAY),
        "max_age": _duration_key("30d", "A batch with a timestamp older than this is refused (older than any rollup is kept by default; agents count the refusal).",
                                 60, MAX_RETENTION_S, days=True),
    }),
    Section("consumers", "The port consumers (subscribe, query, agents) connect to: TLS and read-only bearer tokens.", {
        "listen": Key("[::]:7444", str, "Address consumers connect to.", max_len=262, check=_listen),
        "tokens": Key([], list, f"Accepted read-only tokens (sent as 'authorization: Bearer TOKEN'): at most {MAX_TOKENS}, each "
                      f"{TOKEN_LEN[0]} to {TOKEN_LEN[1]} visible ASCII characters.", item_type=str, max_items=MAX_TOKENS,
                      max_len=TOKEN_LEN[1], check=_tokens),
        "tokens_file": Key("", str, f"File with one accepted token per line (# comments); read at start; at most "
                           f"{MAX_FILE_BYTES} bytes, the tokens as in `tokens`."),
        "heartbeat": _duration_key("5s", "Default interval of heartbeats on Subscribe streams.", 1, 3600),
        "max_pending": Key(10_000, int, "Default bound of each consumer's queue, in distinct series (coalesced to the latest value); also the most a consumer may ask for.",
                           min=16, max=10_000_000),
        "max_subscribers": Key(256, int, "Subscribe streams open at once, all consumers together; one more gets RESOURCE_EXHAUSTED.",
                               min=1, max=100_000),
        "max_query_span": _duration_key("6h", "Longest time range one raw-resolution query may cover (10s and 1m queries are bounded by their retention).",
                                        60, 365 * DAY, days=True),
        "max_query_points": Key(500_000, int, "Most points one query may return, all series together; past it RESOURCE_EXHAUSTED (ask for a coarser resolution or fewer series). A query costs the collector up to ~800 bytes of memory per point it may return, and two run at once.",
                                min=1000, max=5_000_000),
        "max_query_series": Key(20_000, int, "Most series one query may match.", min=10, max=1_000_000),
    }),
    Section("bus", "Scale-out: several collectors sharing one NATS JetStream (docs/collector.md, 'Many collectors'). Empty nats: one box, no bus.", {
        "nats": Key([], list, "NATS server URLs (nats://host:4222); every collector of a fleet lists the same cluster.", item_type=str,
                    max_items=32, max_len=512),
        "name": Key("", str, "This collector's name in `agents` (default: hostname:ingest port).", max_len=253),
        "stream": Key("EGS_BATCHES", str, "The JetStream stream batches go through (created at first start).", max_len=64,
                      check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_-]+", v) else "letters, digits, '_' and '-' only"),
        "replicas": Key(1, int, "Copies of every batch JetStream keeps before it acknowledges (3 on a 3-node cluster: one node may die).", min=1, max=5),
        "duplicate_window": _duration_key("2m", "How long JetStream remembers a batch's id to drop it when published again.", 1, DAY),
        "max_mib": Key(10240, int, "Most the stream may hold, MiB, while store writers are behind; past it publishes fail and agents spool. Each server's JetStream max_file_store must allow it (times replicas over the cluster).", min=64, max=1 << 30),
        "timeout": _duration_key("5s", "How long a publish or a bus request may take.", 0.1, 600),
        "user": Key("", str, "NATS user (with password_file)."),
        "password_file": Key("", str, "File holding the NATS user's password."),
        "tls_ca": Key("", str, "CA (PEM) the NATS servers' certificates chain to (tls:// URLs)."),
    }),
    Section("tls", "Certificates. Agents must present a client certificate from client_ca whose CN or DNS SAN is their host id.", {
        "plaintext": Key(False, bool, "No TLS and no client identity check; allowed only when both listen addresses are loopback."),
        "cert": Key("/etc/egs-collector/tls/collector.crt", str, "The collector's certificate chain (PEM)."),
        "key": Key("/etc/egs-collector/tls/collector.key", str, "Its private key (PEM)."),
        "client_ca": Key("/etc/egs-collector/tls/ca.crt", str, "CA (PEM) agents' client certificates must chain to."),
    }),
    Section("store", "Where points are kept: the embedded SQLite store (default) or a Prometheus remote-write engine; how long the embedded store keeps what.", {
        "backend": Key("sqlite", str, "'sqlite': the embedded store in data_dir. 'remote_write': points go to a Prometheus remote-write engine (VictoriaMetrics, Prometheus, Mimir) at remote_write_url and queries to its HTTP API at query_url; agents, events and the exactly-once ledger stay in data_dir/ledger.db.",
                       choices=("sqlite", "remote_write")),
        "remote_write_url": Key("", str, "The engine's remote-write endpoint, e.g. http://vm:8428/api/v1/write (VictoriaMetrics), http://prometheus:9090/api/v1/write (Prometheus with --web.enable-remote-write-receiver), http://mimir:8080/api/v1/push.",
                                max_len=2048, check=_http_url),
        "query_url": Key("", str, "The engine's Prometheus HTTP API base, e.g. http://vm:8428 or http://mimir:8080/prometheus (the collector adds /api/v1/...).",
                         max_len=2048, check=_http_url),
        "remote_timeout": _duration_key("10s", "Time one request to the engine may take.", 0.1, 600),
        "remote_retry": _duration_key("30s", "How long a group of batches is retried while the engine answers 5xx/429 or not at all, before its agents are told to send it again (they keep it spooled).",
                                      1, 3600),
        "replay_window": _duration_key("15s", "Accepted writes kept this long and sent again when the engine answers after failing: VictoriaMetrics 1.79 acknowledges writes it holds in memory and loses up to ~10 s of them (new series the longest) if it is killed; the engine keeps the repeated samples once (replay_max_mib = 0 turns it off: Prometheus, whose WAL has them).",
                                       1, 600),
        "replay_max_mib": Key(256, int, "Most memory the replay_window's writes may take (snappy-compressed, ~19 bytes a sample: 15 s at 100k points/s is ~140 MiB); past it the oldest go. 0: keep none.",
                              min=0, max=65536),
        "remote_aggregates": Key(["min", "max", "sum", "count"], list, "Which of a point's aggregates are written beside its last value, one series each (egs_<metric>_min, _max, _sum, _count; docs/exposition.md). Each costs the engine one sample a point; one left out is computed from the last values instead (a short spike between two reads is then lost).",
                                 item_type=str, max_items=4, check=_aggregates),
        "remote_concurrency": Key(2, int, "Requests sent to the engine at once (an engine parses each request on one core); a group's requests are spread over them.", min=1, max=64),
        "remote_samples_per_request": Key(10_000, int, "Samples in one remote-write request (each agent point is five samples).", min=100, max=1_000_000),
        "bearer_token_file": Key("", str, "File holding a bearer token for the engine (read at each connection)."),
        "basic_auth_user": Key("", str, "User for HTTP basic auth to the engine."),
        "basic_auth_password_file": Key("", str, "File holding that user's password."),
        "tls_ca": Key("", str, "CA bundle (PEM) the engine's https certificate must chain to (default: the system's)."),
        "tls_cert": Key("", str, "Client certificate (PEM) for the engine, if it asks for one."),
        "tls_key": Key("", str, "Its private key (PEM)."),
        "tls_insecure_skip_verify": Key(False, bool, "Do not verify the engine's certificate (testing only)."),
        "tenant": Key("", str, "Tenant sent as X-Scope-OrgID with every request (Mimir, Cortex; empty: none).", max_len=256),
        "raw_retention": _duration_key("1h", "How long per-second points are kept.", 60, MAX_RETENTION_S, days=True),
        "rollup_10s_retention": _duration_key("2d", "How long 10-second min/avg/max rollups are kept.", 60, MAX_RETENTION_S, days=True),
        "rollup_1m_retention": _duration_key("30d", "How long 1-minute rollups are kept.", 60, MAX_RETENTION_S, days=True),
        "events_retention": _duration_key("90d", "How long events are kept.", 60, MAX_RETENTION_S, days=True),
        "synchronous": Key("normal", str, "SQLite synchronous mode: 'normal' survives a collector crash (kill -9) with WAL; 'full' also a power cut, at one fsync per commit.",
                           choices=("normal", "full")),
        "cleanup_interval": _duration_key("60s", "How often expired rows are deleted.", 1, DAY),
        "compress_raw": Key(True, bool, "zlib the per-second records (less disk for some CPU per point; the figures are in docs/benchmarks.md)."),
        "rollup_flush": _duration_key("10s", "How often the 10 s / 1 min buckets that have ended are written (a bucket reaches queries 5 s plus up to this long after it ends).", 1, 600),
        "cache_mib": Key(256, int, "SQLite page cache of the writer, MiB.", min=2, max=65536),
    }),
    METRICS_SECTION,
    WEB_SECTION,
]}


def load_tokens(path: str) -> list[str]:
    """Tokens of a tokens_file, one a line (# comments); the file is bounded like a config file."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    tokens = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.append(line)
    return tokens


def parse_text(text: str, file: str = "<config>") -> Any:
    cfg = parse(text, file, known=SECTIONS)
    where = cfg.locator
    if cfg.tls.plaintext:
        for section in ("ingest", "consumers"):
            listen = getattr(cfg, section).listen
            if not is_loopback_endpoint(listen):
                if where.line((section, "listen")) is None:  # the default address: point at plaintext
                    raise where.error(("tls", "plaintext"), f"plaintext is allowed only on loopback addresses, and "
                                      f"{section}.listen is {listen!r} (the default); set it to e.g. 127.0.0.1:PORT")
                raise where.error((section, "listen"), "plaintext is allowed only on loopback addresses (tls.plaintext = true)")
        if cfg.web.enabled and not is_loopback_endpoint(cfg.web.listen):
            raise where.error(("web", "listen"), "plaintext is allowed only on loopback addresses (tls.plaintext = true): "
                              "the web UI would send tokens in the clear")
    else:
        for key in ("cert", "key", "client_ca"):
            if not getattr(cfg.tls, key):
                raise where.error(("tls", key), "is required unless tls.plaintext = true")
    if cfg.store.backend == "remote_write":
        for key in ("remote_write_url", "query_url"):
            if not getattr(cfg.store, key):
                raise where.error(("store", key), "is required with store.backend = \"remote_write\"")
    if cfg.store.bearer_token_file and cfg.store.basic_auth_user:
        raise where.error(("store", "basic_auth_user"), "give bearer_token_file or basic_auth_user, not both")
    tokens = list(cfg.consumers.tokens)
    if cfg.consumers.tokens_file:
        try:
            from_file = load_tokens(cfg.consumers.tokens_file)
        except OSError as e:
            raise where.error(("consumers", "tokens_file"), f"cannot read: {e.strerror or e}") from None
        except ValueError as e:
            raise where.error(("consumers", "tokens_file"), f"cannot use: {e}") from None
        if len(from_file) > MAX_TOKENS:
            raise where.error(("consumers", "tokens_file"), f"at most {MAX_TOKENS} tokens, got {len(from_file)}")
        for i, token in enumerate(from_file):
            problem = token_problem(token)
            if problem:
                raise where.error(("consumers", "tokens_file"), f"{problem} (token {i + 1} of the file)")
        tokens += from_file
    if not tokens and not cfg.tls.plaintext:
        raise where.error(("consumers",), "tokens or tokens_file must give at least one token unless tls.plaintext = true")
    if any(len(t) < 16 for t in tokens):
        raise where.error(("consumers", "tokens"), "every token must be at least 16 characters")
    cfg.consumer_tokens = tokens  # consumers.tokens and the tokens_file's, checked
    return cfg


def markdown() -> str:
    """The config reference table of docs/collector.md (`python -m agent.collector.settings`)."""
    return "\n".join(line for sec in SECTIONS.values() for line in section_markdown(sec, "###"))


def load(path: str | os.PathLike | None = None) -> Any:
    return parse_text(*read(path, DEFAULT_PATH))


if __name__ == "__main__":
    print(markdown())
