"""The core's own passes follow the configuration (issue 15): the per-process pass runs every
`workload.interval` while `workload.enabled`, and makes no process-list call at all when it is
not; the health pass runs every `gpu.health_interval` and not at all when it is "off". Counted
by the simulated NVML itself (egs_sim_nvml_calls), through the GPU source's own factory."""
from __future__ import annotations

import ctypes
import time

import pytest

import sim_paths
from agent import config
from agent.sources import gpu
from agent.sources.base import SourceContext

PROCESS_CALLS = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
                 "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses_v2",
                 "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses",
                 "nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization")
HEALTH_CALL = "nvmlDeviceGetCurrentClocksEventReasons"


def nvml_calls() -> dict[str, int]:
    """Calls per function the simulated NVML counted in this process."""
    fn = ctypes.CDLL(str(sim_paths.NVML_LIB)).egs_sim_nvml_calls
    fn.restype = ctypes.c_uint
    names = (ctypes.c_char_p * 256)()
    counts = (ctypes.c_ulonglong * 256)()
    n = fn(256, names, counts, 0)
    return {names[i].decode(): counts[i] for i in range(min(n, 256))}


def run_source(monkeypatch, toml: str, seconds: float = 0.6) -> tuple[gpu.GpuSource, dict[str, int]]:
    """Build the GPU source as the daemon does from `toml`, run it `seconds` on the simulated
    NVML; the source and the calls the library counted meanwhile."""
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(sim_paths.scenario("constant")))
    cfg = config.parse(f'[gpu]\nnvml_library = "{sim_paths.NVML_LIB}"\namd = false\nhz = 20\n{toml}')
    before = nvml_calls()
    source = gpu.build(cfg, SourceContext({}, None))
    source.start()
    try:
        assert source.core is not None and source.devices, source.status
        time.sleep(seconds)
    finally:
        source.stop()
    after = nvml_calls()
    return source, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def test_workload_disabled_makes_no_process_list_call(sim_out, monkeypatch):
    source, calls = run_source(monkeypatch, "[workload]\nenabled = false\n")
    assert source.core.process_hz == 0
    assert {f: calls.get(f, 0) for f in PROCESS_CALLS} == dict.fromkeys(PROCESS_CALLS, 0)
    assert calls.get("nvmlDeviceGetUtilizationRates", 0) + calls.get("nvmlDeviceGetSamples", 0) > 0  # it did sample


def test_workload_interval_sets_the_process_pass(sim_out, monkeypatch):
    source, calls = run_source(monkeypatch, "[workload]\ninterval = \"1s\"\n")
    assert source.core.process_hz == 1.0
    assert sum(calls.get(f, 0) for f in PROCESS_CALLS) > 0


def test_health_interval_off_makes_no_health_read(sim_out, monkeypatch):
    source, calls = run_source(monkeypatch, "health_interval = \"off\"\n[workload]\nenabled = false\n")
    assert source.core.health_hz == 0
    assert calls.get(HEALTH_CALL, 0) == 0
    source, calls = run_source(monkeypatch, "health_interval = \"1s\"\n[workload]\nenabled = false\n")
    assert source.core.health_hz == 1.0 and calls.get(HEALTH_CALL, 0) > 0


@pytest.mark.parametrize("value, seconds", [("10s", 10.0), ("off", 0.0), ("0", 0.0), ("30", 30.0), ("1h", 3600.0)])
def test_health_interval_values(value, seconds):
    cfg = config.parse(f'[gpu]\nhealth_interval = "{value}"\n')
    assert config.health_interval_seconds(cfg.gpu.health_interval) == seconds


@pytest.mark.parametrize("value", ['"0.5s"', '"2h"', '"soon"', '"-1"', "0", "true"])
def test_health_interval_rejects(value):
    with pytest.raises(config.ConfigError, match="gpu.health_interval"):
        config.parse(f"[gpu]\nhealth_interval = {value}\n")
