"""What the native sampler costs per read, against the reads alone, and how many library calls
it makes per GPU per second.

On a simulated 8-GPU host (native/sim/scenarios/eight-nvidia.toml) reading every catalogue
field, three loops make the same NVML calls on the same simulated library (the core on its
per-field path, every field every tick, slow_hz = hz, as the other two do):
- a bare C loop (bench/bare_loop.c, compiled here), unpaced: what the reads cost alone
  (library_ns_per_read), and paced on the same 1 kHz absolute deadline grid as the core:
  the reads plus the sleeping and waking, no agent code (paced_floor_ns_per_read);
- the core at 1 kHz: its sampler thread's CPU time per read (native_cpu_ns_per_read), and its
  own work, the fold of a tick into accumulators and ring, timed inside it (fold_ns_per_read).
  The floor moves with the machine's load from one minute to the next, so the two run in
  pairs, back to back (--pairs, 2 s each side after a 0.5 s warm-up for the core, the order
  alternating): native_over_floor_percent is the median pair's CPU per read against the
  floor's. On a VM most of both loops' CPU is the timer wake-up (~20 us of a ~27 us tick here)
  and it moves by tens of percent between runs, more than the 10 % judged, so each loop also
  reports its median tick's work, wake-up to the end of its reads (the core: and of its
  fold), in the same log-linear buckets (native/work_hist.h): core_added_ns_per_read is the
  difference per read, and native_over_floor_by_work_percent that over the paced floor. Both
  loops sleep the same way (an absolute CLOCK_MONOTONIC deadline; the core's condition-variable
  wait and the bare loop's clock_nanosleep cost the same per wake-up), so the difference in
  their CPU is the difference in their work;
- a plain Python loop over pynvml, in a subprocess (pynvml finds NVML via LD_LIBRARY_PATH).

Draining is timed at 10 Hz and at 1 kHz with the same number of devices (three alternating
rounds of 15 drains each, the median of each rate), to show its cost does not follow the rate.

Library calls per GPU per second are counted by the core (and checked against the simulated
library's own per-function count) in steady state at the agent's defaults (gpu.hz 10,
gpu.slow_hz 1, gpu.slow_fields) and at 100 Hz, with memory and temperature on either tier, on the driver's buffers and batched calls where it has them and
on the per-field path, with the fields read by each listed. Counts do not move with the
machine's load; the CPU figures do: run it on a quiet machine.

usage: python bench/sampler.py [--json] [--seconds S] [--pairs N] [--pair-seconds S]
"""
from __future__ import annotations

import argparse
import ctypes
import functools
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
from agent.native import Core  # noqa: E402

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


@functools.cache
def bare_loop_exe() -> Path:
    exe = Path(tempfile.mkdtemp(prefix="egs-bench-")) / "bare_loop"
    subprocess.run(["cc", "-O2", "-I", str(ROOT / "native"), "-o", str(exe), str(ROOT / "bench" / "bare_loop.c"), "-ldl", "-lm"],
                   check=True)
    return exe


def bare_loop(rounds: int, hz: float | None = None) -> dict:
    """The bare C loop's report: CPU ns per read (ns_per_read) and the median round's work,
    wake-up to the end of its reads (round_work_p50_ns); with hz, paced on a deadline grid
    like the core."""
    exe = bare_loop_exe()
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("eight-nvidia")))
    argv = [str(exe), str(sim_paths.NVML_LIB), str(rounds)] + ([str(hz)] if hz else [])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["gpus"] == GPUS, report
    return report


def bare_loop_ns(rounds: int, hz: float | None = None) -> float:
    return bare_loop(rounds, hz)["ns_per_read"]


