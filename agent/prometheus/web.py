"""The HTTP(S) server behind /metrics, with the Prometheus exporter-toolkit's web config.

The web config file is the one node_exporter, dcgm-exporter and every exporter built on
prometheus/exporter-toolkit read (`--web.config.file`), so an operator's existing file
works here too:

    tls_server_config:
      cert_file: /etc/egs-agent/tls/metrics.crt
      key_file: /etc/egs-agent/tls/metrics.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: /etc/egs-agent/tls/ca.crt      # optional
      min_version: TLS12                             # optional
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt, as `htpasswd -nBC 10 ""` prints

Only that block-style subset of YAML is read (two levels of `key: value`), and every key
the toolkit has that this server does not implement (cipher_suites, http2, headers, ...) is
refused by name rather than ignored. bcrypt hashes are checked with the system's
libcrypt (libxcrypt, which every Debian system has: `crypt(3)` supports $2a$/$2b$/$2y$), and
a good (user, password) pair is remembered by its SHA-256, as the toolkit caches it, so a
scrape every second does not pay bcrypt's deliberate cost every time.

Bounds: at most `max_concurrent` requests are answered at once (one more gets 503 at once),
each connection has `client_timeout` to send its request and read the answer (a stalled
scraper is dropped, it never holds a thread for long), and the answer is built before it is
written, so a slow reader never holds anything the daemon needs.
"""
from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

log = logging.getLogger("egs-agent.prometheus")

TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
MAX_WEB_CONFIG_BYTES = 1 << 16
MAX_CONNECTIONS = 64  # open connections (threads) at once, scrapes and idle keep-alives together


class WebConfigError(Exception):
    """A web config file this server cannot honour; the message names the file and line."""


@dataclass
class WebConfig:
    tls: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # user -> bcrypt hash

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.tls.get("min_version", "TLS12")]
        if "max_version" in self.tls:
            ctx.maximum_version = TLS_VERSIONS[self.tls["max_version"]]
        ctx.load_cert_chain(self.tls["cert_file"], self.tls["key_file"])
        ctx.verify_mode = CLIENT_AUTH[self.tls.get("client_auth_type", "NoClientCert")]
        if self.tls.get("client_ca_file"):
            ctx.load_verify_locations(self.tls["client_ca_file"])
        return ctx


def _scalar(text: str, where: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith(("'", '"', "[", "{", "&", "*", "!", "|", ">")):
        raise WebConfigError(f"{where}: only plain or quoted single-line values are read, got {text[:40]!r}")
    return text.split(" #", 1)[0].strip()


def parse_web_config(text: str, file: str = "<web config>") -> WebConfig:
    """The exporter-toolkit web config: `tls_server_config` and `basic_auth_users`."""
    cfg = WebConfig()
    section: str | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        where = f"{file}:{number}"
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "---":
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise WebConfigError(f"{where}: indent with spaces (YAML has no tabs)")
        key, colon, rest = line.strip().partition(":")
        if not colon:
            raise WebConfigError(f"{where}: expected 'key: value', got {line.strip()[:60]!r}")
        key = _scalar(key, where)
        indented = line[0] == " "
        if not indented:
            if rest.strip() not in ("", "{}", "null", "~"):
                raise WebConfigError(f"{where}: {key} must be a mapping")
            if key not in ("tls_server_config", "basic_auth_users"):
                raise WebConfigError(f"{where}: {key} is not supported here (tls_server_config and "
                                     "basic_auth_users are)")
            section = key
            continue
        if section is None:
            raise WebConfigError(f"{where}: indented key {key!r} outside a section")
        value = _scalar(rest, where)
        if section == "tls_server_config":
            if key not in TLS_KEYS:
                raise WebConfigError(f"{where}: tls_server_config.{key} is not supported here "
                                     f"(supported: {', '.join(sorted(TLS_KEYS))})")
            cfg.tls[key] = value
        else:
            if not value.startswith(("$2a$", "$2b$", "$2y$")):
                raise WebConfigError(f"{where}: basic_auth_users.{key}: the password must be a bcrypt hash "
                                     "($2a$, $2b$ or $2y$; `htpasswd -nBC 10 \"\" | tr -d ':'` makes one)")
            cfg.users[key] = value
    if cfg.tls:
        for needed in ("cert_file", "key_file"):
            if not cfg.tls.get(needed):
                raise WebConfigError(f"{file}: tls_server_config needs {needed}")
        auth = cfg.tls.get("client_auth_type", "NoClientCert")
        if auth not in CLIENT_AUTH:
            raise WebConfigError(f"{file}: client_auth_type {auth!r} is not supported (supported: "
                                 f"{', '.join(CLIENT_AUTH)}; RequestClientCert and RequireAnyClientCert accept "
                                 "certificates nobody verified)")
        if auth != "NoClientCert" and not cfg.tls.get("client_ca_file"):
            raise WebConfigError(f"{file}: client_auth_type {auth} needs client_ca_file")
        for key in ("min_version", "max_version"):
            if key in cfg.tls and cfg.tls[key] not in TLS_VERSIONS:
                raise WebConfigError(f"{file}: {key} must be one of {', '.join(TLS_VERSIONS)}")
    return cfg


def load_web_config(path: str) -> WebConfig:
    """The file at `path` (empty: no TLS, no authentication), with its TLS files loaded once
    to fail here, at start, rather than at the first scrape."""
    if not path:
        return WebConfig()
    try:
        data = Path(path).read_bytes()[: MAX_WEB_CONFIG_BYTES + 1]
    except OSError as e:
        raise WebConfigError(f"{path}: cannot read the web config file: {e.strerror or e}") from None
    if len(data) > MAX_WEB_CONFIG_BYTES:
        raise WebConfigError(f"{path}: a web config file is at most {MAX_WEB_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WebConfigError(f"{path}: not UTF-8 ({e})") from None
    cfg = parse_web_config(text, path)
    try:
        cfg.ssl_context()
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"{path}: the TLS files cannot be used: {e}") from None
    if cfg.users and not crypt_available():
        raise WebConfigError(f"{path}: basic_auth_users needs the system's libcrypt (libcrypt.so.1), not found")
    return cfg


# --- bcrypt through libcrypt ---------------------------------------------------------------

_crypt_lib = None
_crypt_lock = threading.Lock()  # crypt(3) returns a static buffer


def crypt_available() -> bool:
    return _libcrypt() is not None


def _libcrypt():
    global _crypt_lib
    if _crypt_lib is None:
        name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
        try:
            lib = ctypes.CDLL(name)
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
        except (OSError, AttributeError):
            return None
        _crypt_lib = lib
    return _crypt_lib


def bcrypt_matches(password: bytes, hashed: str) -> bool:
    lib = _libcrypt()
    if lib is None or b"\0" in password:
        return False
    with _crypt_lock:
        out = lib.crypt(password, hashed.encode())
    return out is not None and hmac.compare_digest(out, hashed.encode())


class Authenticator:
    """Basic auth against bcrypt hashes; successes remembered by SHA-256 of the pair."""

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.users)

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed.encode()))).digest()
        with self._lock:
            if key in self._good:
                return True
        if not bcrypt_matches(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._good) > 1024:
                self._good.clear()
            self._good.add(key)
        return True


