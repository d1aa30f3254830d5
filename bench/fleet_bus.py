#!/usr/bin/env python3
"""Collectors on a NATS JetStream bus (scale-out mode) against single-box mode, same load.

Starts a real nats-server (JetStream, a temporary store; tests/natsbus.py) and runs
bench/collector.py's load (`--agents` x one 100-point batch a second, agent i on collector
i mod N) through 1, 2 and 3 collectors on the bus, and once without a bus; each with the
embedded SQLite store. Prints bench/collector.py's figures per run (points/s, ack p50/p99,
collector CPU per 1,000 points) and nats-server's CPU per 1,000 points over the run.

Usage:
    .venv/bin/python bench/fleet_bus.py [--agents 500 --duration 30 --collectors 1,2,3]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import psutil  # noqa: E402

import natsbus  # noqa: E402  (tests/natsbus.py: nats-server as a process)


def run(args, collectors: int, nats_url: str | None) -> str:
    cmd = [sys.executable, str(REPO / "bench" / "collector.py"), "--agents", str(args.agents), "--points", "100",
           "--duration", str(args.duration), "--warmup", str(args.warmup), "--replay-batches", "0",
           "--collectors", str(collectors)]
    if nats_url:
        cmd += ["--extra", f'[bus]\nnats = ["{nats_url}"]\nname = "{{name}}"\nmax_mib = 768\n']
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.duration + args.warmup + 300)
    if done.returncode != 0:
        print(done.stderr[-3000:])
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=500)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--collectors", default="1,2,3")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without a bus")
    args = p.parse_args()
    print(f"# {args.agents} agents x 100 points/s, {args.duration:g} s measured after {args.warmup:g} s; "
          f"{os.cpu_count()} CPUs; SQLite store in each collector")
    if not args.no_baseline:
        print("## single-box mode (no bus), 1 collector")
        print(run(args, 1, None), flush=True)
    for n in [int(x) for x in args.collectors.split(",")]:
        root = Path(tempfile.mkdtemp(prefix="egs-bench-bus-"))
        server = natsbus.NatsServer(root / "nats").start()
        try:
            proc = psutil.Process(server.proc.pid)
            c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            out = run(args, n, server.url)
            cpu = 100 * (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
            print(f"## bus: {n} collector(s) on one nats-server (JetStream, file store)")
            print(out, end="")
            m = re.search(r"ingest: ([\d,]+) points/s", out)
            if m:
                rate = float(m.group(1).replace(",", ""))
                print(f"nats-server: {cpu:.0f} % of a core over the run (warm-up included) = "
                      f"{cpu * 10 / (rate / 1000):.1f} ms per 1,000 points\n", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
