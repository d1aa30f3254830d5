"""The web listener: a small HTTP/1.1 server on the collector's event loop, GET only.

Routes (docs/web.md): the three pages (`/`, `/host/NAME`, `/alarms`), their static files
(`/static/...`, all in the package: nothing from a CDN), the JSON they read (`/api/fleet`,
`/api/host/NAME`, `/api/history`, `/api/recording`, `/api/alarms`) and the live feed
(`/api/live`, server-sent events). Anything but GET/HEAD gets 405: the UI can read, never
write, so a consumer token opens it and nothing more.

Every request needs one of the consumers' read-only tokens (`authorization: Bearer TOKEN`,
or the `egs_token` cookie that `?token=TOKEN` on a page sets, after which the page is
reloaded without it in the address) or, with `web.client_ca`, a client certificate that
chains to it. Without either: 401. The server is bounded: header size, connections, live
pages and history queries at once (docs/web.md, "Bounds").
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

from agent.collector.store import QueryBounds, QueryTooLarge
from agent.collector.subscriptions import Subscription
from agent.collector.web.fleet import ALARM_HISTORY_S, Fleet, Page
from agent.proto import collector_pb2

log = logging.getLogger("egs-collector.web")

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "fleet.html", "/alarms": "alarms.html"}  # and /host/NAME -> host.html
MAX_HEAD = 16 << 10
MAX_CONNECTIONS = 256
HEAD_TIMEOUT = 10.0
QUERIES_RUNNING = 2
HISTORY_MAX_S = 6 * 3600.0
HISTORY_METRICS = 64  # metrics one /api/history may name
COOKIE = "egs_token"
HOST_EVENTS = 200  # alarm and health events a host page lists
RECORDINGS_LISTED = 20


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 413: "Request Header Fields Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


# By suffix, not the host's mime.types: the same answer on every machine.
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every file under static/, read once: name -> (bytes, content type)."""
    out = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            kind = TYPES.get(path.suffix, "text/plain") + "; charset=utf-8"
            out[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), kind)
    return out


