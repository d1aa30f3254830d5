"""The NVIDIA backend against the simulated NVML: values, faults, symbol fallback, events."""
from __future__ import annotations

import ctypes
import math
import subprocess
import time
from pathlib import Path

import pytest
import sim_paths
from sim_paths import CLASSIC_SLOW

from agent.native import Core

PYNVML_READER = r"""
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    u = pynvml.nvmlDeviceGetUtilizationRates(h)
    m = pynvml.nvmlDeviceGetMemoryInfo(h)
    fv = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
    out.append({
        "name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
        "pci_bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
        "gpu_utilization_percent": u.gpu, "gpu_memory_busy_percent": u.memory,
        "gpu_memory_used_bytes": m.used, "gpu_memory_total_bytes": m.total,
        "gpu_temperature_celsius": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "gpu_power_watts": fv.value.uiVal / 1000.0,
        "power_usage_watts": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "gpu_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "gpu_memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "gpu_energy_joules_total": pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0,
        "gpu_fan_speed_percent": pynvml.nvmlDeviceGetFanSpeed(h),
    })
print(json.dumps({"driver": pynvml.nvmlSystemGetDriverVersion(), "gpus": out}))
"""

FIELD_METRICS = ("gpu_utilization_percent", "gpu_memory_busy_percent", "gpu_memory_used_bytes",
                 "gpu_memory_total_bytes", "gpu_temperature_celsius", "gpu_power_watts",
                 "gpu_sm_clock_mhz", "gpu_memory_clock_mhz", "gpu_energy_joules_total",
                 "gpu_fan_speed_percent")


def _last(stats, gpu):
    return {s.metric: s.last for s in stats if s.gpu == gpu}


def test_values_equal_pynvml_on_the_same_library(make_core, run_json):
    theirs = run_json(PYNVML_READER, sim_paths.nvml_env("constant"))
    # Every field by its own call on every tick (the driver buffers are compared in test_paths.py).
    core = make_core("constant", hz=50, amd=False, buffers=False)
    time.sleep(0.3)
    stats = core.drain()
    devices = [d for d in core.devices() if d.vendor == "nvidia"]
    assert len(devices) == len(theirs["gpus"]) == 2
    assert core.backends["nvidia"].driver_version == theirs["driver"]
    for dev, ref in zip(devices, theirs["gpus"]):
        assert (dev.name, dev.uuid, dev.pci_bus_id) == (ref["name"], ref["uuid"], ref["pci_bus_id"])
        mine = _last(stats, dev.index)
        for metric in FIELD_METRICS:
            assert mine[metric] == pytest.approx(ref[metric], rel=1e-9), metric
        assert mine["gpu_memory_used_percent"] == pytest.approx(
            100.0 * ref["gpu_memory_used_bytes"] / ref["gpu_memory_total_bytes"])


def test_power_comes_from_power_instant_field_when_supported(make_core):
    core = make_core("constant", hz=20, amd=False, buffers=False)
    assert core.backends["nvidia"].symbols["field_values"] == "nvmlDeviceGetFieldValues"
    time.sleep(0.2)
    power = {s.gpu: s for s in core.drain() if s.metric == "gpu_power_watts"}
    assert power[0].last == pytest.approx(180.5)
    assert power[1].last == pytest.approx(95.25)


def test_unsupported_fields_are_null_not_zero(make_core):
    core = make_core("nvidia-unsupported", hz=50, amd=False)
    time.sleep(0.3)
    stats = core.drain()
    dev0 = core.devices()[0]
    assert {"gpu_fan_speed_percent", "gpu_energy_joules_total"} <= dev0.unsupported
    reported = {s.metric for s in stats if s.gpu == 0}
    assert "gpu_fan_speed_percent" not in reported
    assert "gpu_energy_joules_total" not in reported
    assert "gpu_temperature_celsius" in reported
    ring = core.ring(0)
    assert ring.values["gpu_fan_speed_percent"] and all(v is None for v in ring.values["gpu_fan_speed_percent"])
    # Slots of buffered samples (utilisation, power, clocks) hold no temperature.
    temps = [v for v in ring.values["gpu_temperature_celsius"] if v is not None]
    assert temps and set(temps) == {55}


