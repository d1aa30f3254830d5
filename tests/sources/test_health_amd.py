"""AMD health signals beyond ECC (issue 15): the power cap (amdsmi_get_power_cap_info, uW ->
W as gpu_power_limit_watts) and the bad-page count (amdsmi_get_gpu_bad_page_info, as
gpu_bad_pages) and the compute / memory partition modes (amdsmi_get_gpu_compute_partition /
_memory_partition, as status `partition` and gpu_partition_info) on the simulated AMD SMI are
what the official amdsmi package reads there; a GPU that gives none has None and no series, and
is not asked again."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import sim_paths
from agent import config
from agent.sources.amdgpuinfo import CoreWithFallback
from agent.sources.gpu import GpuSource, health_samples

def amdsmi_reads(script: str, path: Path):
    """What the official amdsmi package prints (its last line, JSON) on the simulated AMD SMI
    serving the scenario at `path`."""
    return sim_paths.reader_json(script, sim_paths.amdsmi_env(path))


SCENARIO = """
[[gpu]]
vendor = "amd"
[gpu.fields]
power_limit = 300
bad_pages = 5
[[gpu]]
vendor = "amd"
"""

AMDSMI = """
import json, amdsmi as A
A.amdsmi_init()
h = A.amdsmi_get_processor_handles()[0]
print(json.dumps({"cap": A.amdsmi_get_power_cap_info(h), "bad": len(A.amdsmi_get_gpu_bad_page_info(h))}))
"""


def test_amd_power_cap_and_bad_pages_are_what_amdsmi_reads(amd_health_reads):
    first, later, ref = amd_health_reads(SCENARIO, AMDSMI, 2)
    v = first[0].values
    assert v["power_limit_watts"] == ref["cap"]["power_cap"] / 1e6 == 300
    assert v["bad_pages"] == ref["bad"] == 5
    labels = {"gpu": "0", "uuid": "u", "vendor": "amd", "model": "MI300X"}
    series = {s.metric: s.last for s in health_samples(v, labels, 1.0)}
    assert series == {"gpu_power_limit_watts": 300.0, "gpu_bad_pages": 5.0}
    # The second GPU gives neither (nor ECC): None, and after its first read no call at all.
    assert first[1].values["power_limit_watts"] is None and first[1].values["bad_pages"] is None
    assert health_samples(first[1].values, labels, 1.0) == []
    assert later[1].calls == 0 and later[0].calls == 2   # GPU 0: no ECC in its scenario either


PARTITIONS = """
[[gpu]]
vendor = "amd"
compute_partition = "CPX"
memory_partition = "NPS4"
[[gpu]]
vendor = "amd"
compute_partition = "DPX"
[[gpu]]
vendor = "amd"
"""

AMDSMI_PARTITIONS = """
import json, amdsmi as A
A.amdsmi_init()
out = []
for h in A.amdsmi_get_processor_handles():
    row = []
    for read in (A.amdsmi_get_gpu_compute_partition, A.amdsmi_get_gpu_memory_partition):
        try:
            row.append(read(h))
        except A.AmdSmiLibraryException as e:
            row.append(e.get_error_code())
    out.append(row)
print(json.dumps(out))
"""


class _NoWindows:
    def latest(self, metric, labels):
        return None


def test_amd_partition_modes_are_what_amdsmi_reads_in_status_and_an_info_series(sim_out, tmp_path: Path, monkeypatch,
                                                                              two_health_reads):
    path = tmp_path / "partitions.toml"
    path.write_text(PARTITIONS)
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
    settings = dataclasses.replace(config.parse("", "test.toml").gpu, hz=20.0, slow_hz=1.0)
    # CoreWithFallback: the class the GPU source's default factory makes.
    gpu = GpuSource(settings, core_factory=lambda s: CoreWithFallback(
        amdsmi_library=str(sim_paths.AMDSMI_LIB), nvidia=False, events=False, hz=20.0, health_hz=10.0, process_hz=0.0))
    gpu.start()
    try:
        first, later = two_health_reads(gpu.core, 3)
        samples = []
        deadline = time.monotonic() + 5
        while len(samples) < 2:
            assert time.monotonic() < deadline, samples
            samples += [s for s in gpu.collect(time.time()) if s.metric == "gpu_partition_info"]
            time.sleep(0.05)
        status = gpu.gpu_status(_NoWindows())
    finally:
        gpu.stop()
    ref = amdsmi_reads(AMDSMI_PARTITIONS, path)
    # AMDSMI_STATUS_NOT_SUPPORTED (2) where the scenario gives no mode: None here.
    assert ref == [["CPX", "NPS4"], ["DPX", 2], [2, 2]]
    assert [first[i].partition for i in range(3)] == [{"compute": "CPX", "memory": "NPS4"},
                                                      {"compute": "DPX", "memory": None},
                                                      {"compute": None, "memory": None}]
    assert [g["partition"] for g in status] == [first[i].partition for i in range(3)]
    by_gpu = {s.labels["gpu"]: s for s in samples}
    assert set(by_gpu) == {"0", "1"} and by_gpu["0"].last == 1.0    # GPU 2 gives no mode: no series
    assert (by_gpu["0"].labels["compute_partition"], by_gpu["0"].labels["memory_partition"]) == ("CPX", "NPS4")
    assert "memory_partition" not in by_gpu["1"].labels
    # The modes are read every pass where given; a NOT_SUPPORTED one is not asked again.
    assert later[0].partition == first[0].partition and later[2].calls == 0


THROTTLE = """
[[gpu]]
vendor = "amd"
[gpu.fields]
indep_throttle_status = 34359738369
[[gpu]]
vendor = "amd"
[gpu.fields]
indep_throttle_status = 65536
[[gpu]]
vendor = "amd"
"""

# The raw table through the package's own ctypes layout (its dict form turns the mask into a bool).
AMDSMI_THROTTLE = """
import ctypes, json, amdsmi as A
from amdsmi import amdsmi_wrapper as W
A.amdsmi_init()
out = []
for h in A.amdsmi_get_processor_handles():
    m = W.amdsmi_gpu_metrics_t()
    assert W.amdsmi_get_gpu_metrics_info(h, ctypes.byref(m)) == 0
    out.append(m.indep_throttle_status)
print(json.dumps(out))
"""


def test_amd_throttle_bits_map_to_the_power_cap_and_thermal_reasons(amd_health_reads):
    first, later, ref = amd_health_reads(THROTTLE, AMDSMI_THROTTLE, 3)
    # PPT0 (bit 0) and TEMP_EDGE (bit 35); TDC_GFX (bit 16) alone; N/A (all ones: no such table field).
    assert ref == [1 | 1 << 35, 1 << 16, 2**64 - 1]
    assert first[0].values["clock_reasons"] == 0x4 | 0x20      # sw_power_cap | sw_thermal_slowdown
    assert first[1].values["clock_reasons"] == 0                # a current limit: no NVML counterpart
    assert first[2].values["clock_reasons"] is None and later[2].calls == 0   # N/A: not asked again
    labels = {"gpu": "0", "uuid": "u", "vendor": "amd", "model": "MI300X"}
    active = {s.labels["reason"]: s.last for s in health_samples(first[0].values, labels, 1.0)
              if s.metric == "gpu_clock_event_active"}
    assert active == {"sw_power_cap": 1.0, "sw_thermal_slowdown": 1.0}   # only the reasons AMD can give
