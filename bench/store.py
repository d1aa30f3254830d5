#!/usr/bin/env python3
"""Store benchmark: the collector's SQLite store on its own, on simulated time.

Writes `--hosts` hosts x one 100-point batch a second for `--seconds` simulated seconds
(grouped as the committer groups them: every host's batch of one second in one commit),
with the store's clock following the data so rollup buckets close as they would live.
Prints write cost per batch, disk per host and per kind of row (SQLite's dbstat), and how
long queries take: one metric of one host, and of every host, over the whole run at 10 s
and 1 min. Usage:
    .venv/bin/python bench/store.py                         # 100 hosts x 30 simulated minutes
    .venv/bin/python bench/store.py --hosts 20 --seconds 600
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from agent.collector.store.sqlite import SQLiteStore  # noqa: E402
from agent.proto import collector_pb2  # noqa: E402
from collector import make_batch  # noqa: E402  (bench/collector.py: the same batches)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--seconds", type=int, default=1800)
    p.add_argument("--points", type=int, default=100)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="egs-bench-store-"))
    t0 = 1_700_000_000.0
    now = [t0]
    store = SQLiteStore(root, clock=lambda: now[0], flush_interval=10.0)
    try:
        # One template batch per host; each second only ts, seq and the values move.
        templates = [make_batch(f"bench-{h:04d}", 1, 1, args.points, t0) for h in range(args.hosts)]
        wire_cpu = 0.0
        wall = time.perf_counter()
        cpu = time.process_time()
        for second in range(args.seconds):
            now[0] = t0 + second
            group, wire = [], []
            for b in templates:
                b.seq = second + 1
                n = len(b.ts)
                b.ts[:] = [now[0]] * n
                w0 = time.process_time()
                wire.append(b.SerializeToString())
                group.append(collector_pb2.Batch.FromString(wire[-1]))
                wire_cpu += time.process_time() - w0
            store.write(group, now[0], wire)
            if second % 10 == 0:
                store.rollups.flush_interval = 0.0  # flush on simulated time, not wall time
                store.rollups._last_flush = 0.0
        store.flush()
        cpu = time.process_time() - cpu - wire_cpu
        wall = time.perf_counter() - wall
        batches = args.hosts * args.seconds
        print(f"# store bench: {args.hosts} hosts x {args.seconds} s x {args.points} points; data in {root}")
        print(f"write: {batches:,} batches, {cpu / batches * 1e6:.0f} us CPU a batch "
              f"({batches * args.points / cpu:,.0f} points per CPU second), wall {wall:.0f} s")
        db = sqlite3.connect(root / "collector.db")
        sizes: dict[str, int] = {}
        for name, size in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            kind = name.split("_")[0] if name.startswith(("raw_", "r10_", "r60_", "sqlite_autoindex_r")) else name
            kind = {"sqlite": "rollup unique indexes"}.get(kind, kind)
            sizes[kind] = sizes.get(kind, 0) + size
        rows = {k: sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for (t,) in db.execute(f"SELECT name FROM sqlite_master WHERE type='table' AND name GLOB '{k}_*'"))
                for k in ("raw", "r10", "r60")}
        db.close()
        hours = args.seconds / 3600
        for kind in ("raw", "r10", "r60"):
            print(f"{kind}: {rows[kind]:,} rows, {sizes.get(kind, 0) / max(rows[kind], 1):,.0f} bytes a row, "
                  f"{sizes.get(kind, 0) / args.hosts / hours / 2**20:.1f} MiB per host-hour")
        rest = {k: v for k, v in sizes.items() if k not in ("raw", "r10", "r60")}
        print("other: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(rest.items(), key=lambda x: -x[1])
                                    if v >= 0.05 * 2**20))
        end = t0 + args.seconds
        for host, what in (("bench-0000", "one host"), ("", f"all {args.hosts} hosts")):
            for resolution in ("10s", "1m"):
                q0 = time.perf_counter()
                _, series = store.query("gpu_temperature_celsius", host=host, start=t0, end=end, resolution=resolution)
                took = time.perf_counter() - q0
                points = sum(len(s.points) for s in series)
                print(f"query gpu_temperature_celsius, {what}, {args.seconds / 60:.0f} min at {resolution}: "
                      f"{len(series)} series, {points:,} points in {took * 1000:.0f} ms")
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