def test_field_turning_unsupported_mid_run_stops_being_reported(make_core):
    # GPU 1's power answers NOT_SUPPORTED from t = 2 s on, through POWER_INSTANT and
    # nvmlDeviceGetPowerUsage alike: only when both say so is power unsupported.
    core = make_core("nvidia-unsupported", hz=50, amd=False)
    deadline = time.monotonic() + 30.0
    while "gpu_power_watts" not in core.devices()[1].unsupported:
        assert time.monotonic() < deadline, "GPU 1's power never turned unsupported"
        time.sleep(0.05)
    core.drain()  # what GPU 1 gave before
    stats = []
    while not [s for s in stats if s.gpu == 1 and s.metric == "gpu_temperature_celsius"]:
        assert time.monotonic() < deadline, "GPU 1 stopped sampling"
        time.sleep(0.05)
        stats += core.drain()
    assert "gpu_power_watts" in core.devices()[1].unsupported
    assert not [s for s in stats if s.gpu == 1 and s.metric == "gpu_power_watts"]
    assert [s for s in stats if s.gpu == 1 and s.metric == "gpu_temperature_celsius"]
    assert all(s.errors == 0 for s in stats)


def test_gpu_lost_mid_run_while_the_others_keep_sampling(make_core):
    core = make_core("nvidia-lost", hz=100, amd=False)
    before = core.devices()
    deadline = time.monotonic() + 30.0
    while core.devices()[1].state != "lost":  # GPU 1 is lost at t = 1.0 s
        assert time.monotonic() < deadline, "GPU 1 was never marked lost"
        time.sleep(0.02)
    core.drain()  # what GPU 1 gave before it was lost
    # Count-based: keep draining until GPU 0 has 10 samples of every metric it reports.
    counts: dict[tuple[int, str], int] = {}
    while not counts or min(counts.values()) < 10:
        assert time.monotonic() < deadline, f"GPU 0 stopped sampling: {counts}"
        time.sleep(0.05)
        for st in core.drain():
            counts[(st.gpu, st.metric)] = counts.get((st.gpu, st.metric), 0) + st.count
    dev = core.devices()
    assert dev[0].state == "ok"
    assert dev[1].state == "lost"
    assert "lost" in dev[1].lost_reason.lower()
    # An unchanged device is handed back as the same object; the lost one is described anew.
    assert all(a is b for a, b in zip(core.devices(), dev))
    assert before[1].state == "ok" and dev[1] is not before[1]
    assert {gpu for gpu, _ in counts} == {0}
    lost = [e for e in core.events() if e.kind == "lost"]
    assert [(e.gpu, e.code) for e in lost] == [(1, 15)]


def test_missing_library_is_reported_unavailable_not_raised(make_core):
    core = make_core(None, nvml_library="/nonexistent/dir/libnvidia-ml.so.1",
                     amdsmi_library="/nonexistent/dir/libamd_smi.so")
    nv = core.backends["nvidia"]
    assert nv.state == "unavailable"
    assert "/nonexistent/dir/libnvidia-ml.so.1" in nv.detail
    assert "No such file" in nv.detail
    assert core.devices() == []
    assert core.drain() == []


def test_init_failure_is_an_error_carrying_nvml_message(make_core):
    core = make_core("init-failure", amd=False)
    nv = core.backends["nvidia"]
    expected = ctypes.CDLL(str(sim_paths.NVML_LIB))
    expected.nvmlErrorString.restype = ctypes.c_char_p
    message = expected.nvmlErrorString(9).decode()
    assert nv.state == "error"
    assert nv.status == 9
    assert message in nv.detail
    assert "nvmlInit_v2" in nv.detail
    assert core.devices() == []


