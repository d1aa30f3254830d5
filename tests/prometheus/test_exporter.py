"""/metrics of a running agent on simulated GPUs: the format (checked by promtool and by
prometheus-client's parser), the names, the values against `status --json`, a lost GPU,
bad config, and the dcgm-exporter names."""
from __future__ import annotations

import math
import re
import socket
import time

from prometheus.scrapes import bcrypt_hash, parse_text, promtool_check, scrape
from daemon_helpers import cli, write_config

from agent.exposition import series_name
from agent.metrics import GPU_METRICS


def _gpu(labels: frozenset) -> str | None:
    return dict(labels).get("gpu")


def test_promtool_accepts_the_native_scrape_without_lint_findings(start_agent):
    agent = start_agent("two-nvidia-one-amd")
    status, headers, body = scrape(agent.url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    rc, out = promtool_check(body)
    assert (rc, out) == (0, "")
    names = {name for name, _ in parse_text(body)}
    # the catalogue's GPU metrics, health, read errors' absence (none failed) and own figures
    for metric in ("gpu_temperature_celsius", "gpu_power_watts", "gpu_energy_joules_total", "gpu_lost",
                   "gpu_health_state", "gpu_xid_errors_total", "cpu_utilization_percent",
                   "agent_sampler_rate_hertz", "agent_windows_series"):
        assert series_name(metric) in names, metric
    assert "# TYPE egs_gpu_energy_joules_total counter" in body.decode()
    assert "# HELP egs_gpu_power_watts Board power draw." in body.decode()


def test_openmetrics_when_the_scraper_asks_for_it(start_agent):
    agent = start_agent("two-nvidia-one-amd")
    status, headers, body = scrape(agent.url, accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "# UNIT egs_gpu_temperature_celsius celsius" in text
    assert "# TYPE egs_gpu_energy_joules counter" in text  # OpenMetrics names the family without _total
    assert re.search(r'^egs_gpu_energy_joules_total\{.*gpu="0".*\} \d', text, re.M)
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    assert {f.name for f in text_string_to_metric_families(text)} >= {"egs_gpu_temperature_celsius"}


def test_labels_are_the_gpus_and_the_agents(start_agent):
    agent = start_agent("two-nvidia-one-amd", agent='labels = { rack = "r7", host = "x" }')
    samples = parse_text(scrape(agent.url)[2])
    temps = [dict(labels) for name, labels in samples if name == "egs_gpu_temperature_celsius"]
    assert sorted(t["gpu"] for t in temps) == ["0", "1", "2"]
    assert {t["vendor"] for t in temps} == {"nvidia", "amd"}
    for t in temps:
        assert set(t) == {"gpu", "uuid", "vendor", "model", "rack", "host"} and t["rack"] == "r7"


def test_gpu_values_equal_status_json_of_the_same_tick(start_agent):
    """The scrape reads what status --json reads: with the constant scenario every GPU metric
    agrees exactly (the moving ones are compared in the Prometheus test)."""
    agent = start_agent("constant")
    doc = agent.wait_ticks(4)
    samples = parse_text(scrape(agent.url)[2])
    compared = 0
    for g in doc["gpus"]:
        for metric, value in g["metrics"].items():
            key = [v for (name, labels), v in samples.items()
                   if name == series_name(metric) and _gpu(labels) == str(g["index"])]
            if value is None:
                assert key == [], (metric, g["index"])
                continue
            if metric.endswith("_total"):
                continue  # energy keeps counting between the two reads
            assert key and math.isclose(key[0], value, rel_tol=1e-12), (metric, g["index"], key, value)
            compared += 1
    assert compared >= 20


def test_a_lost_gpu_shows_lost_and_no_stale_values(start_agent):
    agent = start_agent("nvidia-lost", prometheus="dcgm_names = true")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        doc = agent.status()
        if doc["gpus"][1]["state"] == "lost":
            break
        time.sleep(0.3)
    assert doc["gpus"][1]["state"] == "lost"
    samples = parse_text(scrape(agent.url)[2])
    by = {(name, _gpu(labels)): v for (name, labels), v in samples.items()}
    assert by[("egs_gpu_lost", "1")] == 1.0
    assert by[("egs_gpu_health_state", "1")] == 3.0
    assert by[("egs_gpu_lost", "0")] == 0.0
    for metric in GPU_METRICS:
        assert (series_name(metric), "1") not in by, metric
    assert ("egs_gpu_temperature_celsius", "0") in by
    assert ("DCGM_FI_DEV_GPU_TEMP", "0") in by and ("DCGM_FI_DEV_GPU_TEMP", "1") not in by


def test_dcgm_names_match_the_native_values_in_dcgm_units(start_agent):
    agent = start_agent("constant", prometheus="dcgm_names = true")
    samples = parse_text(scrape(agent.url)[2])
    by = {(name, _gpu(labels)): v for (name, labels), v in samples.items()}
    for gpu in ("0", "1", "2"):
        assert by[("DCGM_FI_DEV_GPU_TEMP", gpu)] == round(by[("egs_gpu_temperature_celsius", gpu)])
        assert by[("DCGM_FI_DEV_POWER_USAGE", gpu)] == by[("egs_gpu_power_watts", gpu)]
        assert by[("DCGM_FI_DEV_FB_USED", gpu)] == math.floor(by[("egs_gpu_memory_used_bytes", gpu)] / 2**20)
        assert by[("DCGM_FI_DEV_FB_FREE", gpu)] == math.floor(
            (by[("egs_gpu_memory_total_bytes", gpu)] - by[("egs_gpu_memory_used_bytes", gpu)]) / 2**20)
        assert by[("DCGM_FI_DEV_GPU_UTIL", gpu)] == round(by[("egs_gpu_utilization_percent", gpu)])
        assert by[("DCGM_FI_DEV_XID_ERRORS", gpu)] == 0
        # mJ from J; energy keeps counting between the two families' reads, so within a second's worth
        assert abs(by[("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu)] - 1000 * by[("egs_gpu_energy_joules_total", gpu)]) < 1e6
    labels = next(dict(l) for (n, l) in samples if n == "DCGM_FI_DEV_GPU_TEMP" and _gpu(l) == "0")
    assert set(labels) >= {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"}
    assert labels["device"] == "nvidia0" and labels["UUID"].startswith("GPU-")


def test_promtool_on_dcgm_names_reports_only_dcgm_exporters_own_label_style(start_agent):
    """dcgm-exporter's label modelName is camelCase, which promtool's linter flags; that is the
    one finding, and it is dcgm-exporter's (dashboards select on it), nothing of ours."""
    agent = start_agent("two-nvidia-one-amd", prometheus="dcgm_names = true\nnative_names = false")
    body = scrape(agent.url)[2]
    assert b"egs_" not in body
    rc, out = promtool_check(body)
    findings = {line.split(" ", 1)[1] for line in out.strip().splitlines()}
    assert findings == {"label names should be written in 'snake_case' not 'camelCase'"}, out
    assert rc == 3  # promtool's exit code for lint findings only (1 would be a format error)


def test_check_config_refuses_a_malformed_listen_address_with_exit_2(tmp_path):
    for bad in ("9473", "localhost", "127.0.0.1:99999", "127.0.0.1:0", "::1:9473", "host name:80"):
        config = write_config(tmp_path, extra=f'[prometheus]\nenabled = true\nlisten = "{bad}"\n')
        result = cli("check-config", str(config))
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert "prometheus.listen" in result.stderr and "not an address to listen on" in result.stderr, result.stderr


def test_a_port_in_use_is_a_clear_error_and_the_rest_of_the_agent_runs(start_agent):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        agent = start_agent("constant", port=port)
        doc = agent.status()
        assert doc["components"]["prometheus"]["state"] == "failed"
        error = doc["components"]["prometheus"]["error"]
        assert f"cannot listen on 127.0.0.1:{port} (prometheus.listen): the port is in use" in error
        assert "the port is in use" in agent.proc.log()
        assert doc["gpus"] and doc["sources"]["gpu"]["state"] == "ok"
    finally:
        holder.close()


def test_reload_moves_the_port_and_reads_the_web_config_again(start_agent, tmp_path):
    import signal

    from engines import free_port
    agent = start_agent("constant")
    config = agent.socket.parent / "agent.toml"
    new_port = free_port()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: {bcrypt_hash('pw')}\n")
    text = config.read_text().replace(f"127.0.0.1:{agent.port}", f"127.0.0.1:{new_port}")
    config.write_text(text.replace("[prometheus]\n", f'[prometheus]\nweb_config_file = "{web}"\n'))
    agent.proc.signal(signal.SIGHUP)
    url = f"http://127.0.0.1:{new_port}/metrics"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if scrape(url)[0] == 401:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert scrape(url)[0] == 401
    assert scrape(url, auth=("prom", "pw"))[0] == 200
    try:
        old = scrape(agent.url, timeout=2)[0]
    except OSError:
        old = None
    assert old is None  # the old port is closed


def test_concurrent_and_stalled_scrapers_never_hold_up_the_main_loop(start_agent):
    """Eight scrapers in a loop plus twenty connections that never finish their request: the
    main loop keeps ticking once a second and every scrape is answered (200, or 503 past
    the concurrency bound), never an error."""
    from concurrent.futures import ThreadPoolExecutor
    agent = start_agent("eight-nvidia", prometheus="max_concurrent_scrapes = 2\nclient_timeout = 30")
    stalled = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", agent.port))
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        stalled.append(s)
    try:
        before = agent.status()["agent"]["ticks"]
        started = time.monotonic()
        stop = time.monotonic() + 4

        def hammer():
            codes = []
            while time.monotonic() < stop:
                codes.append(scrape(agent.url)[0])
            return codes
        with ThreadPoolExecutor(8) as pool:
            codes = [c for f in [pool.submit(hammer) for _ in range(8)] for c in f.result()]
        elapsed = time.monotonic() - started
        after = agent.status()["agent"]["ticks"]
        assert set(codes) <= {200, 503} and codes.count(200) >= 8, set(codes)
        assert after - before >= int(elapsed) - 1, (before, after, elapsed)
    finally:
        for s in stalled:
            s.close()
