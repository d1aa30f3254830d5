"""MIG GPU instances' utilisation through NVML's GPM (issue 15): the core samples each GPU
instance once per health pass (nvmlGpmMigSampleGet) and asks nvmlGpmMetricsGet for the
figures between that sample and the previous pass's. The simulated NVML integrates the
scenario's per-instance figures between two samples, so a constant figure comes back as given,
to float rounding; pynvml reading the same library gets the same. The first pass has no previous
sample: None, never 0. A GPU without GPM, and a driver without the calls, give None while the
instances' memory is still read; an unsupported GPU is asked once. The samples the core
allocates are all freed when it stops."""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

import sim_paths
from agent.native import Core
from agent.sources.gpu import GpuSource, mig_samples

H100 = """
[[gpu]]
vendor = "nvidia"
name = "NVIDIA H100 80GB HBM3"
memory_total_mib = 81559
{gpu_extra}
[[gpu.mig]]
instance = 1
memory_total_mib = 40192
memory_used_mib = 1024
graphics_util = 62.5
sm_util = 40
sm_occupancy = 25
dram_bw_util = 12.5
[[gpu.mig]]
instance = 1
compute_instance = 1
memory_total_mib = 40192
memory_used_mib = 1024
[[gpu.mig]]
instance = 5
memory_total_mib = 9856
memory_used_mib = 512
sm_util = 5
"""
GPM = ("graphics_util_percent", "sm_util_percent", "sm_occupancy_percent", "dram_bw_util_percent")
# (gpu_instance, compute_instance) -> the scenario's figures, in GPM's order (None: not given).
EXPECTED = {(1, 0): (62.5, 40.0, 25.0, 12.5), (1, 1): (62.5, 40.0, 25.0, 12.5), (5, 0): (None, 5.0, None, None)}

# pynvml's own GPM calls on the simulated library: two samples of each GPU instance 0.2 s apart.
PYNVML_GPM = """
import json, time, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
out = {"supported": N.nvmlGpmQueryDeviceSupport(h).isSupportedDevice, "instances": {}}
ids = (N.NVML_GPM_METRIC_GRAPHICS_UTIL, N.NVML_GPM_METRIC_SM_UTIL, N.NVML_GPM_METRIC_SM_OCCUPANCY,
       N.NVML_GPM_METRIC_DRAM_BW_UTIL)
for gi in (1, 5):
    a, b = N.nvmlGpmSampleAlloc(), N.nvmlGpmSampleAlloc()
    N.nvmlGpmMigSampleGet(h, gi, a)
    time.sleep(0.2)
    N.nvmlGpmMigSampleGet(h, gi, b)
    get = N.c_nvmlGpmMetricsGet_t()
    get.version = N.NVML_GPM_METRICS_GET_VERSION
    get.numMetrics = len(ids)
    get.sample1, get.sample2 = a, b
    for k, mid in enumerate(ids):
        get.metrics[k].metricId = mid
    N.nvmlGpmMetricsGet(get)
    out["instances"][gi] = [get.metrics[k].value if get.metrics[k].nvmlReturn == 0 else None for k in range(len(ids))]
    N.nvmlGpmSampleFree(a)
    N.nvmlGpmSampleFree(b)
print(json.dumps(out))
"""


def nvml_calls(path: Path) -> dict[str, int]:
    """Calls per function the simulated NVML at `path` counted in this process."""
    fn = ctypes.CDLL(str(path)).egs_sim_nvml_calls
    fn.restype = ctypes.c_uint
    names = (ctypes.c_char_p * 128)()
    counts = (ctypes.c_ulonglong * 128)()
    n = fn(128, names, counts, 0)
    return {names[i].decode(): counts[i] for i in range(min(n, 128))}


@pytest.fixture
def run_core(sim_out, monkeypatch, tmp_path, two_health_reads):
    """run(gpu_extra="", library=NVML_LIB): a core on the H100 scenario at a 10 Hz health pass;
    returns its (first, later) health reads of the MIG GPU, the scenario path and the GPM calls
    the library counted meanwhile (the core stopped)."""

    def run(gpu_extra: str = "", library: Path = sim_paths.NVML_LIB):
        path = tmp_path / "h100.toml"
        path.write_text(H100.format(gpu_extra=gpu_extra))
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
        before = nvml_calls(library)   # also keeps the library loaded past the core's stop
        core = Core(nvml_library=str(library), amd=False, hz=20.0, health_hz=10.0, process_hz=0.0).start()
        try:
            first, later = two_health_reads(core, 1)
        finally:
            core.stop()
        after = nvml_calls(library)
        calls = {k: n - before.get(k, 0) for k, n in after.items() if "Gpm" in k and n > before.get(k, 0)}
        return first[0], later[0], path, calls

    return run


