"""The AMD backend against the simulated AMD SMI, checked against AMD's own `amdsmi` package."""
from __future__ import annotations

import ctypes
import subprocess
import time
from pathlib import Path

import pytest
import sim_paths

from agent.native import Core

AMDSMI_READER = r"""
import json
import amdsmi as A
A.amdsmi_init()
out = []
for h in A.amdsmi_get_processor_handles():
    energy = A.amdsmi_get_energy_count(h)
    vram = A.amdsmi_get_gpu_vram_usage(h)
    activity = A.amdsmi_get_gpu_activity(h)
    out.append({
        "uuid": A.amdsmi_get_gpu_device_uuid(h),
        "pci_bus_id": A.amdsmi_get_gpu_device_bdf(h),
        "name": A.amdsmi_get_gpu_asic_info(h)["market_name"],
        "gpu_utilization_percent": activity["gfx_activity"],
        "gpu_memory_busy_percent": activity["umc_activity"],
        "gpu_memory_used_bytes": vram["vram_used"] * 2**20,
        "gpu_memory_total_bytes": vram["vram_total"] * 2**20,
        "gpu_temperature_celsius": A.amdsmi_get_temp_metric(
            h, A.AmdSmiTemperatureType.EDGE, A.AmdSmiTemperatureMetric.CURRENT),
        "gpu_power_watts": A.amdsmi_get_power_info(h)["socket_power"],
        "gpu_sm_clock_mhz": A.amdsmi_get_clock_info(h, A.AmdSmiClkType.GFX)["clk"],
        "gpu_memory_clock_mhz": A.amdsmi_get_clock_info(h, A.AmdSmiClkType.MEM)["clk"],
        "gpu_energy_joules_total": energy["energy_accumulator"] * energy["counter_resolution"] / 1e6,
    })
A.amdsmi_shut_down()
print(json.dumps(out))
"""

METRICS = ("gpu_utilization_percent", "gpu_memory_busy_percent", "gpu_memory_used_bytes",
           "gpu_memory_total_bytes", "gpu_temperature_celsius", "gpu_power_watts",
           "gpu_sm_clock_mhz", "gpu_memory_clock_mhz", "gpu_energy_joules_total")


def test_values_equal_amdsmi_on_the_same_library(make_core, run_json):
    theirs = run_json(AMDSMI_READER, sim_paths.amdsmi_env("constant"))
    core = make_core("constant", hz=50)
    time.sleep(0.3)
    stats = core.drain()
    amd = [d for d in core.devices() if d.vendor == "amd"]
    assert core.backends["amd"].state == "ok"
    assert len(amd) == len(theirs) == 1
    dev, ref = amd[0], theirs[0]
    assert dev.index == 2  # after the two NVIDIA GPUs of the same scenario
    assert (dev.uuid, dev.pci_bus_id, dev.name) == (ref["uuid"], ref["pci_bus_id"], ref["name"])
    mine = {s.metric: s.last for s in stats if s.gpu == dev.index}
    for metric in METRICS:
        assert mine[metric] == pytest.approx(ref[metric], rel=1e-6), metric
    assert "gpu_fan_speed_percent" in dev.unsupported
    assert "gpu_fan_speed_percent" not in mine


def test_amd_gpu_lost_mid_run_while_the_other_keeps_sampling(make_core):
    core = make_core("amd-two", hz=100, nvidia=False)
    time.sleep(1.8)  # the second GPU is lost at t = 1.5 s
    core.drain()
    time.sleep(0.2)
    stats = core.drain()
    devs = core.devices()
    assert [d.state for d in devs] == ["ok", "lost"]
    assert "amdsmi_" in devs[1].lost_reason
    assert {s.gpu for s in stats} == {0}
    assert [(e.kind, e.gpu, e.code) for e in core.events() if e.kind == "lost"] == [("lost", 1, 31)]


def test_amd_event_notification_is_delivered(make_core, scenario_here):
    core = make_core(scenario_here("amd-event"), hz=20, nvidia=False)
    assert core.backends["amd"].symbols["event_get"] == "amdsmi_get_gpu_event_notification"
    deadline = time.monotonic() + 5.0
    got = []
    while time.monotonic() < deadline and not got:
        got = [e for e in core.events() if e.kind == "amd"]
        time.sleep(0.05)
    assert [(e.gpu, e.code) for e in got] == [(0, 3)]
    assert "GPU_PRE_RESET" in got[0].detail or "event 3" in got[0].detail


