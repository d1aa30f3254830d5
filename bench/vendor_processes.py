"""What the C core's per-process pass costs per GPU (issue 15): `docs/benchmarks.md`,
"Vendor process lists"; and the calls of its health pass.

For 1, 10 and 100 processes per GPU on GPUS simulated GPUs of each kind (NVML with the current
symbols, NVML of an old driver: v1 records and nvmlDeviceGetProcessUtilization, AMD SMI), the
core runs a pass every tick for SECONDS and reports, per pass and GPU, the library calls it
made (counted by the core, checked against the simulated library's own count) and the sampler
thread's CPU time in the pass (CLOCK_THREAD_CPUTIME_ID around it), then the Python side: one
`NvmlProcessSource` / `AmdSmiProcessSource` pass over the copied lists (this process's CPU,
median of 50).

The simulated library's calls cost what a function call and the scenario walk cost, not what a
driver's ioctl costs (NVML 580 on an H100: ~400 us a call, egs_core.h): the call count is the
figure that carries over to a real GPU; the CPU figures are the core's own share.

    .venv/bin/python bench/vendor_processes.py [--gpus 8] [--seconds 3] [--json]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sim_paths  # noqa: E402
from agent.native import Core  # noqa: E402
from agent.workload.source import gpu_refs  # noqa: E402
from agent.workload.vendor import AmdSmiProcessSource, NvmlProcessSource  # noqa: E402

KINDS = {  # name -> (vendor, library, counter symbol, source class)
    "nvml": ("nvidia", sim_paths.NVML_LIB, "egs_sim_nvml_calls", NvmlProcessSource),
    "nvml-legacy": ("nvidia", sim_paths.NVML_LEGACY_LIB, "egs_sim_nvml_calls", NvmlProcessSource),
    "amdsmi": ("amd", sim_paths.AMDSMI_LIB, "egs_sim_amdsmi_calls", AmdSmiProcessSource),
}


def scenario(path: Path, vendor: str, gpus: int, per_gpu: int) -> None:
    lines = []
    for g in range(gpus):
        lines += ["[[gpu]]", f'vendor = "{vendor}"']
        for k in range(per_gpu):
            lines += ["[[gpu.processes]]", f"pid = {100000 + g * 1000 + k}", f"memory_mib = {k + 1}",
                      "sm = 5", "mem = 1"]
    path.write_text("\n".join(lines) + "\n")


def list_calls(lib: Path, symbol: str) -> int:
    fn = getattr(ctypes.CDLL(str(lib)), symbol)
    fn.restype = ctypes.c_uint
    names = (ctypes.c_char_p * 128)()
    counts = (ctypes.c_ulonglong * 128)()
    n = fn(128, names, counts, 0)
    return sum(counts[i] for i in range(min(n, 128)) if b"rocess" in names[i] and b"processor" not in names[i])


def measure(kind: str, gpus: int, per_gpu: int, seconds: float) -> dict:
    vendor, lib, symbol, source_cls = KINDS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        scenario(path, vendor, gpus, per_gpu)
        os.environ["EGS_SIM_SCENARIO"] = str(path)
        before = list_calls(lib, symbol)
        core = Core(nvml_library=str(lib if vendor == "nvidia" else sim_paths.NVML_LIB),
                    amdsmi_library=str(lib if vendor == "amd" else sim_paths.AMDSMI_LIB),
                    nvidia=vendor == "nvidia", amd=vendor == "amd", hz=10.0, process_hz=10.0, events=False)
        core.start()
        time.sleep(seconds)
        core.stop()   # the counts and the last lists stay readable
        s = core.sampler_stats()
        counted = list_calls(lib, symbol) - before
        refs = gpu_refs(core.devices())
        source = source_cls(core)
        cpu = []
        for _ in range(51):
            t0 = time.process_time()
            found = source.processes(refs)
            cpu.append(time.process_time() - t0)
    passes = s["process_passes"]
    assert len(found) == gpus * per_gpu, (kind, len(found))
    return {"kind": kind, "processes_per_gpu": per_gpu, "gpus": gpus, "passes": passes,
            "calls_per_gpu_pass": s["process_calls"] / passes / gpus,
            "library_count_per_gpu_pass": counted / passes / gpus,
            "core_cpu_us_per_gpu_pass": 1e6 * s["process_cpu_s"] / passes / gpus,
            "core_wall_us_per_gpu_pass": 1e6 * s["process_s"] / passes / gpus,
            "python_cpu_us_per_gpu_pass": 1e6 * statistics.median(cpu) / gpus}


HEALTH_SCENARIO = """
[[gpu]]
vendor = "nvidia"
{mig}[gpu.fields]
clock_reasons = 0
ecc_corrected = 0
ecc_uncorrected = 0
remapped_correctable = 0
remapped_uncorrectable = 0
remap_pending = 0
remap_failure = 0
power_limit = 300
pcie_tx_kbps = 1000
pcie_rx_kbps = 1000
pcie_replays = 0
"""


def measure_health(gpus: int, mig: int, seconds: float) -> dict:
    """The health pass (a pass every tick) on GPUS NVIDIA GPUs giving every signal, each with
    `mig` MIG instances: calls per GPU per pass, as the core counts them."""
    migs = "".join(f"[[gpu.mig]]\ninstance = {k + 1}\nmemory_total_mib = 4864\n" for k in range(mig))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "health.toml"
        path.write_text(HEALTH_SCENARIO.format(mig=migs) * gpus)
        os.environ["EGS_SIM_SCENARIO"] = str(path)
        core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, hz=10.0, health_hz=10.0, process_hz=0.0,
                    events=False)
        core.start()
        time.sleep(seconds)
        core.stop()
        s = core.sampler_stats()
    return {"kind": "health", "mig_instances": mig, "gpus": gpus, "passes": s["health_passes"],
            "calls_per_gpu_pass": s["health_calls"] / s["health_passes"] / gpus}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(kind, args.gpus, n, args.seconds) for kind in KINDS for n in (1, 10, 100)]
    health = [measure_health(args.gpus, mig, args.seconds) for mig in (0, 7)]
    if args.json:
        print(json.dumps(rows + health, indent=1))
        return 0
    print(f"{'library':12} {'procs/GPU':>9} {'passes':>6} {'calls/GPU':>9} {'(lib count)':>11} {'core CPU us/GPU':>15} "
          f"{'core wall us/GPU':>16} {'Python CPU us/GPU':>17}")
    for r in rows:
        print(f"{r['kind']:12} {r['processes_per_gpu']:>9} {r['passes']:>6} {r['calls_per_gpu_pass']:>9.2f} "
              f"{r['library_count_per_gpu_pass']:>11.2f} "
              f"{r['core_cpu_us_per_gpu_pass']:>15.1f} {r['core_wall_us_per_gpu_pass']:>16.1f} "
              f"{r['python_cpu_us_per_gpu_pass']:>17.1f}")
    for h in health:
        print(f"health pass, {h['mig_instances']} MIG instances per GPU: {h['calls_per_gpu_pass']:.2f} calls per GPU "
              f"per pass ({h['passes']} passes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