def figures(reading) -> dict[tuple[int, int], tuple]:
    return {(m.instance, m.compute_instance): tuple(getattr(m, a) for a in GPM) for m in reading.mig}


def test_each_gpu_instance_has_the_scenario_utilisation_as_pynvml_reads_it_first_pass_none(run_core):
    first, later, path, calls = run_core()
    # The first pass has a sample and nothing to compare it with: None, not 0.
    assert figures(first) == {key: (None,) * 4 for key in EXPECTED}
    assert [m.memory_used_bytes for m in first.mig] == [1024 * 2**20, 1024 * 2**20, 512 * 2**20]
    got = figures(later)
    assert got.keys() == EXPECTED.keys()
    for key, want in EXPECTED.items():
        assert got[key] == tuple(None if w is None else pytest.approx(w, abs=1e-6) for w in want), key
    ref = sim_paths.reader_json(PYNVML_GPM, sim_paths.nvml_env(path))
    assert ref["supported"] == 1
    for gi in (1, 5):
        assert got[(gi, 0)] == tuple(None if v is None else pytest.approx(v, abs=1e-6) for v in ref["instances"][str(gi)])
    # One sample a pass per GPU instance (not per compute instance), two buffers each, all freed at stop.
    assert calls["nvmlGpmQueryDeviceSupport"] == 1
    assert calls["nvmlGpmSampleAlloc"] == calls["nvmlGpmSampleFree"] == 4
    assert calls["nvmlGpmMigSampleGet"] >= 4 and calls["nvmlGpmMigSampleGet"] % 2 == 0


def test_the_figures_are_child_device_series_and_status_entries(run_core):
    _, later, _, _ = run_core()
    labels = {"gpu": "0", "uuid": "GPU-x", "vendor": "nvidia", "model": "H100"}
    by = {(s.metric, s.labels["gpu_instance"], s.labels["compute_instance"]): s.last
          for s in mig_samples(later.mig, labels, later.ts)}
    assert by[("gpu_mig_graphics_utilization_percent", "1", "1")] == pytest.approx(62.5)
    assert by[("gpu_mig_sm_utilization_percent", "5", "0")] == pytest.approx(5.0)
    assert by[("gpu_mig_sm_occupancy_percent", "1", "0")] == pytest.approx(25.0)
    assert by[("gpu_mig_dram_bandwidth_utilization_percent", "1", "0")] == pytest.approx(12.5)
    # A figure the GPU instance does not give has no series (never 0).
    assert ("gpu_mig_graphics_utilization_percent", "5", "0") not in by
    source = GpuSource.__new__(GpuSource)
    source.health_readings = {0: later}
    entry = source.mig(0)[2]
    assert entry["gpu_instance"] == 5 and entry["sm_util_percent"] == pytest.approx(5.0)
    assert entry["graphics_util_percent"] is None and entry["memory_used_bytes"] == 512 * 2**20


@pytest.mark.parametrize("gpu_extra,library", [('gpm = "unsupported"', sim_paths.NVML_LIB),
                                                ("", sim_paths.NVML_LEGACY_LIB)], ids=["gpu-without-gpm", "old-driver"])
def test_no_gpm_gives_none_and_the_memory_still(run_core, gpu_extra, library):
    first, later, _, calls = run_core(gpu_extra, library)
    for reading in (first, later):
        assert figures(reading) == {key: (None,) * 4 for key in EXPECTED}
        assert [m.memory_total_bytes for m in reading.mig] == [40192 * 2**20, 40192 * 2**20, 9856 * 2**20]
    if library == sim_paths.NVML_LEGACY_LIB:
        assert calls == {}   # the driver has no GPM entry points: none called
    else:
        # Asked once, not again on later passes; no sample taken or allocated.
        assert calls == {"nvmlGpmQueryDeviceSupport": 1}