def pynvml_ns(rounds: int) -> float:
    env = sim_paths.nvml_env("eight-nvidia")
    result = subprocess.run([sys.executable, "-c", PYNVML_LOOP, str(rounds)], env=env,
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["gpus"] == GPUS, report
    return report["ns_per_read"]


def _core(hz: float, slow_hz: float, paths: bool = False, ring_seconds: float = 1.0,
          slow_fields: tuple[str, ...] = sim_paths.CLASSIC_SLOW) -> Core:
    """The per-field loops compare polled reads per tick: memory and temperature on the fast
    tier (CLASSIC_SLOW) unless `slow_fields` says otherwise."""
    os.environ["EGS_SIM_SCENARIO"] = str(sim_paths.scenario("eight-nvidia"))
    return Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, events=False, hz=hz,
                slow_hz=slow_hz, ring_seconds=ring_seconds, batch=paths, buffers=paths,
                slow_fields=slow_fields)


def native_run(seconds: float) -> dict:
    """The core at 1 kHz on the per-field path (the calls the bare loop makes)."""
    core = _core(TARGET_HZ, TARGET_HZ, ring_seconds=60.0)
    core.start()
    assert len(core.devices()) == GPUS
    time.sleep(seconds)
    core.stop()
    return core.sampler_stats()


def native_window(seconds: float, warmup: float = 0.5) -> tuple[float, float]:
    """The core at 1 kHz on the per-field path: its sampler thread's CPU ns per read between
    two snapshots after `warmup` (so thread start and the devices' probe are left out), and
    the median tick's work in ns (tick_work_p50_us, over the whole run)."""
    core = _core(TARGET_HZ, TARGET_HZ, ring_seconds=60.0)
    core.start()
    try:
        time.sleep(warmup)
        s0 = core.sampler_stats()
        time.sleep(seconds)
        s1 = core.sampler_stats()
    finally:
        core.stop()
    return ((s1["thread_cpu_s"] - s0["thread_cpu_s"]) * 1e9 / (s1["reads"] - s0["reads"]),
            s1["tick_work_p50_us"] * 1e3)


def floor_pairs(pairs: int, seconds: float) -> list[dict]:
    """The paced floor and the core, `pairs` times, each pair run back to back (the order
    alternating, so a machine getting busier or quieter favours neither): CPU ns per read
    of each, and the median tick's work of each."""
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            bare = bare_loop(rounds=int(TARGET_HZ * seconds), hz=TARGET_HZ)
            core_ns, core_work = native_window(seconds)
        else:
            core_ns, core_work = native_window(seconds)
            bare = bare_loop(rounds=int(TARGET_HZ * seconds), hz=TARGET_HZ)
        out.append({"floor_ns": bare["ns_per_read"], "core_ns": core_ns,
                    "floor_work_ns": bare["round_work_p50_ns"], "core_work_ns": core_work})
    return out


def drain_cpu_us(hz: float, drains: int = 30, interval: float = 0.1) -> list[float]:
    """Thread CPU time of each of `drains` Core.drain() calls (C copy + Python conversion)."""
    core = _core(hz, hz)
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
    return costs


def sim_calls() -> dict[str, int]:
    """Calls per NVML function the simulated library counted in this process."""
    fn = ctypes.CDLL(str(sim_paths.NVML_LIB)).egs_sim_nvml_calls
    fn.restype = ctypes.c_uint
    names, counts = (ctypes.c_char_p * 128)(), (ctypes.c_ulonglong * 128)()
    n = fn(128, names, counts, 0)
    return {names[i].decode(): counts[i] for i in range(min(n, 128))}