# --- the server ----------------------------------------------------------------------------

def bind_address(host: str) -> tuple[int, str]:
    """(address family, address) to bind for a `listen` host; "" is every address: a
    dual-stack IPv6 socket, or IPv4's 0.0.0.0 on a host without IPv6 (ipv6.disable=1)."""
    if host == "":
        if socket.has_ipv6:
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
                return socket.AF_INET6, "::"
            except OSError:
                pass
        return socket.AF_INET, "0.0.0.0"
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host


class MetricsServer(ThreadingHTTPServer):
    """`render(accept_header) -> (body, content_type)` answers GET /metrics."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, render: Callable[[str], tuple[bytes, str]],
                 web: WebConfig | None = None, max_concurrent: int = 4, client_timeout: float = 10.0):
        self.render = render
        self.web = web or WebConfig()
        self.auth = Authenticator(self.web.users)
        self.tls = self.web.ssl_context()
        self.client_timeout = client_timeout
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.stats = {"scrapes": 0, "refused_busy": 0, "unauthorized": 0, "errors": 0}
        self._conns = 0
        self._conns_lock = threading.Lock()
        self.address_family, bind = bind_address(host)
        try:
            super().__init__((bind, port), _Handler, bind_and_activate=False)
            if self.address_family == socket.AF_INET6:
                # ":port" means every address, IPv4 too (a dual-stack socket)
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "" else 1)
            self.server_bind()
            self.server_activate()
        except OSError as e:
            self.server_close()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if e.errno == 98:  # EADDRINUSE
                raise OSError(e.errno, f"cannot listen on {where} (prometheus.listen): the port is in use by "
                                       "another program (`ss -ltnp 'sport = :{port}'` names it); choose another "
                                       "port".replace("{port}", str(port))) from None
            raise OSError(e.errno, f"cannot listen on {where} (prometheus.listen): {e.strerror or e}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address) -> None:
        # One thread per connection, at most MAX_CONNECTIONS of them: a flood of idle
        # connections is closed at once rather than growing threads without bound.
        with self._conns_lock:
            if self._conns >= MAX_CONNECTIONS:
                self.stats["refused_busy"] += 1
                self.shutdown_request(request)
                return
            self._conns += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns -= 1

    def get_request(self):
        conn, addr = self.socket.accept()
        conn.settimeout(self.client_timeout)
        if self.tls is not None:
            # The handshake happens in the request's thread (its first read), never here.
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="egs-metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        # A scraper that hung up or failed the TLS handshake: one debug line, no traceback.
        self.stats["errors"] += 1
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"
    server_version = "egs-agent"

    def setup(self) -> None:
        self.timeout = self.server.client_timeout
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # in this thread, under the client timeout
        super().setup()

    def log_message(self, format: str, *args) -> None:  # access log: not to the journal
        pass

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        server = self.server
        if server.auth and not server.auth.check(self.headers.get("Authorization")):
            server.stats["unauthorized"] += 1
            self._send(401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="egs-agent"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, b"<html><head><title>egs-agent</title></head><body><h1>egs-agent</h1>"
                            b"<p><a href=\"/metrics\">Metrics</a></p></body></html>\n", "text/html; charset=utf-8")
            return
        if path != "/metrics":
            self._send(404, b"Not Found: the metrics are at /metrics\n")
            return
        if not server.slots.acquire(blocking=False):
            server.stats["refused_busy"] += 1
            self._send(503, b"Too many concurrent scrapes; try again\n", headers={"Retry-After": "1"})
            return
        try:
            body, content_type = server.render(self.headers.get("Accept") or "")
        except Exception as e:
            server.stats["errors"] += 1
            log.exception("a scrape failed")
            self._send(500, f"scrape failed: {type(e).__name__}: {e}\n".encode())
            return
        finally:
            server.slots.release()
        server.stats["scrapes"] += 1
        self._send(200, body, content_type)
