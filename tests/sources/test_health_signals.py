"""Health signals (issue 15): the core's health read on the simulated NVML is what pynvml reads
through NVML's own calls; a signal the device does not give is None and has no series (never
0); clock-event reasons become one 0/1 series per reason; a row remap pending degrades the GPU
("reset needed"), a remap failure or an uncorrectable ECC error fails it, a thermal or
power-brake slowdown degrades it while it holds; the built-in rules and the DCGM names see them."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

import sim_paths
from agent import config
from agent.native import HEALTH, Core, HealthReading
from agent.prometheus.dcgm import dcgm_families
from agent.sources.amdgpuinfo import CoreWithFallback
from agent.sources.gpu import CLOCK_EVENT, CLOCK_REASONS, GpuSource, health_samples
from agent.sources.health import Health, HealthSource

STEADY = """
[[gpu]]
vendor = "nvidia"
[gpu.fields]
clock_reasons = 68
ecc_corrected = 12
ecc_uncorrected = 0
remapped_correctable = 2
remapped_uncorrectable = 1
remap_pending = 1
remap_failure = 0
power_limit = 250
pcie_tx_kbps = 1500
pcie_rx_kbps = 2500
pcie_replays = 7
[[gpu]]
vendor = "amd"
"""

PYNVML = """
import json, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
print(json.dumps({
    "reasons": N.nvmlDeviceGetCurrentClocksEventReasons(h),
    "ecc": [N.nvmlDeviceGetTotalEccErrors(h, e, c) for e in (0, 1) for c in (0, 1)],
    "remapped": list(N.nvmlDeviceGetRemappedRows(h)),
    "limit_mw": N.nvmlDeviceGetEnforcedPowerLimit(h),
    "pcie_kbps": [N.nvmlDeviceGetPcieThroughput(h, c) for c in (0, 1)],
    "replays": N.nvmlDeviceGetPcieReplayCounter(h),
}))
"""


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "health.toml"
    path.write_text(text)
    return path


@pytest.fixture
def core_on(sim_out, monkeypatch):
    cores: list[Core] = []

    def make(path: Path, **kw) -> Core:
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
        # The class the GPU source's default factory makes (Core, with the pyamdgpuinfo fallback).
        core = CoreWithFallback(**({"nvml_library": str(sim_paths.NVML_LIB), "amdsmi_library": str(sim_paths.AMDSMI_LIB),
                                    "hz": 20.0, "health_hz": 10.0, "process_hz": 0.0} | kw))
        cores.append(core)
        return core

    yield make
    for c in cores:
        c.stop()


def wait_health(core: Core, n: int, timeout: float = 5.0) -> list[HealthReading]:
    deadline = time.monotonic() + timeout
    while True:
        got = core.health()
        if len(got) == n:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_the_core_reads_what_pynvml_reads_and_nothing_for_what_is_not_given(core_on, tmp_path):
    path = scenario_file(tmp_path, STEADY)
    core = core_on(path).start()
    nv, amd = wait_health(core, 2)
    ref = sim_paths.reader_json(PYNVML, sim_paths.nvml_env(path))
    v = nv.values
    assert v["clock_reasons"] == ref["reasons"] == 68
    assert [v["ecc_corrected_volatile"], v["ecc_corrected_aggregate"], v["ecc_uncorrected_volatile"],
            v["ecc_uncorrected_aggregate"]] == ref["ecc"]
    corr, unc, pending, failure = ref["remapped"]
    assert (v["remapped_rows_correctable"], v["remapped_rows_uncorrectable"], v["row_remap_pending"],
            v["row_remap_failure"]) == (corr, unc, pending, failure)
    assert v["power_limit_watts"] == ref["limit_mw"] / 1000
    assert [v["pcie_tx_bytes_per_second"], v["pcie_rx_bytes_per_second"]] == [k * 1000 for k in ref["pcie_kbps"]]
    assert v["pcie_replays"] == ref["replays"]
    # Retired pages are a pre-Ampere figure this scenario does not give: None, not 0.
    assert v["retired_pages_sbe"] is None and v["retired_pages_pending"] is None
    # Reasons, one field-values call, power limit, PCIe TX and RX; on the first read also the
    # MIG mode, which this GPU does not have (NOT_SUPPORTED: not asked again).
    assert nv.calls in (5, 6) and nv.mig_mode is None
    assert amd.values == {name: None for name in HEALTH}
    assert core.backends["nvidia"].symbols["clock_reasons"] == "nvmlDeviceGetCurrentClocksEventReasons"


def test_a_read_without_a_newer_pass_hands_back_the_same_reading(core_on, tmp_path):
    # The daemon asks every tick; the pass comes every health period (here 2 s at 20 Hz).
    core = core_on(scenario_file(tmp_path, STEADY), health_hz=0.5).start()
    deadline = time.monotonic() + 5
    while len(core.health()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first = core.health()
    assert [a is b for a, b in zip(first, core.health())] == [True, True]
    while core.health()[0].ts == first[0].ts:
        assert time.monotonic() < deadline + 5
        time.sleep(0.05)
    later = core.health()
    assert later[0] is not first[0] and later[0].ts > first[0].ts
    assert later[0].values == first[0].values  # a steady scenario: the same figures, newly read


def test_an_old_driver_falls_back_to_throttle_reasons(core_on, tmp_path):
    core = core_on(scenario_file(tmp_path, STEADY), nvml_library=str(sim_paths.NVML_LEGACY_LIB), amd=False).start()
    [nv] = wait_health(core, 1)
    assert core.backends["nvidia"].symbols["clock_reasons"] == "nvmlDeviceGetCurrentClocksThrottleReasons"
    assert nv.values["clock_reasons"] == 68
    # No nvmlDeviceGetFieldValues on that driver: ECC and row figures come from their own calls
    # (tests/sources/test_health_legacy.py compares them with pynvml).
    assert nv.values["ecc_corrected_volatile"] == 12 and nv.values["power_limit_watts"] == 250


def test_clock_event_reasons_are_one_series_per_reason():
    labels = {"gpu": "0", "uuid": "GPU-0", "vendor": "nvidia", "model": "H100"}
    values = {name: None for name in HEALTH} | {"clock_reasons": 68.0, "power_limit_watts": 250.0}
    samples = health_samples(values, labels, 100.0)
    active = {s.labels["reason"]: s.last for s in samples if s.metric == CLOCK_EVENT}
    assert set(active) == set(CLOCK_REASONS)
    assert {r for r, v in active.items() if v == 1.0} == {"sw_power_cap", "hw_thermal_slowdown"}
    others = {s.metric: s.last for s in samples if s.metric != CLOCK_EVENT}
    assert others == {"gpu_power_limit_watts": 250.0}      # nothing for the signals not given
    assert health_samples({name: None for name in HEALTH}, labels, 100.0) == []


def reading(gpu=0, ts=1.0, **values):
    return HealthReading(gpu, "nvidia", f"GPU-{gpu}", ts, {name: None for name in HEALTH} | values)


@pytest.mark.parametrize("values, state, text", [
    ({"row_remap_pending": 1.0, "row_remap_failure": 0.0}, "degraded", "row remapping pending: reset needed"),
    ({"row_remap_failure": 1.0}, "failed", "row remapping failed"),
    ({"ecc_uncorrected_volatile": 3.0}, "failed", "uncorrectable ECC errors: 3"),
    ({"retired_pages_pending": 1.0}, "degraded", "page retirement pending: reset needed"),
    ({"clock_reasons": 0x40}, "degraded", "thermal slowdown"),
    ({"clock_reasons": 0x80}, "degraded", "power-brake slowdown"),
    ({"clock_reasons": 0x4 | 0x1, "ecc_uncorrected_volatile": 0.0, "row_remap_pending": 0.0}, "ok", None),
])
def test_signals_set_health_with_the_reason_and_clear_with_it(values, state, text):
    h = Health()
    events = h.observe_signals([reading(ts=10.0, **values)], 10.0)
    g = h.gpus[0]
    assert g.state == state
    if text is None:
        assert events == [] and g.reasons == {}
        return
    [ev] = events
    assert text in ev.data["cause"]["detail"] and ev.data["state"] == state
    assert h.value("gpu_health_signal_" + ("failed" if state == "failed" else "degraded"), g) == 1.0
    cleared = h.observe_signals([reading(ts=20.0)], 20.0)   # the next read: none holds
    assert g.state == "ok" and cleared[0].data["cause"]["kind"] == "recovered"


THROTTLE = """
[[gpu]]
vendor = "nvidia"
[gpu.fields]
clock_reasons = { wave = "step", before = 128, after = 0, at = 1.5 }
"""


def test_a_power_brake_slowdown_degrades_the_gpu_while_it_holds_end_to_end(core_on, tmp_path):
    path = scenario_file(tmp_path, THROTTLE)
    gpu_settings = dataclasses.replace(config.parse("", "test.toml").gpu, hz=20.0, slow_hz=1.0)
    gpu = GpuSource(gpu_settings, core_factory=lambda s: core_on(path, amd=False))
    gpu.start()
    health = HealthSource(gpu, hold_s=900.0)
    states, series = [], []
    deadline = time.monotonic() + 8
    try:
        while states[-1:] != ["ok"]:
            assert time.monotonic() < deadline, states
            now = time.time()
            series += [s for s in gpu.collect(now) if s.metric == CLOCK_EVENT and s.labels["reason"] ==
                       "hw_power_brake_slowdown"]
            health.collect(now)
            for ev in health.tick_events:
                states.append(ev.data["state"])
            time.sleep(0.1)
    finally:
        gpu.stop()
    assert states == ["degraded", "ok"]
    assert {s.last for s in series} == {1.0, 0.0}
    assert gpu.gpu_status(_NoWindows())[0]["signals"]["clock_reasons"] == 0.0


class _NoWindows:
    def latest(self, metric, labels):
        return None


def test_dcgm_names_of_the_signals_and_none_for_what_is_missing():
    g = {"index": 0, "uuid": "GPU-0", "vendor": "nvidia", "name": "H100", "pci_bus_id": "", "metrics": {},
         "signals": {"gpu_row_remap_pending": 1.0, "gpu_power_limit_watts": 250.0, "gpu_pcie_tx_bytes_per_second":
                     1.5e6, "gpu_ecc_uncorrected_volatile_total": None, "clock_reasons": 68.0}}
    fams = {f.name: samples for f, samples in dcgm_families([g], [], "", {})}
    assert fams["DCGM_FI_DEV_ROW_REMAP_PENDING"][0][1] == 1.0
    assert fams["DCGM_FI_DEV_ENFORCED_POWER_LIMIT"][0][1] == 250.0
    assert fams["DCGM_FI_DEV_PCIE_TX_THROUGHPUT"][0][1] == 1500.0
    assert fams["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"][0][1] == 68.0
    assert "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL" not in fams and "DCGM_FI_DEV_RETIRED_SBE" not in fams


MIG = """
[[gpu]]
vendor = "nvidia"
name = "NVIDIA A100-SXM4-40GB"
memory_total_mib = 40960
[[gpu.mig]]
instance = 1
memory_total_mib = 19968
memory_used_mib = 1024
[[gpu.mig]]
instance = 1
compute_instance = 1
memory_total_mib = 19968
memory_used_mib = 1024
uuid = "MIG-1-ci1"
[[gpu.mig]]
instance = 5
memory_total_mib = 9856
[[gpu]]
vendor = "nvidia"
"""

PYNVML_MIG = """
import json, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
out = {"mode": N.nvmlDeviceGetMigMode(h), "migs": []}
for i in range(N.nvmlDeviceGetMaxMigDeviceCount(h)):
    try:
        m = N.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
    except N.NVMLError_NotFound:
        continue
    mem = N.nvmlDeviceGetMemoryInfo(m)
    out["migs"].append([N.nvmlDeviceGetGpuInstanceId(m), N.nvmlDeviceGetComputeInstanceId(m), N.nvmlDeviceGetUUID(m),
                        mem.used, mem.total])
