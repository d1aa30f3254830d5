"""The /metrics component over a Context of stand-ins: what a scrape shows of the windows,
the own figures published each tick, staleness, and the same-tick answer."""
from __future__ import annotations

import logging
from pathlib import Path

from prometheus.scrapes import parse_text

from agent import config
from agent.components import Context
from agent.prometheus.component import build
from agent.sources.base import Sample
from agent.windows import Windows


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, statuses: dict | None = None):
    clock = Clock(1_000_000.0)
    windows = Windows([10, 60], clock)
    gpu = {"index": 0, "uuid": "GPU-0", "vendor": "nvidia", "name": "Tesla", "pci_bus_id": "00:08.0",
           "metrics": {"gpu_temperature_celsius": 61.0, "gpu_power_watts": None}}
    statuses = statuses or {}
    ctx = Context(windows=windows, core=None, emit=lambda e: None, state_dir=tmp_path, clock=clock, host_id="h1",
                  labels={"rack": "r1"}, log=logging.getLogger("t"), status_of=lambda name: statuses.get(name),
                  gpu_status=lambda: [gpu], gpu_health=lambda: [{"gpu": 0, "last_xid": {"code": 79, "name": "GPU has fallen off the bus"}}],
                  source_status=lambda: {"gpu": {"state": "ok", "sampler": {"achieved_hz": 9.98, "late_ticks": 3}},
                                         "host": {"state": "failed"}})
    cfg = config.parse('[prometheus]\nenabled = true\nlisten = "127.0.0.1:9"\ndcgm_names = true\n')
    exporter = build(cfg, ctx)
    return exporter, windows, clock, gpu


def scrape(exporter) -> dict:
    body, _ = exporter.render("")
    return parse_text(body)


def test_a_scrape_shows_windows_gpu_status_and_own_figures(tmp_path):
    statuses = {"stream": {"metrics": {"stream_spool_backlog_records": 12, "stream_dropped_total": 4}},
                "alarms": [{"rule": "gpu-temperature-high", "state": "firing", "labels": {"gpu": "0"}}]}
    exporter, windows, clock, gpu = make(tmp_path, statuses)
    windows.add(Sample.reading("memory_used_percent", {}, 42.0, clock.now))
    windows.add(Sample.reading("net_rx_bytes_per_second", {"nic": "eth0"}, 10.0, clock.now - 60))  # gone NIC
    windows.add(Sample.reading("gpu_temperature_celsius", {"gpu": "0"}, 99.0, clock.now))  # not from here
    exporter.tick(clock.now)
    s = scrape(exporter)
    rack = ("rack", "r1")
    assert s[("egs_memory_used_percent", frozenset({rack}))] == 42.0
    assert not any(name == "egs_net_rx_bytes_per_second" for name, _ in s)  # stale: absent, not its old value
    temps = [v for (name, _), v in s.items() if name == "egs_gpu_temperature_celsius"]
    assert temps == [61.0]  # the per-GPU status', the one status --json shows
    assert not any(name == "egs_gpu_power_watts" for name, _ in s)  # null there: no series
    assert s[("egs_stream_spool_backlog_records", frozenset({rack}))] == 12
    assert s[("egs_stream_dropped_total", frozenset({rack}))] == 4
    assert s[("egs_agent_sampler_rate_hertz", frozenset({rack}))] == 9.98
    assert s[("egs_agent_sampler_late_ticks_total", frozenset({rack}))] == 3
    assert s[("egs_agent_source_up", frozenset({rack, ("source", "host")}))] == 0
    assert s[("egs_alarm_active", frozenset({rack, ("gpu", "0"), ("rule", "gpu-temperature-high"),
                                              ("state", "firing")}))] == 1
    xid = [(dict(labels), v) for (name, labels), v in s.items() if name == "DCGM_FI_DEV_XID_ERRORS"]
    assert xid == [({"gpu": "0", "UUID": "GPU-0", "pci_bus_id": "00:08.0", "device": "nvidia0", "modelName": "Tesla",
                     "Hostname": "h1", "rack": "r1", "err_code": "79", "err_msg": "GPU has fallen off the bus"}, 79.0)]


def test_a_second_scrape_in_the_same_tick_gets_the_same_bytes_and_the_next_tick_new_ones(tmp_path):
    exporter, windows, clock, gpu = make(tmp_path)
    exporter.tick(clock.now)
    first, _ = exporter.render("")
    gpu["metrics"]["gpu_temperature_celsius"] = 70.0
    assert exporter.render("")[0] == first
    clock.now += 1
    exporter.tick(clock.now)
    s = scrape(exporter)
    assert [v for (name, _), v in s.items() if name == "egs_gpu_temperature_celsius"] == [70.0]
    assert exporter.status()["renders"] == 3


def test_the_answer_is_prometheus_clients_own_rendering_of_the_collector(tmp_path):
    """The fast path (rows, remembered prefixes) writes what prometheus-client's encoders
    write for the same collector, native and DCGM names, both formats, tick after tick."""
    from prometheus_client.exposition import choose_encoder
    exporter, windows, clock, gpu = make(tmp_path, {"alarms": [{"rule": "r", "state": "firing", "labels": {}}]})
    for second in range(3):
        windows.add(Sample.reading("memory_used_percent", {}, 40.0 + second / 3, clock.now))
        windows.add(Sample.reading("cpu_utilization_percent", {"cpu": "1"}, 1e-7 * second, clock.now))
        gpu["metrics"]["gpu_temperature_celsius"] = 60.0 + second
        exporter.tick(clock.now)
        for accept in ("", "application/openmetrics-text;version=1.0.0"):
            encoder, content_type = choose_encoder(accept)
            body, served_type = exporter.render(accept)
            assert served_type == content_type
            assert body == encoder(exporter.collector), (second, accept)
        clock.now += 1
