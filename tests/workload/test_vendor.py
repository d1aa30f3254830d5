"""The vendor libraries' process lists through the C core (agent.workload.vendor) on the
simulated NVML and AMD SMI: the core reads what pynvml and amdsmi read from the same scenario,
for real processes this test starts; long lists grow and are asked again; NOT_SUPPORTED is no
list (or no figures), never an error or a 0; a library failure is the source's error."""
from __future__ import annotations

import ctypes
import json
import subprocess
import time
from pathlib import Path

import pytest

import sim_paths
from agent.native import Core, CoreProcess, ProcessList
from agent.workload.attribution import Attributor
from agent.workload.records import GpuRef, ProcessSourceError
from agent.workload.source import gpu_refs
from agent.workload.vendor import (AmdSmiProcessSource, NvmlProcessSource, covered_vendors,
                                   vendor_sources)

MIB = 1 << 20


@pytest.fixture
def sleepers():
    """start(n) -> PIDs of n real processes (sleep), ended after the test."""
    procs: list[subprocess.Popen] = []

    def start(n: int) -> list[int]:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "60"]))
        return [p.pid for p in procs[-n:]]

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def make_core(sim_out, monkeypatch):
    """make_core(scenario_path, **Core kwargs) -> a started Core on the simulated libraries."""
    cores: list[Core] = []

    def make(scenario: Path, **kw) -> Core:
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(scenario))
        kw.setdefault("nvml_library", str(sim_paths.NVML_LIB))
        kw.setdefault("amdsmi_library", str(sim_paths.AMDSMI_LIB))
        kw.setdefault("hz", 20.0)
        core = Core(**kw)
        cores.append(core)
        return core.start()

    yield make
    for core in cores:
        core.stop()


