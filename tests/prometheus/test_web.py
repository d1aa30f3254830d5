"""The /metrics HTTP server on its own: the exporter-toolkit web config (TLS, client
certificates, bcrypt basic auth), refusals of what it cannot honour, a port in use, and
the bounds on slow and concurrent scrapers."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from prometheus.scrapes import bcrypt_hash, scrape

from agent.prometheus.web import (Authenticator, MetricsServer, WebConfigError, load_web_config,
                                  parse_web_config)


def body_render(body: bytes = b"egs_up 1\n"):
    calls = []

    def render(accept: str):
        calls.append(accept)
        return body, "text/plain; version=0.0.4; charset=utf-8"
    render.calls = calls
    return render


@pytest.fixture
def servers():
    started = []

    def start(render=None, web=None, **kw) -> MetricsServer:
        server = MetricsServer("127.0.0.1", 0, render or body_render(), web, **kw)
        server.start()
        started.append(server)
        return server
    yield start
    for s in started:
        s.stop()


def test_plain_http_answers_metrics_and_404_elsewhere(servers):
    server = servers()
    status, headers, body = scrape(f"http://127.0.0.1:{server.port}/metrics")
    assert (status, body) == (200, b"egs_up 1\n")
    assert scrape(f"http://127.0.0.1:{server.port}/other")[0] == 404


def test_basic_auth_with_bcrypt_hashes(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(f"# exporter-toolkit format\nbasic_auth_users:\n  prometheus: {bcrypt_hash('s3cret')}\n"
                   f"  other: '{bcrypt_hash('pw2')}'\n")
    server = servers(web=load_web_config(str(web)))
    url = f"http://127.0.0.1:{server.port}/metrics"
    status, headers, _ = scrape(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert scrape(url, auth=("prometheus", "wrong"))[0] == 401
    assert scrape(url, auth=("nobody", "s3cret"))[0] == 401
    assert scrape(url, auth=("prometheus", "s3cret"))[0] == 200
    assert scrape(url, auth=("other", "pw2"))[0] == 200
    assert server.stats["unauthorized"] == 3


def test_the_remembered_good_password_does_not_let_a_wrong_one_in():
    auth = Authenticator({"u": bcrypt_hash("right")})
    import base64

    def header(p):
        return "Basic " + base64.b64encode(f"u:{p}".encode()).decode()
    assert auth.check(header("right")) and auth.check(header("right"))
    assert not auth.check(header("righ")) and not auth.check(header("right "))
    assert not auth.check("Basic !!!notbase64") and not auth.check(None) and not auth.check("Bearer x")


def test_tls_and_client_certificates(servers, pki, tmp_path):
    server_cert, server_key = pki.issue("metrics", "localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)
    client_cert, client_key = pki.issue("scraper", "prometheus")
    rogue_cert, rogue_key = pki.rogue("rogue", "prometheus")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n"
                   f"  cert_file: {server_cert}\n  key_file: {server_key}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.root / 'ca.crt'}\n"
                   "  min_version: TLS12\n")
    server = servers(web=load_web_config(str(web)))
    url = f"https://127.0.0.1:{server.port}/metrics"

    def client(cert=None, key=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.root / "ca.crt"))
        if cert:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx
    assert scrape(url, context=client(client_cert, client_key))[0] == 200
    for ctx in (client(), client(rogue_cert, rogue_key)):
        with pytest.raises(OSError):
            scrape(url, context=ctx)
    with pytest.raises(OSError):  # plain HTTP to the TLS port
        scrape(f"http://127.0.0.1:{server.port}/metrics", timeout=3)
    # the server is still serving after the failed handshakes
    assert scrape(url, context=client(client_cert, client_key))[0] == 200


@pytest.mark.parametrize("text, message", [
    ("tls_server_config:\n  cert_file: a\n", "needs key_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: x\n", "tls_server_config.cipher_suites is not supported"),
    ("http_server_config:\n  http2: false\n", "http_server_config is not supported"),
    ("basic_auth_users:\n  u: plaintext\n", "must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
     "RequireAnyClientCert"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
     "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS9\n", "min_version must be one of"),
    ("basic_auth_users:\n  u: [a, b]\n", "only plain or quoted single-line values"),
    ("  orphan: x\n", "outside a section"),
])
def test_web_config_refuses_what_it_cannot_honour_by_name(text, message):
    with pytest.raises(WebConfigError, match=message):
        parse_web_config(text, "web.yml")


def test_web_config_errors_name_the_file_and_line(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  a: $2y$10$x\n  b: nope\n")
    with pytest.raises(WebConfigError, match=r"web.yml:3: basic_auth_users.b"):
        load_web_config(str(web))
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(str(tmp_path / "absent.yml"))
    web.write_text(f"tls_server_config:\n  cert_file: {tmp_path}/no.crt\n  key_file: {tmp_path}/no.key\n")
    with pytest.raises(WebConfigError, match="TLS files cannot be used"):
        load_web_config(str(web))


def test_a_port_in_use_is_refused_with_the_address_and_the_reason():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(prometheus.listen\): the port is in use"):
            MetricsServer("127.0.0.1", port, body_render())
    finally:
        holder.close()


def test_a_scrape_past_the_concurrency_bound_gets_503_at_once(servers):
    release = threading.Event()
    entered = threading.Event()

    def slow(accept):
        entered.set()
        release.wait(10)
        return b"egs_up 1\n", "text/plain"
    server = servers(render=slow, max_concurrent=1)
    url = f"http://127.0.0.1:{server.port}/metrics"
    first = threading.Thread(target=scrape, args=(url,))
    first.start()
    assert entered.wait(5)
    started = time.monotonic()
    status, headers, _ = scrape(url)
    assert status == 503 and headers["Retry-After"] == "1"
    assert time.monotonic() - started < 2
    release.set()
    first.join(10)
    assert scrape(url)[0] == 200


def test_a_stalled_client_is_dropped_after_the_timeout_and_does_not_block_others(servers):
    server = servers(client_timeout=0.5)
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    try:
        assert scrape(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
        stalled.settimeout(5)
        started = time.monotonic()
        assert stalled.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 3
    finally:
        stalled.close()


def test_connections_beyond_the_bound_are_closed_not_queued(servers, monkeypatch):
    import agent.prometheus.web as web
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 3)
    server = servers(client_timeout=5)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.port))
        extra.settimeout(5)
        extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert extra.recv(100) == b""
        extra.close()
    finally:
        for s in idle:
            s.close()
    # once the idle ones are gone (their threads see the close), scrapes are served again
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if scrape(f"http://127.0.0.1:{server.port}/metrics")[0] == 200:
                break
        except OSError:  # still closed at once: the threads have not seen the close yet
            time.sleep(0.1)
    assert scrape(f"http://127.0.0.1:{server.port}/metrics")[0] == 200


def test_every_address_is_dual_stack_or_ipv4_without_ipv6(monkeypatch):
    from agent.prometheus import web
    server = MetricsServer("", 0, body_render())
    server.start()
    try:
        assert scrape(f"http://127.0.0.1:{server.port}/metrics")[0] == 200  # IPv4 on the dual-stack socket
    finally:
        server.stop()
    monkeypatch.setattr(web.socket, "has_ipv6", False)
    assert web.bind_address("") == (socket.AF_INET, "0.0.0.0")
    assert web.bind_address("::1") == (socket.AF_INET6, "::1")
    assert web.bind_address("127.0.0.1") == (socket.AF_INET, "127.0.0.1")