def test_amd_init_failure_is_an_error_with_the_library_message(make_core):
    core = make_core("init-failure", nvidia=False)
    amd = core.backends["amd"]
    assert amd.state == "error"
    assert amd.status == 34  # AMDSMI_STATUS_DRIVER_NOT_LOADED
    assert "amdsmi_init failed" in amd.detail
    assert core.devices() == []


ACTIVITY_READER = r"""
import json
import amdsmi as A
A.amdsmi_init()
print(json.dumps([A.amdsmi_get_gpu_activity(h) for h in A.amdsmi_get_processor_handles()]))
"""


def test_activity_reported_as_na_is_unsupported_not_65535_percent(make_core, run_json, scenario_here):
    scenario = scenario_here("amd-activity-na")
    # AMD's own reader on the same library sees the N/A sentinel in a call that succeeded.
    theirs = run_json(ACTIVITY_READER, sim_paths.amdsmi_env(scenario))
    assert theirs[0]["gfx_activity"] == 45
    assert theirs[0]["umc_activity"] in (0xFFFF, "N/A")

    core = make_core(scenario, hz=50, nvidia=False)
    time.sleep(0.3)  # GPU 1 loses its figure at t = 0.6 s
    early = {(s.gpu, s.metric): s for s in core.drain()}
    time.sleep(0.6)
    core.drain()
    time.sleep(0.2)
    late = {(s.gpu, s.metric): s for s in core.drain()}
    devs = core.devices()

    assert "gpu_memory_busy_percent" in devs[0].unsupported
    assert (0, "gpu_memory_busy_percent") not in early and (0, "gpu_memory_busy_percent") not in late
    # The other figure of the same call is still read, and nothing counts as an error.
    assert early[(0, "gpu_utilization_percent")].last == 45
    assert late[(0, "gpu_utilization_percent")].count > 0
    ring = core.ring(0)
    assert ring.values["gpu_memory_busy_percent"] and set(ring.values["gpu_memory_busy_percent"]) == {None}
    assert all(v == 45 for v in ring.values["gpu_utilization_percent"])

    assert early[(1, "gpu_memory_busy_percent")].max == 20
    assert "gpu_memory_busy_percent" in devs[1].unsupported
    assert (1, "gpu_memory_busy_percent") not in late
    assert late[(1, "gpu_utilization_percent")].last == 30
    assert all(s.errors == 0 for s in (*early.values(), *late.values()))
    assert all(s.max <= 100 for s in (*early.values(), *late.values()) if s.metric.endswith("_percent"))


def test_an_io_error_marks_the_gpu_lost_and_close_still_frees_its_event_state(
        sim_out, tmp_path, monkeypatch, scenario_here):
    # The simulator's `lost` gives NOT_FOUND only; a shim in front of it answers IO (12), what
    # sysfs reads of a GPU that fell off the bus return (see amd_io_lost_shim.c).
    shim = tmp_path / "libamd_io_lost_shim.so"
    sim_dir = str(sim_paths.AMDSMI_LIB.parent)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(shim),
                    str(Path(__file__).resolve().parent / "amd_io_lost_shim.c"),
                    "-L", sim_dir, "-Wl,--no-as-needed", "-l:libamd_smi.so",
                    f"-Wl,-rpath,{sim_dir}", "-ldl"], check=True)
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(scenario_here("amd-event")))
    # The shim fails the narrow temperature call, which the metrics table (BATCH) would bypass.
    core = Core(amdsmi_library=str(shim), nvidia=False, hz=20, events=True, batch=False).start()
    # A second reference keeps the shim loaded after the core unloads it, to read its counters.
    counters = ctypes.CDLL(str(shim))
    try:
        deadline = time.monotonic() + 30.0
        while core.devices()[0].state != "lost":
            assert time.monotonic() < deadline, "the GPU answering IO was never marked lost"
            time.sleep(0.02)
        dev = core.devices()[0]
        lost = [e for e in core.events() if e.kind == "lost"]
    finally:
        core.stop()
    assert "amdsmi_get_temp_metric" in dev.lost_reason and "12" in dev.lost_reason
    assert [(e.gpu, e.code) for e in lost] == [(0, 12)]
    # Notification was initialised on the GPU at start; close stopped it though the GPU was lost.
    assert ctypes.c_int.in_dll(counters, "egs_shim_stop_calls").value == 1