class WebServer:
    def __init__(self, fleet: Fleet, store: Any, hub: Any, tokens: list[str], bounds: QueryBounds,
                 interval: float = 1.0, max_pages: int = 64, ssl_context: ssl.SSLContext | None = None,
                 max_pending: int = 10_000):
        self.fleet, self.store, self.hub = fleet, store, hub
        self.tokens = [t.encode() for t in tokens]
        self.bounds, self.interval, self.max_pages = bounds, interval, max_pages
        self.ssl_context, self.max_pending = ssl_context, max_pending
        self.static = load_static()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._connections = 0
        self._queries = asyncio.Semaphore(QUERIES_RUNNING)
        self._ticker: asyncio.Task | None = None
        self.stats = {"requests": 0, "unauthorized": 0, "pages_opened": 0}

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host or None, port, ssl=self.ssl_context,
                                                 limit=MAX_HEAD)
        self.port = self.server.sockets[0].getsockname()[1]
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.server is not None:
            self.server.close()
        for page in list(self.fleet.pages):
            page.wake.set()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.fleet.tick()
            except Exception:  # one bad tick must not end the live feed
                log.exception("web: tick failed")

    # --- one connection -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, 413, b"request head too large\n", "text/plain", close=True)
                    return
                keep = await self._request(head, writer)
                if not keep:
                    return
        except (ConnectionError, ssl.SSLError):
            pass
        except Exception:
            log.exception("web: request failed")
        finally:
            self._connections -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def _request(self, head: bytes, writer) -> bool:
        """Answer one request; False when the connection should close."""
        self.stats["requests"] += 1
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
        except ValueError:
            await self._send(writer, 400, b"malformed request\n", "text/plain", close=True)
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query)
        path = urllib.parse.unquote(url.path)
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"this UI is read-only: GET only\n", "text/plain", close=True,
                             extra=[("Allow", "GET, HEAD")])
            return False
        if "content-length" in headers or "transfer-encoding" in headers:
            await self._send(writer, 400, b"a GET has no body\n", "text/plain", close=True)
            return False
        token = (query.get("token") or [""])[0]
        if token and path in PAGES or token and path.startswith("/host/"):
            if self._token_ok(token):  # remember it, and take it out of the address bar
                cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if self.ssl_context else "")
                rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
                await self._send(writer, 303, b"", "text/plain", keep=keep,
                                 extra=[("Set-Cookie", cookie), ("Location", url.path + ("?" + rest if rest else ""))])
                return keep
        # The pages' code is public (it ships in the wheel); what they show needs a token.
        if not path.startswith("/static/") and not self._authorized(headers, writer):
            self.stats["unauthorized"] += 1
            await self._unauthorized(writer, path, keep)
            return keep
        try:
            if path.startswith("/api/live"):
                await self._live(writer, query)
                return False
            status, body, kind = await self._route(path, query)
        except HTTPError as e:
            status, body, kind = e.status, json.dumps({"error": e.message}).encode(), "application/json"
        await self._send(writer, status, b"" if method == "HEAD" else body, kind, keep=keep,
                         length=len(body))
        return keep

    def _token_ok(self, token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), t) for t in self.tokens)

    def _authorized(self, headers: dict, writer) -> bool:
        if not self.tokens and self.ssl_context is None:
            return True  # plaintext on loopback with no tokens configured (checked by settings)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._token_ok(token):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self._token_ok(value):
                return True
        sslobj = writer.get_extra_info("ssl_object")
        # A certificate is asked for only when web.client_ca is set, and then verified.
        return bool(sslobj is not None and self.ssl_context.verify_mode != ssl.CERT_NONE and sslobj.getpeercert())

    async def _unauthorized(self, writer, path: str, keep: bool) -> None:
        if path.startswith("/api/"):
            body, kind = b'{"error":"a consumer token is needed (authorization: Bearer TOKEN)"}', "application/json"
        else:
            body, kind = self.static["login.html"][0], "text/html; charset=utf-8"
        await self._send(writer, 401, body, kind, keep=keep, extra=[("WWW-Authenticate", 'Bearer realm="egs-collector"')])

    async def _send(self, writer, status: int, body: bytes, kind: str, keep: bool = False, close: bool = False,
                    extra: list | None = None, length: int | None = None) -> None:
        head = [f"HTTP/1.1 {status} {REASONS.get(status, '')}", f"Content-Type: {kind}",
                f"Content-Length: {len(body) if length is None else length}",
                "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                "Content-Security-Policy: default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
                "Connection: " + ("keep-alive" if keep and not close else "close")]
        head += [f"{k}: {v}" for k, v in extra or ()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    # --- routes -----------------------------------------------------------------------------

    async def _route(self, path: str, query: dict) -> tuple[int, bytes, str]:
        if path in PAGES or path.startswith("/host/"):
            body, kind = self.static["host.html" if path.startswith("/host/") else PAGES[path]]
            return 200, body, kind
        if path.startswith("/static/"):
            found = self.static.get(path[len("/static/"):])
            if found is None:
                raise HTTPError(404, f"no such file {path}")
            return 200, *found
        js = "application/json"
        if path == "/api/fleet":
            await self.fleet.ensure_live()
            return 200, self.fleet.fleet_json().encode(), js
        if path == "/api/alarms":
            await self.fleet.ensure_live()
            return 200, json.dumps(self.fleet.alarm_list(_one(query, "host"))).encode(), js
        if path.startswith("/api/host/"):
            return 200, json.dumps(await self._host(path[len("/api/host/"):])).encode(), js
        if path == "/api/history":
            return 200, json.dumps(await self._history(query)).encode(), js
        if path == "/api/recording":
            return 200, json.dumps(await self._recording(query)).encode(), js
        raise HTTPError(404, f"no such page {path}")

    async def _host(self, name: str) -> dict:
        await self.fleet.ensure_live()
        loop = asyncio.get_running_loop()
        now = time.time()
        rows = await loop.run_in_executor(None, self.store.agents)
        row = next((r for r in rows if r["host"] == name), None)
        h = self.fleet.hosts.get(name)
        if row is None and h is None:
            raise HTTPError(404, f"no host {name!r} has sent anything")
        events = await loop.run_in_executor(None, lambda: self.store.events(now - ALARM_HISTORY_S, name, ["alarm", "health"]))
        recordings = await loop.run_in_executor(None, lambda: self.store.recordings(now - ALARM_HISTORY_S, name,
                                                                                     RECORDINGS_LISTED))
        sub = Subscription(collector_pb2.SubscribeRequest(hosts=[name]), 1)
        values = [_value(row_) for _, row_, _ in self.hub.snapshot(sub)]
        return {"now": now, "host": name, "view": json.loads(self.fleet.host_json(h)) if h else None,
                "agent": {k: v for k, v in (row or {}).items()}, "values": values,
                "events": events[-HOST_EVENTS:],
                "recordings": [_recording_head(r) for r in recordings],
                "alarms": self.fleet.alarm_list(name)}

    async def _history(self, query: dict) -> dict:
        host, metrics = _one(query, "host"), query.get("metric", [])
        if not host or not metrics or len(metrics) > HISTORY_METRICS:
            raise HTTPError(400, f"host and 1 to {HISTORY_METRICS} metric= are needed")
        try:
            span = float(_one(query, "seconds") or 900)
        except ValueError:
            raise HTTPError(400, "seconds must be a number") from None
        if not 0 < span <= HISTORY_MAX_S:
            raise HTTPError(400, f"seconds must be in (0, {HISTORY_MAX_S:g}]")
        resolution = _one(query, "resolution") or "10s"
        end = time.time()
        out = {"host": host, "start": end - span, "end": end, "metrics": {}}
        async with self._queries:
            for metric in metrics:
                try:
                    got, series = await asyncio.get_running_loop().run_in_executor(
                        None, lambda m=metric: self.store.query(m, host, {}, end - span, end, resolution, 10000, self.bounds))
                except ValueError as e:
                    raise HTTPError(400, str(e)) from None
                except QueryTooLarge as e:
                    raise HTTPError(429, str(e)) from None
                except Exception as e:  # an engine that does not answer
                    raise HTTPError(503, f"the store cannot answer: {e}") from None
                out["resolution"] = got
                out["metrics"][metric] = [{"labels": s.labels, "points": [list(p) for p in s.points]} for s in series]
        return out

    async def _recording(self, query: dict) -> dict:
        host, rid = _one(query, "host"), _one(query, "id")
        found = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.store.recordings(time.time() - ALARM_HISTORY_S, host, RECORDINGS_LISTED))
        for r in found:
            if r["data"].get("id") == rid:
                return r["data"]
        raise HTTPError(404, f"no recording {rid!r} of host {host!r} in the last day")

    # --- the live feed (server-sent events) ---------------------------------------------------

    async def _live(self, writer, query: dict) -> None:
        host = _one(query, "host") or None
        if len(self.fleet.pages) >= self.max_pages:
            raise HTTPError(503, f"{self.max_pages} live pages are open (web.max_pages)")
        await self.fleet.ensure_live()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: 2000\n\n")
        transport = writer.transport
        transport.set_write_buffer_limits(high=256 << 10)
        page = Page(host)
        if host:
            page.sub = self.hub.add(collector_pb2.SubscribeRequest(hosts=[host], event_kinds=["-"]), self.max_pending)
        self.fleet.pages.add(page)
        self.stats["pages_opened"] += 1
        try:
            while not transport.is_closing():
                try:
                    await asyncio.wait_for(page.wake.wait(), 15.0)
                except asyncio.TimeoutError:
                    writer.write(b": heartbeat\n\n")
                    await writer.drain()
                    continue
                page.wake.clear()
                if self.server is None or not self.server.is_serving():
                    return
                dirty, page.dirty = page.dirty, set()
                if host:
                    dirty &= {host}
                parts = []
                if dirty:
                    parts.append(b"event: fleet\ndata: " + self.fleet.changed_bytes(dirty) + b"\n\n")
                if page.alarms:
                    page.alarms = False
                    parts.append(b"event: alarms\ndata: " + json.dumps(self.fleet.alarm_list(host or "")).encode() + b"\n\n")
                if page.sub is not None:
                    samples, _ = page.sub.take(self.max_pending)
                    if samples:
                        values = [_value(row) for _, row, _ in samples]
                        parts.append(b"event: values\ndata: " + json.dumps(values).encode() + b"\n\n")
                parts.append(f"event: stats\ndata: {{\"coalesced\":{page.coalesced}}}\n\n".encode())
                writer.write(b"".join(parts))
                await writer.drain()  # a slow browser waits here; its changes pile up as one set
        finally:
            self.fleet.pages.discard(page)
            if page.sub is not None:
                self.hub.remove(page.sub)


def _one(query: dict, key: str) -> str:
    values = query.get(key) or [""]
    return values[0][:253]


def _value(row) -> list:
    return [row.metric, dict(row.labels), row.ts, row.last]


def _recording_head(r: dict) -> dict:
    data = r["data"]
    return {"received": r["received"], **{k: data.get(k) for k in ("id", "reason", "event_ts", "from", "to", "gpus",
                                                                    "truncated")}}