def test_legacy_library_falls_back_to_older_symbols_and_still_reads(make_core):
    core = make_core("constant", hz=50, amd=False, nvml_library=str(sim_paths.NVML_LEGACY_LIB))
    sym = core.backends["nvidia"].symbols
    assert sym["init"] == "nvmlInit"
    assert sym["device_count"] == "nvmlDeviceGetCount"
    assert sym["device_handle"] == "nvmlDeviceGetHandleByIndex"
    assert sym["temperature"] == "nvmlDeviceGetTemperature"
    assert sym["memory"] == "nvmlDeviceGetMemoryInfo"
    assert sym["field_values"] is None
    assert sym["power_usage"] == "nvmlDeviceGetPowerUsage"
    time.sleep(0.3)
    last = {(s.gpu, s.metric): s.last for s in core.drain()}
    assert last[(0, "gpu_temperature_celsius")] == 65
    assert last[(1, "gpu_temperature_celsius")] == 58
    assert last[(0, "gpu_power_watts")] == pytest.approx(180.5)
    assert last[(0, "gpu_memory_used_bytes")] == 8192 * 2**20


def test_newest_symbols_are_preferred_when_present(make_core):
    sym = make_core("constant", amd=False).backends["nvidia"].symbols
    assert sym["init"] == "nvmlInit_v2"
    assert sym["temperature"] == "nvmlDeviceGetTemperatureV"
    assert sym["memory"] == "nvmlDeviceGetMemoryInfo_v2"
    assert sym["event_wait"] == "nvmlEventSetWait_v2"


@pytest.mark.parametrize("event_wait_ms", [50, None])  # None: the daemon's default, 500 ms
def test_xid_events_are_delivered_with_their_code(make_core, event_wait_ms):
    core = make_core("nvidia-xid", hz=20, amd=False, event_wait_ms=event_wait_ms)
    assert core.event_wait_ms == (event_wait_ms or 500)
    deadline = time.monotonic() + 5.0
    got = []
    while time.monotonic() < deadline and len(got) < 2:
        got += [e for e in core.events() if e.kind == "xid"]
        time.sleep(0.05)
    assert [(e.gpu, e.code) for e in got] == [(0, 79), (0, 13)]
    assert "XID 79" in got[0].detail
    assert got[0].ts < got[1].ts
    assert abs(got[0].ts - time.time()) < 60


def test_ring_holds_the_newest_samples_in_time_order(make_core):
    core = make_core("constant", hz=100, ring_seconds=0.5, amd=False, buffers=False, slow_fields=CLASSIC_SLOW)
    # Count-based: once more ticks ran than the ring holds (50), it is full, however long a
    # loaded machine took to get there.
    deadline = time.monotonic() + 30.0
    while core.sampler_stats()["ticks"] < 60:
        assert time.monotonic() < deadline, "the sampler made no progress"
        time.sleep(0.02)
    block = core.ring(0)
    assert len(block.timestamps) == 50
    assert block.timestamps == sorted(block.timestamps)
    # On the 10 ms grid: a busy machine skips slots (longer gaps), but samples never come
    # faster than the grid on average (a burst of catch-up reads would).
    gaps = [b - a for a, b in zip(block.timestamps, block.timestamps[1:])]
    assert sum(gaps) / len(gaps) >= 0.008
    assert set(block.values["gpu_temperature_celsius"]) == {65.0}
    assert set(block.values["gpu_power_watts"]) == {180.5}
    assert all(len(v) == 50 for v in block.values.values())
    newer = core.ring(0, since=block.timestamps[-10])
    assert newer.timestamps[0] > block.timestamps[-10]
    assert len(newer.timestamps) >= 9
    assert core.ring(0, since=math.inf).timestamps == []


