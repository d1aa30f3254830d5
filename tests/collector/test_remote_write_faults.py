"""The remote-write store under faults, with real processes: the collector, agents
(`drive_agent.py`, one `test_marker` point per batch, its value the batch's marker) and a real
VictoriaMetrics or Prometheus (tests/engines.py). What counts is what the engine itself holds:
every marker an agent spooled, each exactly once."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

import engines
from collector_procs import REPO, CollectorProc

pytestmark = pytest.mark.slow

ENGINES = {"victoria-metrics": engines.VictoriaMetrics, "prometheus": engines.Prometheus}


def _engine(kind: str, tmp_path, **kw):
    cls = ENGINES[kind]
    if engines.find_binary(cls.binary_name) is None:
        pytest.skip(f"{cls.binary_name} is not installed (make system-deps installs it as root)")
    return cls(tmp_path / kind, **kw)


def store_section(engine, extra: str = "") -> str:
    return (f'[store]\nbackend = "remote_write"\nremote_write_url = "{engine.write_url}"\n'
            f'query_url = "{engine.query_url}"\nremote_retry = "2s"\nremote_timeout = "3s"\n{extra}')


def engine_markers(engine, host: str) -> list[int]:
    """Every `test_marker` sample the engine holds for `host` in the last hour (as stored:
    a sample stored twice is there twice)."""
    if hasattr(engine, "flush"):
        engine.flush()
    found = engines.promql(engine.url, f'egs_test_marker{{host="{host}"}}[1h]', time=time.time() + 1)
    return sorted(int(float(v)) for r in found for _, v in r["values"])


def engine_count(engine, host: str) -> int:
    """The engine's own count of those samples (count_over_time)."""
    found = engines.promql(engine.url, f'count_over_time(egs_test_marker{{host="{host}"}}[1h])', time=time.time() + 1)
    return sum(int(float(r["value"][1])) for r in found)


def drained(agent, engine, host: str, n: int):
    return agent.status().get("backlog") == 0 and len(engine_markers(engine, host)) >= n


def test_engine_down_at_start_the_collector_waits_and_loses_nothing(tmp_path, collector_factory, agent_factory, wait):
    engine = _engine("victoria-metrics", tmp_path, port=engines.free_port())
    col = collector_factory(plaintext=True, extra=store_section(engine)).start()  # the engine is not there
    try:
        assert "unavailable" in col.agents().store
        agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 150, rate=50)
        wait(lambda: len(agent.spooled()) >= 50, what="the agent to spool while the engine is down")
        assert agent.status().get("backlog", 0) > 0  # nothing acknowledged: nothing stored yet
        engine.start()
        wait(lambda: drained(agent, engine, "host-a", 150), timeout=60, what="the backlog to reach the engine")
        assert engine_markers(engine, "host-a") == list(range(1, 151))
        assert engine_count(engine, "host-a") == 150
        wait(lambda: col.agents().store.endswith(": ok"), what="the store to say it is ok")
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_engine_killed_mid_stream_nothing_acknowledged_is_lost_nor_doubled(kind, tmp_path, collector_factory,
                                                                           agent_factory, wait):
    engine = _engine(kind, tmp_path).start()
    try:
        col = collector_factory(plaintext=True, extra=store_section(engine)).start()
        agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 400, rate=50)
        wait(lambda: len(engine_markers(engine, "host-a")) >= 60, timeout=30, what="the first markers in the engine")
        engine.kill9()
        wait(lambda: "unavailable" in col.agents().store, timeout=30, what="the collector to see the engine down")
        time.sleep(1.0)
        engine.restart()
        wait(lambda: drained(agent, engine, "host-a", 400), timeout=90, what="the backlog to drain into the engine")
        assert engine_markers(engine, "host-a") == list(range(1, 401))
        assert engine_count(engine, "host-a") == 400
    finally:
        engine.stop()


