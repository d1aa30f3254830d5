"""The test helpers for real time-series engines (tests/engines.py) checked on their own: the
engines start on loopback, take remote write and import, answer PromQL, keep their data over a
restart and a kill -9, keep one copy of a replayed sample, and the DelayProxy delays, refuses
and closes cleanly. The engine tests skip where the binaries are not installed."""
from __future__ import annotations

import functools
import http.client
import http.server
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

import engines
from engines import DelayProxy, count_samples, promql, remote_write, series_counts, wait_samples

pytestmark = pytest.mark.timeout(60)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _series(name: str, host: str, samples):
    return [({"__name__": name, "host": host, "gpu": "0"}, samples)]


@pytest.fixture(params=["victoria_metrics", "prometheus_engine"])
def engine(request):
    return request.getfixturevalue(request.param)


# --- the engines ------------------------------------------------------------------------------

def test_engine_is_on_loopback_with_its_data_and_log_in_tmpdir(engine, tmp_path):
    assert engine.url.startswith("http://127.0.0.1:") and engine.port > 0
    assert engine.write_url == engine.url + "/api/v1/write"
    assert engine.query_url == engine.url
    assert engine.data.is_relative_to(tmp_path) and any(engine.data.iterdir())
    assert engine.log.is_relative_to(tmp_path) and "starting" in engine.log_tail()


def test_remote_write_reads_back_and_a_replay_stores_no_second_copy(engine):
    now = _now_ms()
    samples = [(now - 3000, 1.5), (now - 2000, 2.5), (now - 1000, 3.5)]
    assert remote_write(engine.write_url, _series("egs_rw_test", "h1", samples))[0] == 204
    assert wait_samples(engine, 'egs_rw_test{host="h1"}', (now - 3000) / 1000, now / 1000, 3) == 3
    # The whole batch again (an agent's replay after a lost ack), then one sample of it alone.
    assert remote_write(engine.write_url, _series("egs_rw_test", "h1", samples))[0] == 204
    assert remote_write(engine.write_url, _series("egs_rw_test", "h1", samples[:1]))[0] == 204
    # A later sample written after the replays proves they were processed before we count.
    assert remote_write(engine.write_url, _series("egs_rw_test", "h1", [(now, 4.5)]))[0] == 204
    wait_samples(engine, 'egs_rw_test{host="h1"}', (now - 3000) / 1000, now / 1000, 4)
    time.sleep(0.5)
    engine.flush()
    counts = series_counts(engine.query_url, 'egs_rw_test{host="h1"}', (now - 3000) / 1000, now / 1000)
    assert counts == {frozenset({("host", "h1"), ("gpu", "0")}): 4}  # count_over_time drops __name__
    # The window's edges are inclusive, to the millisecond.
    assert count_samples(engine.query_url, "egs_rw_test", (now - 2999) / 1000, (now - 1000) / 1000) == 2
    (point,) = promql(engine.query_url, 'egs_rw_test{host="h1"}', time=(now - 2000) / 1000)
    assert float(point["value"][1]) == 2.5 and point["metric"]["gpu"] == "0"


def test_an_out_of_order_sample_is_accepted_within_the_window(engine):
    now = _now_ms()
    assert remote_write(engine.write_url, _series("egs_ooo_test", "h1", [(now, 1.0)]))[0] == 204
    wait_samples(engine, "egs_ooo_test", now / 1000 - 1, now / 1000, 1)
    hour_ago = now - 3600 * 1000
    status, body = remote_write(engine.write_url, _series("egs_ooo_test", "h1", [(hour_ago, 2.0)]))
    assert status == 204, body
    assert wait_samples(engine, "egs_ooo_test", hour_ago / 1000, now / 1000, 2) == 2


def test_restart_keeps_the_data_and_the_port(engine):
    now = _now_ms()
    remote_write(engine.write_url, _series("egs_restart_test", "h1", [(now - 1000, 1.0), (now, 2.0)]))
    wait_samples(engine, "egs_restart_test", now / 1000 - 1, now / 1000, 2)
    port, pid = engine.port, engine.proc.pid
    engine.restart()
    assert engine.port == port and engine.proc.pid != pid
    assert count_samples(engine.query_url, "egs_restart_test", now / 1000 - 1, now / 1000) == 2


def test_kill9_then_restart(engine):
    now = _now_ms()
    remote_write(engine.write_url, _series("egs_kill_test", "settled", [(now - 1000, 1.0)]))
    wait_samples(engine, "egs_kill_test", now / 1000 - 1, now / 1000, 1)
    engine.restart()                                    # a clean stop puts it on disk on either engine
    remote_write(engine.write_url, _series("egs_kill_test", "fresh", [(now, 2.0)]))
    pid = engine.proc.pid
    engine.kill9()
    assert not engine.running
    with pytest.raises(OSError):
        urllib.request.urlopen(engine.url + engine.ready_path, timeout=2)
    engine.restart()
    assert engine.proc.pid != pid
    got = series_counts(engine.query_url, "egs_kill_test", now / 1000 - 1, now / 1000)
    hosts = {dict(k)["host"] for k in got}
    assert "settled" in hosts
    if isinstance(engine, engines.Prometheus):
        # Its WAL has every sample it acknowledged. VictoriaMetrics 1.79 does not: a kill -9
        # loses what it took in the last several seconds (see engines.VictoriaMetrics).
        assert hosts == {"settled", "fresh"}
    assert remote_write(engine.write_url, _series("egs_kill_test", "after", [(now, 3.0)]))[0] == 204


