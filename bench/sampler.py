"""How much the native sampler costs per read, against the reads themselves and against pynvml.

On a simulated 8-GPU host (native/sim/scenarios/eight-nvidia.toml) reading every catalogue
field, three loops make the same NVML calls on the same simulated library:
- a bare C loop (bench/bare_loop.c, compiled here): the floor, what the reads cost alone;
- the core at 1 kHz: its sampler thread's CPU time (CLOCK_THREAD_CPUTIME_ID) per read;
- a plain Python loop over pynvml, in a subprocess (pynvml finds NVML via LD_LIBRARY_PATH).
Each cost minus the floor is that reader's own overhead. Draining is timed at 10 Hz and at
1 kHz with the same number of devices, to show its cost does not follow the rate.

A "read" is one field value (10 per GPU per tick, from 8 library calls). The core's two
tiers are folded into one here (slow_hz = hz), so every field is read on every tick as in the
other two loops. A last short run at the agent's default tiers (gpu.hz 10, gpu.slow_hz 1)
counts the reads and library calls per GPU per second it makes (text output only). Run it on
a quiet machine; on a shared 2-core box the figures move with the neighbours' load.

usage: python bench/sampler.py [--json] [--seconds S]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import sim_paths  # noqa: E402

from agent import config  # noqa: E402
from agent.native import SLOW_METRICS, Core  # noqa: E402

GPUS, FIELDS, TARGET_HZ = 8, 10, 1000.0

PYNVML_LOOP = r"""
import json, sys, time, pynvml
rounds = int(sys.argv[1])
pynvml.nvmlInit()
devs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
fid = [pynvml.NVML_FI_DEV_POWER_INSTANT]
t0 = time.thread_time_ns()
for _ in range(rounds):
    for h in devs:
        u = pynvml.nvmlDeviceGetUtilizationRates(h)
        m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        t = pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU)
        p = pynvml.nvmlDeviceGetFieldValues(h, fid)[0].value.uiVal
        sm = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
        mem = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
        e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        f = pynvml.nvmlDeviceGetFanSpeed(h)
ns = time.thread_time_ns() - t0
reads = rounds * len(devs) * 10
print(json.dumps({"gpus": len(devs), "reads": reads, "ns_per_read": ns / reads}))
"""


def bare_loop_ns(rounds: int, hz: float | None = None) -> float:
    """The bare C loop's CPU ns per read; with hz, paced on a deadline grid like the core."""
    out_dir = Path(tempfile.mkdtemp(prefix="egs-bench-"))
    exe = out_dir / "bare_loop"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(ROOT / "bench" / "bare_loop.c"), "-ldl"],
                   check=True)
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("eight-nvidia")))
    argv = [str(exe), str(sim_paths.NVML_LIB), str(rounds)] + ([str(hz)] if hz else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["gpus"] == GPUS, report
    return report["ns_per_read"]


def pynvml_ns(rounds: int) -> float:
    env = sim_paths.nvml_env("eight-nvidia")
    result = subprocess.run([sys.executable, "-c", PYNVML_LOOP, str(rounds)], env=env,
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["gpus"] == GPUS, report
    return report["ns_per_read"]


def native_run(seconds: float) -> dict:
    os.environ["EGS_SIM_SCENARIO"] = str(sim_paths.scenario("eight-nvidia"))
    core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, hz=TARGET_HZ, slow_hz=TARGET_HZ,
                ring_seconds=60.0)
    core.start()
    assert len(core.devices()) == GPUS
    time.sleep(seconds)
    core.stop()
    return core.sampler_stats()


def drain_cpu_us(hz: float, drains: int = 30, interval: float = 0.1) -> float:
    """Median thread CPU time of one Core.drain() (C copy + Python conversion)."""
    os.environ["EGS_SIM_SCENARIO"] = str(sim_paths.scenario("eight-nvidia"))
    core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, hz=hz, slow_hz=hz, ring_seconds=1.0)
    core.start()
    costs = []
    try:
        time.sleep(max(interval, 1.5 / hz))
        core.drain()
        for _ in range(drains):
            time.sleep(max(interval, 1.5 / hz))
            t0 = time.thread_time_ns()
            stats = core.drain()
            costs.append((time.thread_time_ns() - t0) / 1000.0)
            assert len(stats) == GPUS * (FIELDS + 1), len(stats)  # + derived memory percent
    finally:
        core.stop()
    return statistics.median(costs)