def test_drain_resets_the_accumulators(make_core):
    core = make_core("constant", hz=100, amd=False, slow_fields=CLASSIC_SLOW)
    time.sleep(0.5)
    first = {(s.gpu, s.metric): s for s in core.drain()}
    core.stop()
    rest = core.drain()
    assert core.drain() == []
    ticks = core.sampler_stats()["ticks"]
    total = first[(0, "gpu_temperature_celsius")].count + sum(
        s.count for s in rest if (s.gpu, s.metric) == (0, "gpu_temperature_celsius"))
    assert total == ticks
    assert first[(0, "gpu_temperature_celsius")].first_ts <= first[(0, "gpu_temperature_celsius")].last_ts


def _shim(tmp_path: Path, source: str) -> Path:
    """Builds a tests/native shim linked in front of the simulated NVML."""
    out = tmp_path / ("lib" + source.replace(".c", ".so"))
    sim_dir = str(sim_paths.NVML_LIB.parent)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(out),
                    str(Path(__file__).resolve().parent / source),
                    "-L", sim_dir, "-Wl,--no-as-needed", "-l:libnvidia-ml.so.1",
                    f"-Wl,-rpath,{sim_dir}", "-ldl"], check=True)
    return out


def test_power_falls_back_to_the_older_call_when_power_instant_stops_answering(
        sim_out, tmp_path, monkeypatch):
    # The simulator cannot silence POWER_INSTANT alone, so a shim in front of it does (see
    # power_instant_shim.c): the 6th nvmlDeviceGetFieldValues call and later say NOT_SUPPORTED.
    shim = _shim(tmp_path, "power_instant_shim.c")
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(sim_paths.scenario("constant")))
    # Power from POWER_INSTANT, not from the driver's power sample buffer (test_paths.py); no
    # health pass, whose own nvmlDeviceGetFieldValues calls the shim would count too.
    core = Core(nvml_library=str(shim), amd=False, events=False, hz=50, buffers=False, health_hz=0).start()
    try:
        deadline = time.monotonic() + 30.0
        power: dict[int, list[float]] = {}
        errors = 0
        while len(power) < 2 or min(len(v) for v in power.values()) < 20:
            assert time.monotonic() < deadline, f"power stopped being sampled: {power}"
            time.sleep(0.05)
            for st in core.drain():
                if st.metric == "gpu_power_watts":
                    power.setdefault(st.gpu, []).extend([st.min, st.max])
                    errors += st.errors
        devices = core.devices()
        # While the core holds the shim loaded, this dlopen returns that same copy.
        calls = ctypes.c_int.in_dll(ctypes.CDLL(str(shim)), "egs_shim_fields_calls").value
    finally:
        core.stop()
    # Both GPUs' probes at start and the first ticks answered through the field (5 calls);
    # then each GPU's call said NOT_SUPPORTED once and the core never asked it again:
    # nvmlDeviceGetPowerUsage took over, in the same tick, with the same reading and no error.
    assert len(devices) == 2
    assert calls == 5 + len(devices)
    assert all("gpu_power_watts" not in d.unsupported for d in devices)
    assert errors == 0
    assert {gpu: set(v) for gpu, v in power.items()} == {0: {180.5}, 1: {95.25}}


def test_failed_name_uuid_and_driver_version_calls_say_why_instead_of_empty_labels(
        sim_out, tmp_path, monkeypatch):
    shim = _shim(tmp_path, "label_failure_shim.c")
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(sim_paths.scenario("constant")))
    core = Core(nvml_library=str(shim), amd=False, events=False, hz=10).start()
    try:
        nv = core.backends["nvidia"]
        devices = core.devices()
    finally:
        core.stop()
    assert nv.state == "ok"
    assert nv.driver_version.startswith("unknown (") and "999" in nv.driver_version
    assert len(devices) == 2
    for d in devices:
        assert d.name.startswith("unknown (") and "999" in d.name
        assert d.uuid.startswith("unknown (") and "999" in d.uuid
        assert d.pci_bus_id            # the calls that work still fill their labels
