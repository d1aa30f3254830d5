"""The GPU source on the real native core and the simulated libraries: samples and labels as
the scenario defines them, unsupported fields null, a lost GPU marked while the other keeps
reporting, and both backends' status."""
import dataclasses
import time

import pytest

import sim_paths
from agent import config
from agent.sources.gpu import GpuSource
from agent.windows import Windows


def settings(**over):
    """The `[gpu]` section as the config machinery declares it, pointed at the simulators."""
    base = dict(nvml_library=str(sim_paths.NVML_LIB), amdsmi_library=str(sim_paths.AMDSMI_LIB),
                hz=100.0, ring_seconds=10.0, slow_fields=["sm_clock", "memory_clock", "energy", "fan"])
    return dataclasses.replace(config.parse("", "test.toml").gpu, **(base | over))


@pytest.fixture
def scenario(monkeypatch, sim_out):
    def use(name):
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(sim_paths.scenario(name)))
    return use


@pytest.fixture
def source():
    made = []

    def make(**over):
        s = GpuSource(settings(**over))
        made.append(s)
        s.start()
        return s

    yield make
    for s in made:
        s.stop()


def collect_into(src, windows, seconds=1.2):
    time.sleep(seconds)
    samples = src.collect(time.time())
    windows.add_all(samples)
    return samples


def test_samples_carry_the_scenario_values_and_gpu_labels(scenario, source):
    scenario("constant")
    src = source(amd=False)
    w = Windows([10], time.time)
    samples = collect_into(src, w)
    gpu0 = {"gpu": "0", "uuid": "GPU-8f1c2d3e-0000-4000-8000-000000000001", "vendor": "nvidia",
            "model": "Tesla P100-PCIE-16GB"}
    by = {(s.metric, s.labels["gpu"]): s for s in samples}
    temp = by[("gpu_temperature_celsius", "0")]
    assert temp.labels == gpu0
    assert temp.count > 10, "the 100 Hz reads arrive folded, not one per second"
    assert temp.min == temp.max == temp.last == 65.0 and temp.sum == pytest.approx(65.0 * temp.count)
    assert by[("gpu_power_watts", "1")].last == pytest.approx(95.25)
    assert by[("gpu_memory_used_bytes", "0")].last == 8192 * 1024 * 1024
    doc = src.gpu_status(w)
    assert [g["index"] for g in doc] == [0, 1]
    assert doc[0]["metrics"]["gpu_temperature_celsius"] == 65.0
    assert doc[0]["metrics"]["gpu_fan_speed_percent"] == 42.0
    backends = src.backend_status()
    assert backends["nvidia"]["state"] == "ok" and backends["nvidia"]["driver_version"] == "535.154.05"
    assert backends["amd"]["state"] == "unavailable"


def test_unsupported_fields_are_null_not_zero(scenario, source):
    scenario("nvidia-unsupported")
    src = source(amd=False)
    w = Windows([10], time.time)
    collect_into(src, w)
    doc = src.gpu_status(w)
    flagged = [g for g in doc if "gpu_fan_speed_percent" in g["unsupported"]]
    assert flagged, doc
    for g in flagged:
        assert g["metrics"]["gpu_fan_speed_percent"] is None
        assert g["metrics"]["gpu_energy_joules_total"] is None
        assert g["metrics"]["gpu_temperature_celsius"] is not None


def test_a_lost_gpu_is_marked_lost_and_the_other_keeps_reporting(scenario, source):
    scenario("nvidia-lost")
    src = source(amd=False)
    w = Windows([10], time.time)
    collect_into(src, w, 1.5)  # the fault hits GPU 1 at t = 1.0 s
    samples = collect_into(src, w, 1.1)
    doc = {g["index"]: g for g in src.gpu_status(w)}
    assert doc[1]["state"] == "lost"
    assert all(v is None for v in doc[1]["metrics"].values()), "a lost GPU shows no stale figures"
    assert doc[0]["state"] == "ok" and doc[0]["metrics"]["gpu_temperature_celsius"] == 60.0
    assert {s.labels["gpu"] for s in samples} == {"0"}
    assert src.status.state == "ok"


def test_nvidia_and_amd_devices_side_by_side(scenario, source):
    scenario("two-nvidia-one-amd")
    src = source()
    w = Windows([10], time.time)
    collect_into(src, w)
    doc = src.gpu_status(w)
    assert [g["vendor"] for g in doc] == ["nvidia", "nvidia", "amd"]
    assert doc[2]["name"] == "AMD FirePro S7150"
    assert doc[2]["metrics"]["gpu_temperature_celsius"] is not None
    assert {k: v["state"] for k, v in src.backend_status().items()} == {"nvidia": "ok", "amd": "ok"}


def test_missing_libraries_leave_the_source_up_with_no_devices(source, sim_out):
    src = source(nvml_library="/nonexistent/libnvidia-ml.so.1", amdsmi_library="/nonexistent/libamd_smi.so")
    assert src.collect(time.time()) == []
    assert src.status.state == "unavailable"
    backends = src.backend_status()
    assert backends["nvidia"]["state"] == "unavailable" and "/nonexistent/libnvidia-ml.so.1" in backends["nvidia"]["detail"]


def test_gpus_switched_off_in_config(source):
    src = source(enabled=False)
    assert src.status.state == "disabled" and src.core is None
    assert all(b["detail"] == "gpu.enabled = false" for b in src.backend_status().values())


def test_both_configured_rates_reach_the_core(scenario, source):
    scenario("constant.toml")
    src = source(hz=20.0, slow_hz=2.0)
    stats = src.core.sampler_stats()
    assert stats["target_hz"] == 20.0 and stats["target_slow_hz"] == 2.0