def test_a_fixed_port_in_use_is_a_clear_error(tmp_path):
    if engines.find_binary("victoria-metrics") is None:
        pytest.skip("victoria-metrics is not installed (make system-deps installs it as root)")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        vm = engines.VictoriaMetrics(tmp_path / "vm", port=squatter.getsockname()[1])
        with pytest.raises(engines.EngineError, match="address already in use"):
            vm.start(timeout=10)
        assert not vm.running


def test_a_port_lost_between_picking_and_binding_is_retried(tmp_path, monkeypatch):
    if engines.find_binary("victoria-metrics") is None:
        pytest.skip("victoria-metrics is not installed (make system-deps installs it as root)")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real = engines.free_port
        monkeypatch.setattr(engines, "free_port", lambda: next(picks, None) or real())
        vm = engines.VictoriaMetrics(tmp_path / "vm")
        try:
            vm.start()
            assert vm.port != taken and vm.running
            assert "address already in use" in vm.log.read_text()
        finally:
            vm.stop()
        assert not vm.running


def test_victoria_metrics_import_text(victoria_metrics):
    now = _now_ms()
    lines = [f'egs_import_test{{host="h{i % 2}"}} {i} {now - 1000 * i}' for i in range(4)]
    victoria_metrics.import_text("\n".join(lines + lines[:1]) + "\n")  # the first line twice
    assert wait_samples(victoria_metrics, "egs_import_test", now / 1000 - 3, now / 1000, 4) == 4
    time.sleep(0.3)
    assert series_counts(victoria_metrics.query_url, "egs_import_test", now / 1000 - 3, now / 1000) == {
        frozenset({("host", "h0")}): 2, frozenset({("host", "h1")}): 2}


def test_a_bad_query_raises_with_the_engines_reason(engine):
    with pytest.raises(engines.EngineError, match="bad_data|parse|error"):
        promql(engine.query_url, "sum(")


# --- the DelayProxy ---------------------------------------------------------------------------

@pytest.fixture
def http_target(tmp_path):
    """A plain HTTP server on loopback whose "/hello" answers b"hello"; yields its port."""
    (tmp_path / "hello").write_bytes(b"hello")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _get(url: str, timeout: float = 10.0) -> tuple[float, bytes]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return time.monotonic() - t0, resp.read()


def test_proxy_delays_each_way_by_at_least_the_delay_and_the_delay_can_change(http_target):
    with DelayProxy("127.0.0.1", http_target, delay_s=0.3) as proxy:
        elapsed, body = _get(proxy.url + "/hello")
        assert body == b"hello" and elapsed >= 0.6  # the request held once, the answer once
        proxy.set_delay(0)
        elapsed, _ = _get(proxy.url + "/hello")
        assert elapsed < 0.3
        proxy.direction = "down"
        proxy.set_delay(0.2)
        elapsed, _ = _get(proxy.url + "/hello")
        assert 0.2 <= elapsed < 1.0


def test_proxy_refuses_and_resumes(http_target):
    with DelayProxy("127.0.0.1", http_target) as proxy:
        assert _get(proxy.url + "/hello")[1] == b"hello"
        proxy.refuse()
        with pytest.raises((OSError, urllib.error.URLError)):
            _get(proxy.url + "/hello", timeout=3)
        assert proxy.refused >= 1
        proxy.resume()
        assert _get(proxy.url + "/hello")[1] == b"hello"


def test_proxy_drop_closes_open_connections(http_target):
    with DelayProxy("127.0.0.1", http_target, delay_s=5) as proxy:
        t0 = time.monotonic()
        threading.Timer(0.3, proxy.refuse, kwargs={"drop": True}).start()
        with pytest.raises((OSError, urllib.error.URLError, http.client.HTTPException)):
            _get(proxy.url + "/hello", timeout=10)
        assert time.monotonic() - t0 < 4  # dropped, not answered after the delay


def test_proxy_to_a_dead_target_closes_the_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        with DelayProxy("127.0.0.1", dead) as proxy:
            with pytest.raises((OSError, urllib.error.URLError, http.client.HTTPException)):
                _get(proxy.url + "/hello", timeout=3)


def test_proxy_bounds_its_threads_and_closes_cleanly(http_target):
    before = threading.active_count()
    proxy = DelayProxy("127.0.0.1", http_target, delay_s=0.5, max_connections=2)
    clients = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(5)]
    for c in clients:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    while proxy.accepted + proxy.refused < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.accepted == 2 and proxy.refused == 3
    assert threading.active_count() <= before + 1 + 2 * 2 + 2  # acceptor, two pumps each, target's
    t0 = time.monotonic()
    proxy.close()                                      # wakes the pumps sleeping in their delay
    assert time.monotonic() - t0 < 3
    for c in clients:
        c.close()
    assert proxy.open_connections == 0
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
