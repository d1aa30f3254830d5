#!/usr/bin/env python3
"""How much of the daemon's one-second tick the alarm engine takes, and what a recording costs.

Prints (or with --json, emits) three figures:
- engine: evaluating R rules over G GPUs (every rule due every tick, 5-minute average over a
  full window of 1-second buckets in the real `agent.windows.Windows`), per tick;
- publish: the copy of all states the gRPC service reads, per tick;
- recording: copying, compressing and writing G GPUs x S seconds x H Hz of raw samples
  (synthetic ring), and the file's size.
Short by design (a few seconds of one core) so it can run beside other work.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.alarms.engine import Engine  # noqa: E402
from agent.alarms.rules import Level, Rule  # noqa: E402
from agent.recorder.store import Recorder  # noqa: E402
from agent.sources.base import Sample  # noqa: E402
from agent.windows import Windows  # noqa: E402

METRICS = ("gpu_temperature_celsius", "gpu_utilization_percent", "gpu_power_watts", "gpu_memory_used_percent")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(p / 100 * len(values))) - 1)]


def bench_engine(gpus: int, rules: int, ticks: int) -> dict:
    now = [1_700_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    windows = Windows([10, 60, 300, 900], clock)
    labels = [{"gpu": str(g), "uuid": f"GPU-{g}", "vendor": "nvidia", "model": "Tesla P100-PCIE-16GB"}
              for g in range(gpus)]
    for second in range(300):
        for ls in labels:
            for m in METRICS:
                windows.add(Sample(m, ls, 100, 6500.0 + second, 60.0, 70.0, 65.0, now[0] - 300 + second))
    rule_set = [Rule(name=f"r{i}", metric=METRICS[i % len(METRICS)], levels=(Level("warning", 60.0 + i % 20),
                                                                            Level("critical", 90.0)),
                     window_s=300.0, interval_s=1.0, trigger_m=3, trigger_n=5) for i in range(rules)]
    engine = Engine(rule_set, windows, clock)
    engine.evaluate(now[0])
    evaluate, publish = [], []
    for _ in range(ticks):
        now[0] += 1.0
        t0 = time.perf_counter()
        engine.evaluate(now[0])
        t1 = time.perf_counter()
        json.loads(json.dumps(engine.states(), default=str))
        t2 = time.perf_counter()
        evaluate.append(t1 - t0)
        publish.append(t2 - t1)
    return {"gpus": gpus, "rules": rules, "series": gpus * rules, "ticks": ticks,
            "evaluate_ms_median": statistics.median(evaluate) * 1e3, "evaluate_ms_p99": pct(evaluate, 99) * 1e3,
            "publish_ms_median": statistics.median(publish) * 1e3}


class SyntheticCore:
    def __init__(self, gpus, hz, seconds, now):
        self.gpus, self.hz, self.seconds, self.now = gpus, hz, seconds, now

    def devices(self):
        return [SimpleNamespace(index=g) for g in range(self.gpus)]

    def ring(self, gpu, since=None):
        n = int(self.hz * self.seconds)
        ts = [self.now - self.seconds + i / self.hz for i in range(n)]
        values = {m: [60.0 + 10 * math.sin(t / 3 + gpu) for t in ts] for m in METRICS}
        values.update({m: [None] * n for m in ("gpu_fan_speed_percent", "gpu_energy_joules_total")})
        values.update({m: [1328.0] * n for m in ("gpu_sm_clock_mhz", "gpu_memory_clock_mhz")})
        return SimpleNamespace(timestamps=ts, values=values)


def bench_recording(gpus: int, hz: float, seconds: float) -> dict:
    now = time.time()
    core = SyntheticCore(gpus, hz, seconds, now)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp), core, lambda: now, before_s=seconds, after_s=0.0)
        t0 = time.perf_counter()
        header = rec.record_now(range(gpus), seconds)
        elapsed = time.perf_counter() - t0
        rec.stop()
    return {"gpus": gpus, "hz": hz, "seconds": seconds, "samples": header["samples"],
            "write_ms": elapsed * 1e3, "bytes": header["size_bytes"],
            "bytes_per_sample_row": header["size_bytes"] / header["samples"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rules", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"engine": bench_engine(args.gpus, args.rules, args.ticks),
              "recording": bench_recording(args.gpus, 100.0, 40.0)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    e, r = result["engine"], result["recording"]
    print(f"engine: {e['rules']} rules x {e['gpus']} GPUs = {e['series']} series, all due every tick: "
          f"evaluate median {e['evaluate_ms_median']:.2f} ms, p99 {e['evaluate_ms_p99']:.2f} ms; "
          f"publish median {e['publish_ms_median']:.2f} ms")
    print(f"recording: {r['gpus']} GPUs x {r['seconds']:g} s x {r['hz']:g} Hz = {r['samples']} sample rows: "
          f"{r['write_ms']:.0f} ms on the recorder thread, {r['bytes']} bytes "
          f"({r['bytes_per_sample_row']:.1f} bytes per row of 12 fields)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