def default_tiers_run(seconds: float = 3.0) -> dict:
    """Reads per GPU per second at the config defaults; counted, so the machine's load does not
    move them (beyond a held-up tick)."""
    g = config.parse("").gpu
    os.environ["EGS_SIM_SCENARIO"] = str(sim_paths.scenario("eight-nvidia"))
    core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, hz=g.hz, slow_hz=g.slow_hz,
                ring_seconds=1.0)
    core.start()
    time.sleep(seconds)
    core.stop()
    s = core.sampler_stats()
    # Per second in steady state: what one tick of each tier read (counted), times its grid
    # rate. A run of a few seconds holds one slow tick more than its length (slot 0), so
    # counts over elapsed time would overstate the slow tier.
    fast = s["reads_fast"] / s["ticks"] / GPUS * g.hz
    slow = s["reads_slow"] / s["slow_ticks"] / GPUS * g.hz / s["slow_every"]
    # The fast tier's 6 values come from 4 calls (utilisation and memory give two each); each
    # slow value is one call.
    return {"hz": g.hz, "slow_hz": g.slow_hz, "slow_every": s["slow_every"], "fast_reads": fast,
            "slow_reads": slow, "calls": fast * 4 / 6 + slow, "ticks": s["ticks"],
            "slow_ticks": s["slow_ticks"], "reads_fast": s["reads_fast"], "reads_slow": s["reads_slow"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object with the figures")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long the core samples (default 5)")
    args = ap.parse_args()
    try:
        sim_paths.build_sim()
    except RuntimeError as e:  # only the NVML simulation is needed here
        if not sim_paths.NVML_LIB.exists():
            raise
        print(f"warning: using the existing {sim_paths.NVML_LIB}; rebuild failed: {e}", file=sys.stderr)

    library = bare_loop_ns(rounds=20000)
    py = pynvml_ns(rounds=1000)
    # The paced floor moves with the machine's load, so it brackets the core's run.
    paced_before = bare_loop_ns(rounds=int(TARGET_HZ * 3), hz=TARGET_HZ)
    run = native_run(args.seconds)
    paced = (paced_before + bare_loop_ns(rounds=int(TARGET_HZ * 3), hz=TARGET_HZ)) / 2
    native = run["thread_cpu_s"] * 1e9 / run["reads"]
    d10 = drain_cpu_us(10.0)
    d1k = drain_cpu_us(1000.0)
    tiers = None if args.json else default_tiers_run()
    native_over, py_over = native - library, py - library
    report = {
        "gpus": GPUS,
        "fields": FIELDS,
        "target_hz": TARGET_HZ,
        "achieved_hz": round(run["achieved_hz"], 2),
        "tick_late_p99_us": run["tick_late_p99_us"],
        "library_ns_per_read": round(library, 2),
        "native_cpu_ns_per_read": round(native, 2),
        "pynvml_cpu_ns_per_read": round(py, 2),
        "native_overhead_ns": round(native_over, 2),
        "pynvml_overhead_ns": round(py_over, 2),
        "overhead_ratio": round(py_over / native_over, 1) if native_over > 0 else float("inf"),
        "drain_cpu_us_10hz": round(d10, 2),
        "drain_cpu_us_1khz": round(d1k, 2),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    for k, v in report.items():
        print(f"{k:>24}: {v}")
    # Not part of the key set: where the native overhead goes on this machine.
    print(f"{'paced_floor_ns_per_read':>24}: {paced:.2f}  (bare C loop sleeping on the same "
          f"{TARGET_HZ:g} Hz grid: reads + wake-ups, no agent)")
    per_tick = run["reads"] / run["ticks"]
    # The core's own work, timed inside it: a difference of two noisy CPU figures (core minus
    # paced floor) swings by more than the quantity on a shared machine.
    print(f"{'fold_ns_per_read':>24}: {run['fold_p50_us'] * 1e3 / per_tick:.2f} median, "
          f"{run['fold_s'] * 1e9 / run['reads']:.2f} mean  (the core's own work per read, timed "
          "inside it: folding a tick into accumulators and ring, lock included; the mean carries "
          "preemptions)")
    print(f"{'library_share':>24}: {run['read_s'] / run['elapsed_s'] * 100:.1f} % of the time "
          "in vendor calls")
    checks = [
        ("achieved >= 99 % of target", report["achieved_hz"] >= 0.99 * TARGET_HZ),
        ("native overhead <= 10 ns per read", native_over <= 10.0),
        ("overhead ratio >= 50", report["overhead_ratio"] >= 50),
        ("drain at 1 kHz within 20 % of 10 Hz", abs(d1k - d10) <= 0.2 * d10),
    ]
    assert tiers is not None
    print(f"{'default tiers':>24}: gpu.hz {tiers['hz']:g} / gpu.slow_hz {tiers['slow_hz']:g} (slow tier "
          f"every {tiers['slow_every']} ticks: {', '.join(sorted(SLOW_METRICS))}): per GPU per second "
          f"{tiers['fast_reads']:.1f} fast + {tiers['slow_reads']:.2f} slow field reads, "
          f"{tiers['calls']:.1f} library calls (counted: {tiers['ticks']} ticks with {tiers['reads_fast']} "
          f"fast reads, {tiers['slow_ticks']} slow ticks with {tiers['reads_slow']} slow reads, {GPUS} GPUs)")
    print(f"{'load average':>24}: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':>24}  ({run['ticks']} ticks, {run['late_ticks']} skipped, "
          f"{run['thread_cpu_s'] * 1e3:.1f} ms sampler CPU in {run['elapsed_s']:.2f} s)")
    for name, ok in checks:
        print(f"{'met' if ok else 'MISSED':>24}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
