"""Who may see the web UI and what it may do, over HTTPS as deployed: a consumer token (header
or cookie) or a client certificate from web.client_ca opens it; nothing else does; nothing but
GET is served; a consumer token does not let anyone publish. And the pages' data on both
stores: the host page's history is what the collector's Query answers, embedded SQLite or
VictoriaMetrics through remote write."""
from __future__ import annotations

import http.client
import json
import ssl
import time

import grpc
import pytest

from agent.proto import collector_pb2
from agent.stream.client import PUBLISH
from agent.wire.columns import append_point
from collector_procs import TOKEN, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def tls_collector(tmp_path_factory, pki, web_collector_factory):
    pki.issue("operator", "operator")  # a browser's client certificate
    col = web_collector_factory(tmp_path_factory.mktemp("web-tls"), pki, plaintext=False,
                                web=f'client_ca = "{pki.root}/ca.crt"\n').start()
    yield col
    col.stop()


def request(col, path: str, method: str = "GET", headers: dict | None = None, cert: str | None = None):
    ctx = ssl.create_default_context(cafile=str(col.pki.root / "ca.crt"))
    if cert:
        ctx.load_cert_chain(col.pki.root / f"{cert}.crt", col.pki.root / f"{cert}.key")
    conn = http.client.HTTPSConnection("localhost", col.web_port, context=ctx, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_without_a_token_every_page_and_api_answers_401(tls_collector):
    for path in ("/", "/alarms", "/host/h1", "/api/fleet", "/api/alarms", "/api/host/h1", "/api/live",
                 "/api/history?host=h1&metric=gpu_power_watts"):
        status, headers, body = request(tls_collector, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = request(tls_collector, "/api/fleet", headers={"Authorization": "Bearer not-the-token-0123456789"})
    assert status == 401
    status, _, _ = request(tls_collector, "/api/fleet", headers={"Cookie": "egs_token=not-the-token-0123456789"})
    assert status == 401


def test_a_consumer_token_or_a_client_certificate_opens_it(tls_collector):
    status, _, body = request(tls_collector, "/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["hosts"] == []
    status, _, _ = request(tls_collector, "/api/alarms", cert="operator")
    assert status == 200
    # ?token= on a page sets the cookie and sends the browser to the same page without it.
    status, headers, _ = request(tls_collector, f"/alarms?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/alarms"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    status, _, body = request(tls_collector, "/alarms", headers={"Cookie": cookie})
    assert status == 200 and b"<title>egs-collector: alarms" in body


def test_the_ui_serves_its_assets_from_the_package(tls_collector):
    status, headers, body = request(tls_collector, "/static/vendor/uPlot.iife.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"uPlot" in body
    status, _, body = request(tls_collector, "/static/vendor/uPlot.LICENSE")
    assert status == 200 and b"MIT" in body
    status, _, page = request(tls_collector, "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b"http" not in page.replace(b"http-equiv", b""), "a page must load nothing from elsewhere"
    assert request(tls_collector, "/static/../settings.py")[0] == 404


def test_nothing_but_get_is_served(tls_collector):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(tls_collector, "/api/fleet", method, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 405 and headers["Allow"] == "GET, HEAD"


def raw(col, data: bytes) -> bytes:
    """Bytes sent as they are (no client library's checks); what the server answers."""
    import socket
    ctx = ssl.create_default_context(cafile=str(col.pki.root / "ca.crt"))
    with socket.create_connection(("127.0.0.1", col.web_port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out


def test_a_request_past_the_bounds_gets_an_error_and_the_server_keeps_serving(tls_collector):
    huge = b"GET /api/fleet HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (20 << 10) + b"\r\n\r\n"
    assert raw(tls_collector, huge).startswith(b"HTTP/1.1 413 ")
    assert raw(tls_collector, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    with_body = f"GET /api/fleet HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 3\r\n\r\nabc".encode()
    assert raw(tls_collector, with_body).startswith(b"HTTP/1.1 400 ")
    assert request(tls_collector, "/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_history_parameters_out_of_bounds_get_400_naming_them_and_the_server_keeps_serving(tls_collector):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = "/api/history?host=h1&metric=gpu_power_watts"
    for bad, named in ((base + "&seconds=nan", "seconds"), (base + "&seconds=-1", "seconds"),
                       (base + "&seconds=1e300", "seconds"), (base + "&seconds=0", "seconds"),
                       (base + "&seconds=abc", "seconds"), ("/api/history?metric=gpu_power_watts", "host"),
                       ("/api/history?host=h1" + "&metric=gpu_power_watts" * 65, "metric"),
                       (base + "&resolution=7s", "resolution"), (base + "&resolution=" + "x" * 10_000, "resolution"),
                       ("/api/history?host=h1&metric=" + "m" * 10_000, "metric")):
        status, _, body = request(tls_collector, bad, headers=auth)
        assert status == 400, (bad[:80], status, body[:200])
        assert named in json.loads(body)["error"], (bad[:80], body[:200])
    status, _, body = request(tls_collector, base + "&seconds=60", headers=auth)
    assert status == 200 and json.loads(body)["metrics"] == {"gpu_power_watts": []}


def test_a_consumer_token_cannot_publish(tls_collector):
    col = tls_collector
    batch = collector_pb2.Batch(host_id="intruder", epoch=1, seq=1, created=time.time())
    append_point(batch, "gpu_power_watts", {"gpu": "0"}, ts=float(int(time.time())), count=1, sum=1, min=1, max=1, last=1)
    creds = grpc.ssl_channel_credentials((col.pki.root / "ca.crt").read_bytes())  # TLS, no client certificate
    with grpc.secure_channel(f"127.0.0.1:{col.ingest_port}", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        call = ch.stream_stream(PUBLISH, request_serializer=collector_pb2.Batch.SerializeToString,
                                response_deserializer=collector_pb2.Ack.FromString)
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([batch]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10))
    assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    assert not any(a.host == "intruder" for a in col.agents().agents)


@pytest.mark.parametrize("backend", ["sqlite", "victoria-metrics"])
def test_the_host_pages_history_is_what_query_answers_on_both_stores(backend, request_, tmp_path, pki,
                                                                     web_collector_factory, agent_factory):
    store = ""
    if backend == "victoria-metrics":
        vm = request_.getfixturevalue("victoria_metrics")
        store = f'backend = "remote_write"\nremote_write_url = "{vm.write_url}"\nquery_url = "{vm.query_url}"\n'
    col = web_collector_factory(tmp_path / "c", pki, store=store).start()
    try:
        agent = agent_factory("web-h", [f"127.0.0.1:{col.ingest_port}"], plaintext=True)
        agent.start(first=1, count=100_000, rate=5)
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def history():
            return _get(col, "/api/history?host=web-h&metric=test_marker&seconds=900&resolution=raw", headers)
        got = wait_for(lambda: (h := history()) and h["metrics"]["test_marker"] and len(h["metrics"]["test_marker"][0]["points"]) >= 5 and h,
                       timeout=30, what="five stored markers in the page's history")
        with col.consumer_channel() as ch:
            answer = col.stub(ch).Query(collector_pb2.QueryRequest(metric="test_marker", host="web-h", start=got["start"],
                                                                    end=got["end"], resolution="raw"),
                                        metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
        (series,) = got["metrics"]["test_marker"]
        (expected,) = answer.series
        assert series["points"] == [[p.ts, p.count, p.sum, p.min, p.max, p.last] for p in expected.points]
        host = _get(col, "/api/host/web-h", headers)
        assert host["agent"]["host"] == "web-h" and host["view"]["state"] == "connected"
    finally:
        col.stop()


@pytest.fixture
def request_(request):
    return request


def _get(col, path: str, headers: dict):
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{col.web_port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())
