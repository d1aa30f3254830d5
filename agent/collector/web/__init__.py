"""The collector's web face: a read-only fleet view in the browser (docs/web.md).

- `fleet`: the model the pages read (hosts, GPU states, firing alarms), fed by one
  subscription on the collector's hub while a page is open;
- `server`: the HTTP listener on the collector's event loop (pages, JSON, server-sent events),
  behind the consumers' read-only tokens or a client certificate;
- `static/`: the pages (plain HTML, CSS and JavaScript) and `vendor/`, uPlot and its license,
  copied there by `make web` from the npm registry (pinned version and checksum).

`SECTION` is the `[web]` config section (agent/collector/settings.py lists it); `start` is
called where the collector starts its other listeners (agent/collector/server.py).
"""
from __future__ import annotations

import logging
import ssl
from typing import Any

from agent.config import Key, Section, parse_duration
from agent.prometheus.settings import check_listen, parse_listen

log = logging.getLogger("egs-collector.web")

DEFAULT_LISTEN = "127.0.0.1:7480"

SECTION = Section("web", "The read-only fleet view in the browser (docs/web.md): same tokens as the consumers' port; "
                  "HTTPS with tls.cert/tls.key unless tls.plaintext.", {
    "enabled": Key(False, bool, "Serve the web UI."),
    "listen": Key(DEFAULT_LISTEN, str, "Address to listen on: host:port, [v6]:port, or :port for every address "
                  "(plaintext: loopback only).", max_len=262, check=check_listen),
    "client_ca": Key("", str, "CA (PEM): a browser presenting a client certificate that chains to it needs no token "
                     "(empty: tokens only)."),
    "hot_celsius": Key(70.0, float, "A GPU at or above this temperature shows as hot.", min=0, max=200),
    "stale_after": Key("10s", str, "A connected host with no point for this long shows as silent: more than an agent's stream.interval "
                       "(5 s by default), as points arrive in batches that far apart.", duration=True,
                       min=1, max=3600, max_len=64),
    "update_interval": Key("1s", str, "How often open pages are sent what changed (each page gets the latest "
                           "state, coalesced, never a backlog).", duration=True, min=0.2, max=60, max_len=64),
    "max_pages": Key(64, int, "Live pages open at once; one more gets 503.", min=1, max=10_000),
})


def ssl_context(cfg: Any) -> ssl.SSLContext | None:
    """HTTPS with the collector's own certificate unless tls.plaintext; web.client_ca asks
    browsers for a certificate (optional: a token still works)."""
    if cfg.tls.plaintext:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    if cfg.web.client_ca:
        ctx.load_verify_locations(cfg.web.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def start(cfg: Any, collector: Any):
    """Serve the web UI per `cfg.web` for a started `Collector`; None when switched off.
    Raises OSError (naming the address) when the port cannot be had."""
    if not cfg.web.enabled:
        return None
    from agent.collector.web.fleet import Fleet
    from agent.collector.web.server import WebServer
    host, port = parse_listen(cfg.web.listen)
    ingest = collector.ingest
    fleet = Fleet(collector.store, collector.hub, lambda: ingest.connected.keys(), cfg.web.hot_celsius,
                  parse_duration(cfg.web.stale_after), collector.consumers.fleet_agents)
    server = WebServer(fleet, collector.store, collector.hub, cfg.consumer_tokens, collector.consumers.bounds,
                       parse_duration(cfg.web.update_interval), cfg.web.max_pages, ssl_context(cfg),
                       cfg.consumers.max_pending)
    try:
        await server.start(host, port)
    except OSError as e:
        raise OSError(f"cannot listen on {cfg.web.listen} (web.listen): {e.strerror or e}") from None
    scheme = "http" if cfg.tls.plaintext else "https"
    log.info("serving the web UI on %s://%s (port %d)", scheme, cfg.web.listen, server.port)
    return server