def test_a_slow_engine_slows_the_acks_the_spool_holds_and_nothing_is_lost(tmp_path, collector_factory,
                                                                          agent_factory, wait):
    engine = _engine("victoria-metrics", tmp_path).start()
    proxy = engines.DelayProxy("127.0.0.1", engine.port, delay_s=0.5)
    try:
        slow = f"http://127.0.0.1:{proxy.port}"
        col = collector_factory(plaintext=True, extra=(
            f'[store]\nbackend = "remote_write"\nremote_write_url = "{slow}/api/v1/write"\n'
            f'query_url = "{engine.query_url}"\nremote_timeout = "5s"\n')).start()
        agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 200, rate=50)
        backlog = wait(lambda: agent.status().get("backlog", 0) >= 20, timeout=30, what="a backlog behind the slow engine")
        assert backlog
        rss = _rss_kib(col.proc.pid)
        proxy.delay_s = 0.0
        wait(lambda: drained(agent, engine, "host-a", 200), timeout=60, what="the backlog to drain")
        assert engine_markers(engine, "host-a") == list(range(1, 201))
        assert rss < 400 * 1024, f"collector RSS {rss} KiB while the engine was slow"
    finally:
        proxy.close()
        engine.stop()


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _run_collector(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.collector.cli", "run", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_wrong_write_url_stops_the_start_with_exit_1_naming_it(tmp_path, victoria_metrics):
    col = CollectorProc(tmp_path / "c", None, plaintext=True, extra=(
        f'[store]\nbackend = "remote_write"\nremote_write_url = "{victoria_metrics.url}/api/v1/nowhere"\n'
        f'query_url = "{victoria_metrics.query_url}"\n'))
    done = _run_collector(col.config)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{victoria_metrics.url}/api/v1/nowhere" in done.stderr and "refused a remote write" in done.stderr


def test_a_wrong_query_url_stops_the_start_with_exit_1_naming_it(tmp_path, victoria_metrics):
    col = CollectorProc(tmp_path / "c", None, plaintext=True, extra=(
        f'[store]\nbackend = "remote_write"\nremote_write_url = "{victoria_metrics.write_url}"\n'
        f'query_url = "{victoria_metrics.url}/api/v1/query"\n'))
    done = _run_collector(col.config)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "store.query_url" in done.stderr and "refused a query" in done.stderr


def test_basic_auth_wrong_password_exit_1_right_password_stores(tmp_path, collector_factory, agent_factory, wait):
    engine = _engine("victoria-metrics", tmp_path, extra_args=["-httpAuth.username=egs", "-httpAuth.password=s3cret"])
    engine.start()
    try:
        (tmp_path / "wrong").write_text("nope\n")
        (tmp_path / "right").write_text("s3cret\n")
        auth = f'basic_auth_user = "egs"\nbasic_auth_password_file = "{tmp_path / "wrong"}"\n'
        col = CollectorProc(tmp_path / "c", None, plaintext=True, extra=store_section(engine, auth))
        done = _run_collector(col.config)
        assert done.returncode == 1 and "401" in done.stderr and "basic_auth" in done.stderr, done.stderr[-2000:]
        auth = f'basic_auth_user = "egs"\nbasic_auth_password_file = "{tmp_path / "right"}"\n'
        col = collector_factory(plaintext=True, extra=store_section(engine, auth)).start()
        agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(1, 20, rate=50)
        wait(lambda: agent.status().get("backlog") == 0 and len(agent.spooled()) == 20, what="20 batches acknowledged")
        # VictoriaMetrics makes a write searchable within about a second.
        markers = wait(lambda: m if len(m := _markers(_query_cli(col, "test_marker"))) >= 20 else None,
                       what="the markers through egs-collector query")
        assert markers == list(range(1, 21))
    finally:
        engine.stop()


def _markers(answer: dict) -> list[int]:
    return sorted(int(p["last"]) for s in answer["series"] for p in s["points"])


def _query_cli(col, metric: str) -> dict:
    import json
    import os
    done = subprocess.run([sys.executable, "-m", "agent.collector.cli", "query", metric, "--since", "10m",
                           "--resolution", "raw", "--json", "--target", f"127.0.0.1:{col.consumer_port}",
                           "--plaintext"], env={**os.environ, "EGS_COLLECTOR_TOKEN": col.token},
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
