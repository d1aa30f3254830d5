"""The HTTP side of a remote time-series engine (VictoriaMetrics, Prometheus, Mimir...): one
client for its remote-write and query endpoints, with the engine's auth and TLS.

`EngineClient.request` sends one request and sorts the outcome into what the store does next:
- `Answer` (any HTTP status; the body is bounded): 2xx accepted; 4xx refused for a reason the
  caller reads; 5xx and 429 the engine's own trouble (retry);
- `EngineDown` (connection refused, reset, timed out, TLS failure): retry.
Connections are kept alive per thread: the writer sends from one thread, queries come from
the collector's executor threads.
"""
from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

MAX_BODY = 256 << 20  # the largest answer read (a query's JSON); past it EngineDown


class EngineDown(Exception):
    """The engine did not answer (connection, timeout, TLS, a truncated answer)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    reason: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def retry(self) -> bool:
        """The engine's own trouble (5xx, 429 too many requests): the same request may pass later."""
        return self.status >= 500 or self.status == 429

    def text(self, limit: int = 300) -> str:
        body = self.body[:limit].decode("utf-8", "replace").strip().replace("\n", " ")
        return f"HTTP {self.status} {self.reason}".strip() + (f": {body}" if body else "")


@dataclass(frozen=True)
class Auth:
    """How the collector proves itself to the engine (`[store]` keys of the same names)."""
    bearer_token_file: str = ""
    basic_auth_user: str = ""
    basic_auth_password_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_insecure_skip_verify: bool = False
    tenant: str = ""  # X-Scope-OrgID, for multi-tenant engines (Mimir, Cortex, VictoriaMetrics cluster via vmauth)

    def header(self) -> str | None:
        """The Authorization header's value; files are read at each call so a rotated
        token is picked up at the next connection."""
        if self.bearer_token_file:
            return "Bearer " + Path(self.bearer_token_file).read_text().strip()
        if self.basic_auth_user:
            password = Path(self.basic_auth_password_file).read_text().strip() if self.basic_auth_password_file else ""
            pair = f"{self.basic_auth_user}:{password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.tls_ca or None)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        if self.tls_insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class EngineClient:
    """Requests to one engine base URL (scheme, host, port and an optional path prefix)."""

    def __init__(self, url: str, auth: Auth = Auth(), timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: an engine URL must be http:// or https:// with a host")
        self.url, self.auth, self.timeout = url, auth, timeout
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/") or ""
        self.query = parts.query
        self._ssl = auth.ssl_context() if parts.scheme == "https" else None
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str = "", body: bytes | None = None,
                headers: dict[str, str] | None = None, params: dict | list | None = None) -> Answer:
        """One request to `self.path + path` (the URL's own path alone when `path` is empty)."""
        target = self.path + path or "/"
        query = "&".join(q for q in (self.query, urllib.parse.urlencode(params or {}, doseq=True)) if q)
        if query:
            target += "?" + query
        all_headers = {"User-Agent": "egs-collector", **(headers or {})}
        try:
            authorization = self.auth.header()
        except OSError as e:
            raise EngineDown(f"cannot read the engine's credentials: {e}") from None
        if authorization:
            all_headers["Authorization"] = authorization
        if self.auth.tenant:
            all_headers["X-Scope-OrgID"] = self.auth.tenant
        for attempt in (1, 2):  # a kept-alive connection the engine closed meanwhile: once more
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read(MAX_BODY + 1)
                if len(data) > MAX_BODY:
                    self._drop()
                    raise EngineDown(f"the engine's answer is larger than {MAX_BODY} bytes")
                if response.will_close:
                    self._drop()
                return Answer(response.status, data, response.reason)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                if attempt == 2:
                    raise EngineDown(f"{self.describe()}: {type(e).__name__}: {e}") from None
            except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                self._drop()
                what = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else f"{type(e).__name__}: {e}"
                raise EngineDown(f"{self.describe()}: {what}") from None
        raise AssertionError("unreachable")

    def describe(self) -> str:
        return self.url

    def close(self) -> None:
        self._drop()
