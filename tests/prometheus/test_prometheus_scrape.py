"""A real Prometheus (Debian's) on loopback scrapes the agent every second; PromQL over its
HTTP API answers what `egs-agent query` answers for the same window."""
from __future__ import annotations

import time

import pytest

import engines
from engines import promql


class ScrapingPrometheus(engines.Prometheus):
    """engines.Prometheus with one scrape job: the agent's /metrics every second."""

    def __init__(self, tmpdir, targets: list[str]):
        super().__init__(tmpdir)
        self.targets = targets

    def prepare(self) -> None:
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1m\n"
            "scrape_configs:\n  - job_name: egs\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in self.targets)}]\n")


@pytest.fixture
def prometheus_scraping(tmp_path):
    started = []

    def start(targets: list[str]) -> ScrapingPrometheus:
        if engines.find_binary("prometheus") is None:
            pytest.skip("prometheus is not installed (Debian's `prometheus` package; `make system-deps`)")
        engine = ScrapingPrometheus(tmp_path / f"prom{len(started)}", targets)
        started.append(engine)
        return engine.start()
    yield start
    for engine in started:
        engine.stop()


def wait_up(url: str, job: str = "egs", scrapes: int = 5, timeout: float = 30.0) -> None:
    """Until the target is up and `scrapes` scrapes are stored."""
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        got = promql(url, f'count_over_time(up{{job="{job}"}}[1m])')
        up = promql(url, f'up{{job="{job}"}}')
        if got and up and float(up[0]["value"][1]) == 1 and float(got[0]["value"][1]) >= scrapes:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus did not scrape the agent {scrapes} times: {got}")


def _value(result: list[dict], gpu: str) -> float:
    found = [float(r["value"][1]) for r in result if r["metric"].get("gpu") == gpu]
    assert len(found) == 1, result
    return found[0]


def test_prometheus_scrapes_the_demo_scenario_and_agrees_with_the_agent(start_agent, prometheus_scraping):
    """Constant fields (the demo's clocks, memory sizes) equal egs-agent query's last value,
    and the moving ones lie within the agent's own min..max of the same minute."""
    agent = start_agent("two-nvidia-one-amd", prometheus="dcgm_names = true")
    prom = prometheus_scraping([f"127.0.0.1:{agent.port}"])
    wait_up(prom.url)
    targets = engines._api(prom.url, "/api/v1/targets", {})["activeTargets"]
    assert targets[0]["health"] == "up" and targets[0]["lastError"] == ""
    for metric in ("gpu_temperature_celsius", "gpu_power_watts", "gpu_utilization_percent"):
        prom_max = promql(prom.url, f"max_over_time(egs_{metric}[30s])")
        prom_min = promql(prom.url, f"min_over_time(egs_{metric}[30s])")
        agent_max = agent.query(metric, "1m", "max")["series"]
        agent_min = agent.query(metric, "1m", "min")["series"]
        assert len(prom_max) == 3 == len(agent_max)
        for s_max, s_min in zip(agent_max, agent_min):
            gpu = s_max["labels"]["gpu"]
            assert s_min["value"] <= _value(prom_min, gpu) <= _value(prom_max, gpu) <= s_max["value"], (metric, gpu)
    for metric in ("gpu_memory_total_bytes",):
        for s in agent.query(metric, "10s", "last")["series"]:
            assert _value(promql(prom.url, f"egs_{metric}"), s["labels"]["gpu"]) == s["value"]
    # the DCGM names reach Prometheus too, in their units
    fb = promql(prom.url, "DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE")
    total = promql(prom.url, "egs_gpu_memory_total_bytes / 1048576")
    for r in fb:
        assert abs(float(r["value"][1]) - _value(total, r["metric"]["gpu"])) <= 1


def test_prometheus_scrapes_eight_gpus_and_agrees_with_the_agent(start_agent, prometheus_scraping):
    """Eight moving GPUs: for each, the 1-minute minimum and maximum PromQL computes from the
    scrapes equal the agent's own for the SM clock (a sequence of values each held for two
    seconds, so every value is scraped), and the memory clock (constant) is equal."""
    agent = start_agent("eight-nvidia")
    prom = prometheus_scraping([f"127.0.0.1:{agent.port}"])
    wait_up(prom.url, scrapes=9)  # the sequence (1328, 1303, 1278, 1328) every 2 s: 8 s covers it
    for stat, fn in (("min", "min_over_time"), ("max", "max_over_time")):
        now = time.time()
        prom_result = promql(prom.url, f"{fn}(egs_gpu_sm_clock_mhz[1m])", time=now)
        agent_result = agent.query("gpu_sm_clock_mhz", "1m", stat)["series"]
        assert len(prom_result) == 8 == len(agent_result)
        for s in agent_result:
            assert _value(prom_result, s["labels"]["gpu"]) == s["value"], (stat, s)
    clocks = promql(prom.url, "egs_gpu_memory_clock_mhz")
    for s in agent.query("gpu_memory_clock_mhz", "10s", "last")["series"]:
        assert _value(clocks, s["labels"]["gpu"]) == s["value"]
    series = {r["metric"]["__name__"] for r in promql(prom.url, '{__name__=~"egs_gpu_.*", gpu="7"}')}
    assert {"egs_gpu_temperature_celsius", "egs_gpu_power_watts", "egs_gpu_energy_joules_total",
            "egs_gpu_health_state"} <= series
