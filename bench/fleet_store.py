#!/usr/bin/env python3
"""The collector's remote-write store against a real VictoriaMetrics (Debian's, started here on
loopback in a temporary directory, as the tests do: tests/engines.py).

`ingest`: bench/collector.py's load (default 1,000 agents x 100 points/s, 60 s measured) with
`[store] backend = "remote_write"` into VictoriaMetrics; prints what bench/collector.py prints
(points/s, ack p50/p99, collector CPU per 1,000 points) and VictoriaMetrics' own CPU and RSS
over the same run.

`query`: a fleet query. Loads one metric (gpu_temperature_celsius, gpu 0) of `--hosts` hosts
for a day at 1-minute points (through the store itself, so the ledger knows the series), then
times `egs-collector query gpu_temperature_celsius --since 24h --resolution 1m` (the CLI over
gRPC, a collector process in between) and, apart, the store's query alone and the engine's
five query_range requests alone.

Usage:
    .venv/bin/python bench/fleet_store.py ingest [--agents 1000 --duration 60] [--store 'remote_aggregates = []']
    .venv/bin/python bench/fleet_store.py query [--hosts 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import psutil  # noqa: E402

import engines  # noqa: E402  (tests/engines.py: the engine as a process)

TOKEN = "bench-consumer-token-0123456789"


class Sampler(threading.Thread):
    """CPU seconds and peak RSS of one process over a run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.stop_event = threading.Event()
        self.peak_rss = 0
        t = self.proc.cpu_times()
        self.cpu0, self.t0 = t.user + t.system, time.monotonic()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def finish(self) -> tuple[float, float]:
        """(CPU % of one core over the run, peak RSS MiB)."""
        self.stop_event.set()
        t = self.proc.cpu_times()
        return 100 * (t.user + t.system - self.cpu0) / (time.monotonic() - self.t0), self.peak_rss / 2**20


def cmd_ingest(args, vm) -> None:
    store = [f'backend = "remote_write"', f'remote_write_url = "{vm.write_url}"', f'query_url = "{vm.query_url}"',
             *args.store]
    cmd = [sys.executable, str(REPO / "bench" / "collector.py"), "--agents", str(args.agents), "--points",
           str(args.points), "--duration", str(args.duration), "--warmup", str(args.warmup), "--replay-batches", "0"]
    for line in store:
        cmd += ["--store", line]
    sampler = Sampler(vm.proc.pid)
    sampler.start()
    subprocess.run(cmd, cwd=REPO, check=True)
    cpu, rss = sampler.finish()
    print(f"victoria-metrics over the whole run (warm-up included): CPU {cpu:.0f} % of a core, peak RSS {rss:.0f} MiB")