def calls_run(hz: float, slow_hz: float, paths: bool, slow_fields: tuple[str, ...],
              warmup: float = 1.3, seconds: float = 3.0) -> dict:
    """Library calls per GPU per second in steady state (between two snapshots after a
    warm-up, so start-up probes and slot 0 are left out), per function as the simulator
    counted them, and which fields were read (metrics with samples in the window)."""
    core = _core(hz, slow_hz, paths, slow_fields=slow_fields)
    core.start()
    try:
        time.sleep(warmup)
        core.drain()
        s0, c0 = core.sampler_stats(), sim_calls()
        time.sleep(seconds)
        s1, c1 = core.sampler_stats(), sim_calls()
        stats = core.drain()
        paths_used = core.devices()[0].paths
    finally:
        core.stop()
    span = s1["elapsed_s"] - s0["elapsed_s"]
    per_fn = {f: round((c1[f] - c0.get(f, 0)) / GPUS / span, 2) for f in c1 if c1[f] != c0.get(f, 0)}
    read = sorted({st.metric for st in stats if st.gpu == 0 and st.count > 0})
    return {"hz": hz, "slow_hz": slow_hz, "slow_fields": list(slow_fields), "span_s": round(span, 3),
            "library_calls_per_gpu_per_s": round((s1["library_calls"] - s0["library_calls"]) / GPUS / span, 2),
            "simulator_counted_per_gpu_per_s": round(sum(per_fn.values()), 2),
            "per_function": per_fn, "fields_read": len(read), "paths": paths_used,
            "values_per_gpu_per_s": round((s1["reads"] - s0["reads"]) / GPUS / span, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object with the figures")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long the core samples (default 5)")
    ap.add_argument("--pairs", type=int, default=5, help="floor/core pairs run back to back (default 5)")
    ap.add_argument("--pair-seconds", type=float, default=2.0, help="each side of a pair (default 2)")
    args = ap.parse_args()
    if args.pairs < 1 or not 0.5 <= args.pair_seconds <= 60 or not 1 <= args.seconds <= 600:
        ap.error("--pairs must be >= 1, --pair-seconds within 0.5..60, --seconds within 1..600")
    try:
        sim_paths.build_sim()
    except RuntimeError as e:  # only the NVML simulation is needed here
        if not sim_paths.NVML_LIB.exists():
            raise
        print(f"warning: using the existing {sim_paths.NVML_LIB}; rebuild failed: {e}", file=sys.stderr)

    library = bare_loop_ns(rounds=20000)
    py = pynvml_ns(rounds=1000)
    run = native_run(args.seconds)
    pairs = floor_pairs(args.pairs, args.pair_seconds)
    over = sorted((p["core_ns"] / p["floor_ns"] - 1) * 100 for p in pairs)
    paced = statistics.median(p["floor_ns"] for p in pairs)
    native = statistics.median(p["core_ns"] for p in pairs)
    # What the core adds per read, from the median tick's work against the median paced
    # round's: the wake-ups, which are most of both loops' CPU on a VM and vary by tens of
    # percent between runs, are in neither. A tick makes GPUS * FIELDS reads.
    added = statistics.median((p["core_work_ns"] - p["floor_work_ns"]) / (GPUS * FIELDS) for p in pairs)
    per_tick = run["reads"] / run["ticks"]
    # Alternating, so that both rates see the same moments of the machine.
    drains: dict[float, list[float]] = {10.0: [], 1000.0: []}
    for _ in range(3):
        for hz in drains:
            drains[hz] += drain_cpu_us(hz, drains=15)
    d10, d1k = statistics.median(drains[10.0]), statistics.median(drains[1000.0])
    g = config.parse("").gpu
    # "defaults": gpu.hz, gpu.slow_hz and gpu.slow_fields as shipped; "fast_polled": the same
    # with memory and temperature on the fast tier; "per_field": every field by its own call
    # with memory and temperature fast (the agent before issue 16).
    slow, classic = tuple(g.slow_fields), sim_paths.CLASSIC_SLOW
    calls = {
        "defaults": calls_run(g.hz, g.slow_hz, True, slow),
        "defaults_fast_polled": calls_run(g.hz, g.slow_hz, True, classic),
        "defaults_per_field": calls_run(g.hz, g.slow_hz, False, classic),
        "100hz": calls_run(100.0, g.slow_hz, True, slow),
        "100hz_fast_polled": calls_run(100.0, g.slow_hz, True, classic),
        "100hz_per_field": calls_run(100.0, g.slow_hz, False, classic),
    }
    report = {
        "gpus": GPUS,
        "fields": FIELDS,
        "target_hz": TARGET_HZ,
        "achieved_hz": round(run["achieved_hz"], 2),
        "tick_late_p99_us": run["tick_late_p99_us"],
        "library_ns_per_read": round(library, 2),
        "paced_floor_ns_per_read": round(paced, 2),
        "native_cpu_ns_per_read": round(native, 2),
        # median over the pairs of (core / the floor beside it - 1), and every pair's
        "native_over_floor_percent": round(statistics.median(over), 1),
        "native_over_floor_pairs_percent": [round(x, 1) for x in over],
        "floor_pairs": [{k: round(v, 1) for k, v in p.items()} for p in pairs],
        "core_added_ns_per_read": round(added, 2),
        # the same comparison without the wake-ups' noise: (floor + what the core adds) / floor
        "native_over_floor_by_work_percent": round(added / paced * 100, 1),
        "held_run_native_cpu_ns_per_read": round(run["thread_cpu_s"] * 1e9 / run["reads"], 2),
        "fold_ns_per_read": round(run["fold_p50_us"] * 1e3 / per_tick, 2),
        "fold_mean_ns_per_read": round(run["fold_s"] * 1e9 / run["reads"], 2),
        "pynvml_cpu_ns_per_read": round(py, 2),
        "drain_cpu_us_10hz": round(d10, 2),
        "drain_cpu_us_1khz": round(d1k, 2),
        "library_calls_per_gpu_per_s": {k: v["library_calls_per_gpu_per_s"] for k, v in calls.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for k, v in calls.items():
        # The core's count is the simulator's (nothing else calls NVML in this process then), up
        # to a tick that ran between the two snapshots the core and the library each took.
        # One fast tick's calls (all fast calls plus, at worst, every slow one) over the span.
        counted = v["simulator_counted_per_gpu_per_s"]
        one_tick = counted / v["hz"] + sum(v["per_function"].values()) / v["slow_hz"] / v["hz"]
        assert abs(v["library_calls_per_gpu_per_s"] - counted) <= one_tick / v["span_s"] + 0.01, (k, v)
        assert v["fields_read"] == FIELDS + 1, (k, v)  # + derived memory percent: none lost
    if args.json:
        print(json.dumps({**report, "calls": calls}))
        return 0
    for k, v in report.items():
        print(f"{k:>28}: {v}")
    print(f"{'':>28}  (fold: median of one tick's fold per read; the mean carries preemptions. "
          f"{run['ticks']} ticks, {run['late_ticks']} skipped, {run['thread_cpu_s'] * 1e3:.1f} ms "
          f"sampler CPU in {run['elapsed_s']:.2f} s; {run['read_s'] / run['elapsed_s'] * 100:.1f} % "
          "of the time in vendor calls)")
    for k, v in calls.items():
        print(f"{'calls ' + k:>28}: {v['library_calls_per_gpu_per_s']} per GPU per s at {v['hz']:g} Hz / "
              f"slow {v['slow_hz']:g} Hz ({', '.join(v['slow_fields'])}), {v['values_per_gpu_per_s']} values, {v['fields_read']} metrics read; "
              + ", ".join(f"{f} {n}" for f, n in sorted(v["per_function"].items())))
    checks = [
        ("achieved >= 99 % of target", report["achieved_hz"] >= 0.99 * TARGET_HZ),
        ("core within 10 % of the paced floor (what it adds to a tick's work)",
         report["native_over_floor_by_work_percent"] <= 10.0),
        ("fold <= 10 ns per read at 1 kHz", report["fold_ns_per_read"] <= 10.0),
        ("<= 12 library calls per GPU per s at the defaults",
         report["library_calls_per_gpu_per_s"]["defaults"] <= 12),
        # The cost must not grow with the rate; at 1 kHz the accumulators are often still in
        # cache from the sampler, and the drain is then cheaper, which is no failure.
        ("drain at 1 kHz at most 20 % above 10 Hz", d1k <= 1.2 * d10),
    ]
    for name, ok in checks:
        print(f"{'met' if ok else 'MISSED':>28}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