try:
    N.nvmlDeviceGetMigMode(N.nvmlDeviceGetHandleByIndex(1))
except N.NVMLError_NotSupported:
    out["other"] = "not supported"
print(json.dumps(out))
"""


def test_a_mig_gpu_has_its_instances_as_child_devices_as_pynvml_reads_them(core_on, tmp_path):
    path = scenario_file(tmp_path, MIG)
    gpu_settings = dataclasses.replace(config.parse("", "test.toml").gpu, hz=20.0, slow_hz=1.0)
    gpu = GpuSource(gpu_settings, core_factory=lambda s: core_on(path, amd=False))
    gpu.start()
    try:
        readings = wait_health(gpu.core, 2)
        samples = []
        deadline = time.monotonic() + 5
        while not samples:
            assert time.monotonic() < deadline
            samples = [s for s in gpu.collect(time.time()) if s.metric.startswith("gpu_mig_")]
            time.sleep(0.05)
        status = gpu.gpu_status(_NoWindows())
    finally:
        gpu.stop()
    ref = sim_paths.reader_json(PYNVML_MIG, sim_paths.nvml_env(path))
    mig, other = readings
    assert ref["mode"] == [1, 1] and mig.mig_mode is True
    assert [[m.instance, m.compute_instance, m.uuid, m.memory_used_bytes, m.memory_total_bytes]
            for m in mig.mig] == ref["migs"]
    assert [m[:2] for m in ref["migs"]] == [[1, 0], [1, 1], [5, 0]]   # two compute instances in GPU instance 1
    assert ref["other"] == "not supported" and other.mig_mode is None and other.mig == ()
    by = {(s.metric, s.labels["gpu_instance"], s.labels["compute_instance"]): s for s in samples}
    used = by[("gpu_mig_memory_used_bytes", "1", "0")]
    assert used.last == 1024 * 2**20 and used.labels["gpu"] == "0" and used.labels["mig_uuid"] == ref["migs"][0][2]
    assert by[("gpu_mig_memory_used_bytes", "1", "1")].labels["mig_uuid"] == "MIG-1-ci1"
    assert by[("gpu_mig_memory_total_bytes", "5", "0")].last == 9856 * 2**20
    assert [(m["gpu_instance"], m["compute_instance"]) for m in status[0]["mig"]] == [(1, 0), (1, 1), (5, 0)]
    assert status[1]["mig"] is None


AMD_ECC = """
[[gpu]]
vendor = "amd"
[gpu.fields]
ecc_corrected = 5
ecc_uncorrected = 2
[[gpu]]
vendor = "amd"
"""

AMDSMI_ECC = """
import json, amdsmi as A
A.amdsmi_init()
h = A.amdsmi_get_processor_handles()[0]
print(json.dumps(A.amdsmi_get_gpu_total_ecc_count(h)))
"""


def test_amd_ecc_totals_are_what_amdsmi_reads_and_fail_the_gpu(core_on, tmp_path):
    path = scenario_file(tmp_path, AMD_ECC)
    core = core_on(path, nvidia=False).start()
    amd = wait_health(core, 2)
    ref = sim_paths.reader_json(AMDSMI_ECC, sim_paths.amdsmi_env(path))
    v = amd[0].values
    assert (v["ecc_corrected_volatile"], v["ecc_uncorrected_volatile"]) == (ref["correctable_count"],
                                                                          ref["uncorrectable_count"]) == (5, 2)
    assert v["ecc_corrected_aggregate"] is None and v["clock_reasons"] is None
    assert amd[1].values["ecc_corrected_volatile"] is None     # that GPU's scenario gives no ECC
    h = Health()
    [ev] = h.observe_signals([amd[0]], time.time())
    assert ev.data["state"] == "failed" and "uncorrectable ECC errors: 2" in ev.data["cause"]["detail"]
