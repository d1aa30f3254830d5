"""The pyamdgpuinfo (libdrm) fallback for AMD hosts without AMD SMI (agent.sources.amdgpuinfo).

No AMD GPU or /dev/dri exists on the build machines, so the library is replaced by a stand-in
exposing pyamdgpuinfo 2.x's interface (detect_gpus, get_gpu, GPUInfo.query_*): these tests
check what the agent does with its answers, not libdrm itself.
"""
from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from agent.sources.amdgpuinfo import CoreWithFallback


class FakeGpu:
    name = "AMD FirePro S7150"
    pci_slot = "0000:03:00.0"
    memory_info = {"vram_size": 8 * 2**30, "gtt_size": 2**30, "vram_cpu_accessible_size": 2**28}

    def query_load(self):
        return 0.42

    def query_vram_usage(self):
        return 2 * 2**30

    def query_temperature(self):
        return 61.0

    def query_power(self):
        return 105

    def query_sclk(self):
        return 1_050_000_000

    def query_mclk(self):
        raise RuntimeError("amdgpu_query_sensor_info failed")


@pytest.fixture
def fake_pyamdgpuinfo(monkeypatch):
    module = SimpleNamespace(detect_gpus=lambda: 1, get_gpu=lambda i: FakeGpu())
    monkeypatch.setitem(sys.modules, "pyamdgpuinfo", module)


def test_fallback_samples_amd_gpus_and_says_so(fake_pyamdgpuinfo):
    core = CoreWithFallback(nvidia=False, amdsmi_library="/nonexistent/libamd_smi.so", hz=100, fallback_hz=50)
    core.start()
    try:
        time.sleep(0.3)
        stats = {s.metric: s for s in core.drain()}
        amd = core.backends["amd"]
        devices = core.devices()
        ring = core.ring(0)
    finally:
        core.stop()
    assert amd.state == "ok"
    assert "cannot load AMD SMI" in amd.detail
    assert "pyamdgpuinfo fallback (libdrm), 50 Hz, 1 device(s)" in amd.detail
    assert [(d.index, d.vendor, d.source, d.name, d.pci_bus_id) for d in devices] == [
        (0, "amd", "pyamdgpuinfo", "AMD FirePro S7150", "0000:03:00.0")]
    assert {"gpu_memory_busy_percent", "gpu_energy_joules_total", "gpu_fan_speed_percent"} <= devices[0].unsupported
    assert stats["gpu_utilization_percent"].last == pytest.approx(42.0)
    assert stats["gpu_temperature_celsius"].mean == 61.0
    assert stats["gpu_power_watts"].last == 105
    assert stats["gpu_sm_clock_mhz"].last == 1050
    assert stats["gpu_memory_used_bytes"].last == 2 * 2**30
    assert stats["gpu_utilization_percent"].count >= 5
    # A failing query is missing data, never 0.
    assert "gpu_memory_clock_mhz" not in stats
    assert ring.values["gpu_memory_clock_mhz"] and set(ring.values["gpu_memory_clock_mhz"]) == {None}
    assert ring.values["gpu_memory_used_percent"][-1] == pytest.approx(25.0)


def test_fallback_is_not_used_when_amd_is_switched_off(fake_pyamdgpuinfo):
    core = CoreWithFallback(nvidia=False, amd=False).start()
    core.stop()
    assert core.devices() == []
    assert "pyamdgpuinfo" not in core.backends["amd"].detail


def test_amd_without_amd_smi_reports_the_pyamdgpuinfo_fallback():
    """With the real pyamdgpuinfo (or its absence) of this host."""
    core = CoreWithFallback(nvidia=False, amdsmi_library="/nonexistent/libamd_smi.so").start()
    try:
        amd = core.backends["amd"]
        devices = core.devices()
    finally:
        core.stop()
    assert "/nonexistent/libamd_smi.so" in amd.detail
    assert "pyamdgpuinfo fallback" in amd.detail
    if amd.state == "ok":  # a host with an AMD GPU and libdrm, no AMD SMI
        assert any(d.source == "pyamdgpuinfo" for d in devices)
    else:
        assert amd.state == "unavailable"
        assert devices == []