def cmd_query(args, vm, root: Path) -> None:
    from agent.collector.store.promql import RemoteReader
    from agent.collector.store.remote_write import RemoteWriteStore
    from agent.proto import collector_pb2
    from agent.wire.columns import append_point

    data = root / "collector-data"
    now = time.time()
    first = int((now - 86400) // 60) * 60 + 60
    minutes = [first + 60 * i for i in range(1440) if first + 60 * i < now - 60]
    store = RemoteWriteStore(data, vm.write_url, vm.query_url, samples_per_request=50_000)
    t0 = time.perf_counter()
    for h in range(args.hosts):
        b = collector_pb2.Batch(host_id=f"host-{h:05d}", epoch=1, seq=1)
        b.labels["cluster"] = "bench"
        for i, ts in enumerate(minutes):
            v = 50 + (h * 7 + i) % 30
            append_point(b, "gpu_temperature_celsius", {"gpu": "0", "uuid": f"GPU-{h:05d}-0"}, ts=float(ts),
                         count=60, sum=60.0 * v, min=v - 1.0, max=v + 1.0, last=float(v))
        store.write([b], now)
    store.close()
    urllib.request.urlopen(vm.url + "/internal/force_flush", timeout=60).read()
    points = args.hosts * len(minutes)
    print(f"loaded {args.hosts} hosts x {len(minutes)} minutes = {points:,} points ({points * 5:,} samples) "
          f"in {time.perf_counter() - t0:.1f} s")

    # The engine alone: the five query_range requests a 1-minute query makes.
    start, end = float(minutes[0]), float(minutes[-1])
    t0 = time.perf_counter()
    size = 0
    for function, suffix in (("last_over_time", ""), ("min_over_time", "_min"), ("max_over_time", "_max"),
                             ("sum_over_time", "_sum"), ("sum_over_time", "_count")):
        q = urllib.parse.urlencode({"query": f'{function}(egs_gpu_temperature_celsius{suffix}[60s])',
                                    "start": f"{start + 59.999:.3f}", "end": f"{end + 59.999:.3f}", "step": "60s"})
        size += len(urllib.request.urlopen(f"{vm.url}/api/v1/query_range?{q}", timeout=120).read())
    engine_s = time.perf_counter() - t0
    print(f"engine alone: 5 query_range requests in {engine_s:.2f} s, {size / 2**20:.0f} MiB of JSON")

    reader = RemoteReader(vm.query_url, data / "ledger.db")
    from agent.collector.store import QueryBounds
    bounds = QueryBounds(max_points=5_000_000, max_series=1_000_000)
    for attempt in range(2):
        t0 = time.perf_counter()
        res, series = reader.query("gpu_temperature_celsius", start=start, end=end + 59, resolution="1m",
                                   limit=10_000, bounds=bounds)
        store_s = time.perf_counter() - t0
        print(f"store query (RemoteReader, in process): {len(series)} series, "
              f"{sum(len(s.points) for s in series):,} points, {store_s:.2f} s")
    reader.close()

    # Through the collector: a process with the remote-write store, the CLI over gRPC.
    ingest, consumers = engines.free_port(), engines.free_port()
    config = root / "collector.toml"
    config.write_text(f'[collector]\ndata_dir = "{data}"\nlog_level = "warning"\n'
                      f'[ingest]\nlisten = "127.0.0.1:{ingest}"\n[consumers]\nlisten = "127.0.0.1:{consumers}"\n'
                      f'max_query_points = 5000000\nmax_query_series = 1000000\n[tls]\nplaintext = true\n'
                      f'[store]\nbackend = "remote_write"\nremote_write_url = "{vm.write_url}"\n'
                      f'query_url = "{vm.query_url}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "run", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(root / "collector.log", "wb"))
    try:
        env = {**os.environ, "EGS_COLLECTOR_TOKEN": TOKEN}
        cli = [sys.executable, "-m", "agent.collector.cli", "query", "gpu_temperature_celsius", "--since", "24h",
               "--resolution", "1m", "--json", "--target", f"127.0.0.1:{consumers}", "--plaintext", "--timeout", "120"]
        for _ in range(100):
            if subprocess.run(cli[:4] + ["--target", f"127.0.0.1:{consumers}", "--plaintext", "--since", "1m"],
                              env=env, cwd=REPO, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        for attempt in range(2):
            t0 = time.perf_counter()
            done = subprocess.run(cli, env=env, cwd=REPO, capture_output=True, text=True)
            cli_s = time.perf_counter() - t0
            if done.returncode != 0:
                print("egs-collector query failed:", done.stderr[-2000:])
                return
            answer = json.loads(done.stdout)
            print(f"egs-collector query (CLI, gRPC, collector process): {len(answer['series'])} series, "
                  f"{sum(len(s['points']) for s in answer['series']):,} points, {cli_s:.2f} s wall "
                  f"({len(done.stdout) / 2**20:.0f} MiB of JSON printed)")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--agents", type=int, default=1000)
    i.add_argument("--points", type=int, default=100)
    i.add_argument("--duration", type=float, default=60.0)
    i.add_argument("--warmup", type=float, default=15.0)
    i.add_argument("--store", action="append", default=[], metavar="KEY=VALUE",
                   help="another [store] line, e.g. --store 'remote_aggregates = []'")
    q = sub.add_parser("query")
    q.add_argument("--hosts", type=int, default=1000)
    args = p.parse_args()
    # As the collector does (agent/collector/cli.py): a query's answer is millions of young
    # objects, and the default GC thresholds walk them over and over (9.7 s instead of 6 s
    # for the 1,000-host query, measured).
    import gc
    gc.set_threshold(20_000, 100, 1000)
    root = Path(tempfile.mkdtemp(prefix="egs-bench-fleet-store-"))
    vm = engines.VictoriaMetrics(root / "vm")
    vm.start()
    print(f"# victoria-metrics {vm.url} (data in {vm.data}); {os.cpu_count()} CPUs")
    try:
        if args.cmd == "ingest":
            cmd_ingest(args, vm)
        else:
            cmd_query(args, vm, root)
    finally:
        vm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