def write_scenario(tmp_path: Path, gpus: list[tuple[str, str, list[dict]]]) -> Path:
    """A scenario of (vendor, extra [[gpu]] lines, processes) GPUs."""
    lines = []
    for vendor, extra, procs in gpus:
        lines += ["[[gpu]]", f'vendor = "{vendor}"', extra]
        for p in procs:
            lines.append("[[gpu.processes]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    path = tmp_path / "processes.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(core: Core, vendor: str, want=lambda lists: all(p.state != "none" for p in lists),
             timeout: float = 5.0) -> list[ProcessList]:
    deadline = time.monotonic() + timeout
    while True:
        lists = core.processes(vendor)
        if lists and want(lists):
            return lists
        assert time.monotonic() < deadline, f"no process list in {timeout} s: {lists}"
        time.sleep(0.05)


PYNVML = """
import json, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
def rows(procs):
    return sorted([p.pid, p.usedGpuMemory] for p in procs)
util = {}
try:
    util = {s.pid: [s.smUtil, s.memUtil, s.encUtil, s.decUtil] for s in N.nvmlDeviceGetProcessUtilization(h, 0)}
except N.NVMLError as e:
    util = str(e)
print(json.dumps({"compute": rows(N.nvmlDeviceGetComputeRunningProcesses(h)),
                  "graphics": rows(N.nvmlDeviceGetGraphicsRunningProcesses(h)), "util": util}))
"""


def nvml_scenario(tmp_path, pids, extra=""):
    return write_scenario(tmp_path, [("nvidia", extra, [
        {"pid": pids[0], "kind": "both", "memory_mib": 512, "sm": 40, "mem": 10, "enc": 3, "dec": 2},
        {"pid": pids[1], "kind": "compute", "memory_mib": 2048, "sm": 55},
        {"pid": pids[2], "kind": "graphics", "memory_mib": "unknown"},
    ])])


@pytest.mark.parametrize("legacy", [False, True], ids=["v3", "legacy-v1"])
def test_nvml_lists_are_what_pynvml_reads(make_core, sleepers, tmp_path, legacy):
    pids = sleepers(3)
    scn = nvml_scenario(tmp_path, pids)
    core = make_core(scn, amd=False, process_hz=10.0,
                     nvml_library=str(sim_paths.NVML_LEGACY_LIB if legacy else sim_paths.NVML_LIB))
    [plist] = wait_for(core, "nvidia")
    ref = sim_paths.reader_json(PYNVML, sim_paths.nvml_env(scn))   # pynvml needs the current symbols: same scenario
    symbols = core.backends["nvidia"].symbols
    if legacy:  # an old driver: the v1 record and the older utilisation call
        assert symbols["compute_processes"] == "nvmlDeviceGetComputeRunningProcesses"
        assert symbols["processes_utilization"] is None
    else:
        assert symbols["compute_processes"] == "nvmlDeviceGetComputeRunningProcesses_v3"
        assert symbols["processes_utilization"] == "nvmlDeviceGetProcessesUtilizationInfo"
    assert plist.state == "ok" and plist.utilization == "samples"
    got = {p.pid: p for p in plist.processes}
    assert sorted([p.pid, p.used_memory_bytes] for p in got.values() if p.compute) == ref["compute"]
    assert sorted([p.pid, p.used_memory_bytes] for p in got.values() if p.graphics) == ref["graphics"]
    assert got[pids[2]].used_memory_bytes is None          # NVML_VALUE_NOT_AVAILABLE, not 0
    for pid, (sm, mem, enc, dec) in ref["util"].items():
        p = got[int(pid)]
        assert (p.sm_percent, p.mem_percent, p.enc_percent, p.dec_percent) == (sm, mem, enc, dec)
    # NVML samples only processes with some utilisation: the idle one read 0, as documented.
    assert str(pids[2]) not in ref["util"] and got[pids[2]].sm_percent == 0.0

    gpus = gpu_refs(core.devices())
    found = {p.pid: p for p in NvmlProcessSource(core).processes(gpus)}
    assert found[pids[0]].kind == "compute+graphics" and found[pids[1]].kind == "compute"
    assert found[pids[1]].used_memory_bytes == 2048 * MIB and found[pids[1]].sm_percent == 55.0
    # The attribution pass ties the listed PIDs to the real processes this test started.
    snap = Attributor([NvmlProcessSource(lambda: core)], "/proc", kubelet=None).run(gpus)
    rows = {r.process.pid: r.to_dict() for r in snap.gpus[0].rows}
    assert set(rows) == set(pids)
    assert all(r["command"].split()[0].endswith("sleep") and r["reason"] is None for r in rows.values()), rows


def sim_calls(path: Path, symbol: str) -> dict[str, int]:
    fn = getattr(ctypes.CDLL(str(path)), symbol)
    fn.restype = ctypes.c_uint
    names = (ctypes.c_char_p * 128)()
    counts = (ctypes.c_ulonglong * 128)()
    n = fn(128, names, counts, 0)
    return {names[i].decode(): counts[i] for i in range(min(n, 128))}


def test_long_lists_grow_and_are_asked_again(make_core, tmp_path):
    n = 40   # more than the first buffer (EGS_PROC_INITIAL, 16)
    scn = write_scenario(tmp_path, [
        ("nvidia", "", [{"pid": 1000 + k, "memory_mib": k, "sm": 1} for k in range(n)]),
        ("amd", "", [{"pid": 2000 + k, "memory_mib": k} for k in range(n)]),
    ])
    before_nv = sim_calls(sim_paths.NVML_LIB, "egs_sim_nvml_calls")
    before_amd = sim_calls(sim_paths.AMDSMI_LIB, "egs_sim_amdsmi_calls")
    core = make_core(scn, process_hz=0.2)   # one pass at start, the next 5 s later
    nv = wait_for(core, "nvidia")[0]
    amd = wait_for(core, "amd")[0]
    assert sorted(p.pid for p in nv.processes) == [1000 + k for k in range(n)]
    assert sorted(p.used_memory_bytes for p in amd.processes) == [k * MIB for k in range(n)]
    after_nv = sim_calls(sim_paths.NVML_LIB, "egs_sim_nvml_calls")
    after_amd = sim_calls(sim_paths.AMDSMI_LIB, "egs_sim_amdsmi_calls")

    def delta(after, before, fn):
        return after.get(fn, 0) - before.get(fn, 0)
    # INSUFFICIENT_SIZE (NVML) / OUT_OF_RESOURCES (AMD SMI), then the call again with room.
    assert delta(after_nv, before_nv, "nvmlDeviceGetComputeRunningProcesses_v3") == 2
    assert delta(after_nv, before_nv, "nvmlDeviceGetGraphicsRunningProcesses_v3") == 1  # none: fits
    assert delta(after_amd, before_amd, "amdsmi_get_gpu_process_list") == 2
    # The core's own count of the pass agrees with the library's.
    assert nv.calls == 2 + 1 + 1 and amd.calls == 2


def test_not_supported_is_no_list_and_no_figures(make_core, tmp_path):
    scn = write_scenario(tmp_path, [
        ("nvidia", 'process_list = "unsupported"', [{"pid": 10, "memory_mib": 1}]),
        ("nvidia", 'process_utilization = "unsupported"', [{"pid": 11, "memory_mib": 1, "sm": 30}]),
        ("amd", 'process_list = "unsupported"', [{"pid": 12, "memory_mib": 1}]),
    ])
    core = make_core(scn, process_hz=10.0)
    nv = wait_for(core, "nvidia")
    assert [p.state for p in nv] == ["unsupported", "ok"]
    assert nv[1].utilization == "none"
    [p] = nv[1].processes
    assert p.pid == 11 and p.used_memory_bytes == MIB
    assert (p.sm_percent, p.mem_percent, p.enc_percent, p.dec_percent) == (None, None, None, None)
    assert wait_for(core, "amd")[0].state == "unsupported"
    gpus = gpu_refs(core.devices())
    found = NvmlProcessSource(core).processes(gpus)
    assert [(g.pid, g.sm_percent) for g in found] == [(11, None)]
    assert AmdSmiProcessSource(core).processes(gpus) == []
    assert set(covered_vendors(core)) == {"nvidia", "amd"}


AMDSMI = """
import json, amdsmi as A
A.amdsmi_init()
h = A.amdsmi_get_processor_handles()[0]
print(json.dumps(sorted([p["pid"], p["memory_usage"]["vram_mem"]] for p in A.amdsmi_get_gpu_process_list(h))))
"""


def test_amd_lists_are_what_amdsmi_reads_and_engine_time_makes_a_share(make_core, sleepers, tmp_path):
    pids = sleepers(2)
    scn = write_scenario(tmp_path, [("amd", "", [
        {"pid": pids[0], "memory_mib": 256, "sm": 25, "enc": 5, "name": "sleep"},
        {"pid": pids[1], "memory_mib": 64},
    ])])
    core = make_core(scn, nvidia=False, process_hz=5.0)
    [plist] = wait_for(core, "amd")
    ref = sim_paths.reader_json(AMDSMI, sim_paths.amdsmi_env(scn))
    assert sorted([p.pid, p.used_memory_bytes] for p in plist.processes) == ref
    assert plist.utilization == "counters"
    gpus = gpu_refs(core.devices())
    source = AmdSmiProcessSource(lambda: core)
    first = {p.pid: p for p in source.processes(gpus)}
    assert first[pids[0]].sm_percent is None           # one counter reading is no rate
    ts = plist.ts
    wait_for(core, "amd", want=lambda lists: lists[0].ts > ts + 0.3)
    second = {p.pid: p for p in source.processes(gpus)}
    assert second[pids[0]].sm_percent == pytest.approx(25.0, abs=1.0)
    assert second[pids[0]].enc_percent == pytest.approx(5.0, abs=0.5)
    assert second[pids[1]].sm_percent == 0.0
    assert second[pids[0]].used_memory_bytes == 256 * MIB


class StandInCore:
    """The surface the sources read (Core.processes, process_hz), answering fixed lists."""

    process_hz = 1.0

    def __init__(self, lists):
        self.lists = lists

    def processes(self, vendor=None):
        return [p for p in self.lists if vendor is None or p.vendor == vendor]


def test_a_failing_library_is_the_sources_error_and_other_gpus_still_count():
    now = time.time()
    ok = ProcessList(0, "nvidia", "GPU-a", "ok", now, (CoreProcess(7, True, False, 1.0, 1, 2, 3, 4, None, None),),
                     "samples")
    bad = ProcessList(1, "nvidia", "GPU-b", "error", now, detail="nvmlDeviceGetComputeRunningProcesses_v3: "
                      "Unknown Error (NVML code 999)", status=999)
    old = ProcessList(2, "nvidia", "GPU-c", "ok", now - 60, (CoreProcess(8, True, False, 1.0, 0, 0, 0, 0, None, None),))
    gpus = [GpuRef(0, "GPU-a", vendor="nvidia"), GpuRef(1, "GPU-b", vendor="nvidia"), GpuRef(2, "GPU-c", vendor="nvidia")]
    source = NvmlProcessSource(StandInCore([ok, bad, old]))
    assert [p.pid for p in source.processes(gpus)] == [7]
    assert "Unknown Error" in source.errors[0] and "60 s old" in source.errors[1]
    with pytest.raises(ProcessSourceError, match="NVML code 999"):
        NvmlProcessSource(StandInCore([bad])).processes(gpus)
    # Before the GPU source has started its core: nothing, and no error.
    assert [s.processes(gpus) for s in vendor_sources(lambda: None)] == [[], []]
