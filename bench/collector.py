#!/usr/bin/env python3
"""Collector benchmark: many simulated agents from one process against a real collector.

Phase 1 (ingest): `--agents` streams (one gRPC channel each, like real agents), each sending
one batch of `--points` points per second for `--duration` seconds, staggered over the
second. Prints sustained ingest (acknowledged points/s), batch ack latency p50/p99/max (send
to ack, which follows the SQLite commit), and the delivery latency p50/p99 seen by a
subscriber (send to arrival at the consumer) that follows one marker point per batch.
The first `--warmup` seconds are not counted.

Phase 2 (replay): a spool holding `--replay-batches` batches of `--points` points (the
state after an outage) is drained by the real stream client; prints batches/s and points/s.

The collector runs as its own processes on loopback, plaintext, or with `--tls` mutual TLS
as deployed (a throwaway CA, the collector's certificate, one client certificate per
simulated agent naming its host id; tests/pki.py), and its CPU is reported apart from this
process's. Several collectors (`--collectors N`, agent i on collector i mod N; `--extra` gives each
config more TOML, e.g. a [bus] section, `{name}` standing for c0, c1...): bench/fleet_bus.py.

Usage:
    .venv/bin/python bench/collector.py                      # the issue's target: 1000 x 100 for 60 s
    .venv/bin/python bench/collector.py --agents 200 --duration 10 --replay-batches 2000
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import psutil  # noqa: E402

from agent.proto import collector_pb2, collector_pb2_grpc  # noqa: E402
from agent.stream.client import PUBLISH, StreamClient  # noqa: E402
from agent.stream.spool import Spool, encode_record  # noqa: E402
from agent.wire.columns import Columns, SeriesEntries  # noqa: E402

TOKEN = "bench-consumer-token-0123456789"
METRICS = ["gpu_utilization_percent", "gpu_memory_busy_percent", "gpu_memory_used_bytes", "gpu_memory_total_bytes",
           "gpu_memory_used_percent", "gpu_temperature_celsius", "gpu_power_watts", "gpu_sm_clock_mhz",
           "gpu_memory_clock_mhz", "gpu_energy_joules_total", "gpu_fan_speed_percent"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def make_batch(host: str, epoch: int, seq: int, points: int, now: float) -> collector_pb2.Batch:
    """A host's second: GPU metrics for 8 GPUs, then host figures, then one marker (last)."""
    batch = collector_pb2.Batch(host_id=host, epoch=epoch, seq=seq, created=now)
    batch.labels["cluster"] = "bench"
    entries, cols = SeriesEntries(), Columns()
    for i in range(points - 1):
        gpu, metric = divmod(i, len(METRICS))
        labels = {}
        if gpu < 8:
            labels = {"gpu": str(gpu), "uuid": f"GPU-{host}-{gpu:04d}", "vendor": "nvidia",
                      "model": "Tesla P100-PCIE-16GB"}
        v = random.random() * 100
        cols.add(entries(METRICS[metric] if gpu < 8 else f"host_figure_{i}", labels), float(int(now)), 100,
                 v * 100, v - 1, v + 1, v)
    cols.add(entries("bench_marker", {}), now, 1, seq, seq, seq, seq)
    cols.write_to(batch)
    return batch


def start_collector(root: Path, store: list[str] = (), pki=None, extra: str = "") -> tuple[subprocess.Popen, int, int]:
    root.mkdir(parents=True, exist_ok=True)
    ingest, consumers = free_port(), free_port()
    config = root / "collector.toml"
    text = (f'[collector]\ndata_dir = "{root / "data"}"\nlog_level = "warning"\n'
            f'[ingest]\nlisten = "127.0.0.1:{ingest}"\n'
            f'[consumers]\nlisten = "127.0.0.1:{consumers}"\ntokens = ["{TOKEN}"]\n'
            + ('[tls]\nplaintext = true\n' if pki is None else
               f'[tls]\ncert = "{pki.root}/collector.crt"\nkey = "{pki.root}/collector.key"\nclient_ca = "{pki.root}/ca.crt"\n')
            + ("[store]\n" + "\n".join(store) + "\n" if store else "") + extra)
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "agent.collector.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(root / "collector.log", "wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with channel(f"127.0.0.1:{consumers}", pki) as ch:
                collector_pb2_grpc.ConsumersStub(ch).Agents(collector_pb2.AgentsRequest(), timeout=1,
                                                            metadata=[("authorization", f"Bearer {TOKEN}")])
            return proc, ingest, consumers
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit("collector did not start: " + (root / "collector.log").read_text()[-2000:])


def channel(target: str, pki=None, client: str | None = None, aio: bool = False):
    """A channel to the collector: plaintext, or TLS trusting the bench CA (with `client`'s
    certificate for ingest)."""
    grpc_ = grpc.aio if aio else grpc
    if pki is None:
        return grpc_.insecure_channel(target)
    ca = (pki.root / "ca.crt").read_bytes()
    key, cert = ((pki.root / f"{client}.key").read_bytes(), (pki.root / f"{client}.crt").read_bytes()) if client else (None, None)
    return grpc_.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert),
                                options=[("grpc.ssl_target_name_override", "localhost")])


async def agent(i: int, target: str, args, t_start: float, t_end: float, acks: list, counters: dict) -> None:
    host = f"bench-{i:05d}"
    channel_ = channel(target, args.pki, host, aio=True)
    call = channel_.stream_stream(PUBLISH, request_serializer=None,
                                 response_deserializer=collector_pb2.Ack.FromString)()
    # Built once per simulated agent; each second only the numbers change (what a real
    # agent pays for its batch is not what this benchmark measures).
    batch = make_batch(host, 1, 1, args.points, time.time())
    sent: dict[int, float] = {}

    async def reader():
        async for ack in call:
            t = time.time()
            t0 = sent.pop(ack.seq, None)
            if t0 is not None and t0 >= t_start + args.warmup:
                acks.append((t0, t - t0))  # (sent, ack latency)
            if t_start + args.warmup <= t <= t_end:  # throughput: acks that came in the window
                counters["points"] += args.points
                counters["batches"] += 1

    task = asyncio.create_task(reader())
    seq = 0
    next_send = t_start + (i / args.agents)  # staggered over the first second
    try:
        while True:
            now = time.time()
            if next_send > t_end:
                break
            if next_send > now:
                await asyncio.sleep(next_send - now)
            while len(sent) >= args.max_in_flight:  # like a real agent (stream.max_in_flight)
                await asyncio.sleep(0.05)
            if time.time() > t_end:
                break
            seq += 1
            now = time.time()
            n = len(batch.ts)
            batch.ts[:] = [float(int(now))] * (n - 1) + [now]
            batch.sum[n - 1] = batch.last[n - 1] = seq
            batch.seq, batch.created = seq, now
            sent[seq] = now
            await call.write(batch.SerializeToString())
            counters["sent"] += 1
            next_send += 1.0
        await call.done_writing()
        await asyncio.wait_for(task, 180)  # an overloaded collector still answers everything
    except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
        counters["errors"] += 1
        if counters["errors"] <= 3:
            print(f"agent {host}: {e}", file=sys.stderr)
    finally:
        await channel_.close()


async def subscriber(target: str, delivery: list, t_measure: float, stop: asyncio.Event, pki=None) -> None:
    async with channel(target, pki, aio=True) as ch:
        stub = collector_pb2_grpc.ConsumersStub(ch)
        call = stub.Subscribe(collector_pb2.SubscribeRequest(metrics=["bench_marker"], no_snapshot=True),
                              metadata=[("authorization", f"Bearer {TOKEN}")])
        reader = asyncio.ensure_future(stop.wait())
        async for update in call:
            now = time.time()
            for s in update.samples:
                if s.point.ts >= t_measure:
                    delivery.append(now - s.point.ts)
            if stop.is_set():
                break
        reader.cancel()


async def ingest_phase(args, ingest: list[int], consumers: int, procs_: list[subprocess.Popen]) -> dict:
    acks: list[tuple[float, float]] = []
    delivery: list[float] = []
    counters = {"points": 0, "batches": 0, "sent": 0, "errors": 0}
    t_start = time.time() + 2.0  # time to open every channel first
    t_end = t_start + args.warmup + args.duration
    stop = asyncio.Event()
    sub = asyncio.create_task(subscriber(f"127.0.0.1:{consumers}", delivery, t_start + args.warmup, stop, args.pki))
    me = psutil.Process()
    # Each collector is two processes: gRPC and fan-out in the main one, the store writer
    # (agent/collector/writer.py) in a child. Main processes first.
    mains = [psutil.Process(p.pid) for p in procs_]
    procs = mains + [c for m in mains for c in m.children(recursive=True)]

    def cpu() -> list[float]:
        return [sum(p.cpu_times()[:2]) for p in procs]

    # Agent i publishes to collector i mod N (agents list one collector each).
    tasks = [asyncio.create_task(agent(i, f"127.0.0.1:{ingest[i % len(ingest)]}", args, t_start, t_end, acks, counters))
             for i in range(args.agents)]
    await asyncio.sleep(max(0.0, t_start + args.warmup - time.time()))
    c0, m0, w0 = cpu(), me.cpu_times(), time.time()
    await asyncio.sleep(max(0.0, t_end - time.time()))
    c1, m1, w1 = cpu(), me.cpu_times(), time.time()
    rss = sum(p.memory_info().rss for p in procs)
    await asyncio.gather(*tasks)
    stop.set()
    await asyncio.sleep(1.5)
    sub.cancel()
    wall = w1 - w0
    latency = [lat for _, lat in acks]
    return {"offered_batches_per_s": args.agents, "points_per_s": counters["points"] / args.duration, "batches_per_s": counters["batches"] / args.duration,
            "timeline": acks,
            "ack_p50_ms": pct(latency, 50) * 1000, "ack_p99_ms": pct(latency, 99) * 1000,
            "ack_max_ms": max(latency or [0]) * 1000,
            "delivery_p50_ms": pct(delivery, 50) * 1000, "delivery_p99_ms": pct(delivery, 99) * 1000,
            "delivered": len(delivery), "errors": counters["errors"],
            "collector_cpu_pct": 100 * (sum(c1) - sum(c0)) / wall,
            "collector_main_cpu_pct": 100 * sum(c1[i] - c0[i] for i in range(len(mains))) / wall,
            "collector_processes": len(procs),
            "bench_cpu_pct": 100 * ((m1.user + m1.system) - (m0.user + m0.system)) / wall,
            "collector_rss_mib": rss / 2**20}


def replay_phase(args, root: Path, ingest: int) -> dict:
    spool = Spool(root / "spool", max_bytes=4 << 30, segment_bytes=8 << 20, fsync=True)
    now = time.time()
    record_sizes = []
    chunk = []
    for seq in range(1, args.replay_batches + 1):
        payload = make_batch("bench-replay", 7, seq, args.points, now - args.replay_batches + seq).SerializeToString()
        if seq == 1:
            record_sizes = [len(payload), len(encode_record(7, 1, payload))]
        chunk.append((7, seq, payload))
        if len(chunk) == 500:
            spool.append(chunk)
            chunk = []
    spool.append(chunk)
    pki = args.pki
    if pki is not None:
        pki.issue("bench-replay", "bench-replay")
    tls = dict(plaintext=False, ca=str(pki.root / "ca.crt"), cert=str(pki.root / "bench-replay.crt"),
               key=str(pki.root / "bench-replay.key"), server_name="localhost") if pki else \
        dict(plaintext=True, ca="", cert="", key="", server_name="")
    settings = SimpleNamespace(endpoints=[f"127.0.0.1:{ingest}"], **tls, max_message_bytes=4 << 20, max_in_flight=256, keepalive_time=30.0,
                               keepalive_timeout=10.0, connect_timeout=5.0, backoff_base=0.2,
                               backoff_multiplier=1.6, backoff_jitter=0.2, backoff_max=2.0)
    client = StreamClient(settings, spool)
    t0 = time.perf_counter()
    client.start()
    while spool.backlog()[0] > 0:
        time.sleep(0.05)
        if time.perf_counter() - t0 > 300:
            break
    elapsed = time.perf_counter() - t0
    client.stop()
    spool.close()
    return {"replay_batches": args.replay_batches, "replay_s": elapsed,
            "replay_batches_per_s": args.replay_batches / elapsed,
            "replay_points_per_s": args.replay_batches * args.points / elapsed,
            "batch_bytes_protobuf": record_sizes[0], "batch_bytes_spooled_zlib": record_sizes[1]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=15.0,
                   help="seconds not measured: 1,000 new agents register ~100k series in the first few")
    p.add_argument("--replay-batches", type=int, default=10_000)
    p.add_argument("--max-in-flight", type=int, default=256, help="unacknowledged batches per agent")
    p.add_argument("--tls", action="store_true", help="mutual TLS as deployed (default: plaintext on loopback)")
    p.add_argument("--timeline", type=float, default=0, metavar="SECONDS",
                   help="also print the ack p99 of each window of this many seconds (where stalls come from)")
    p.add_argument("--store", action="append", default=[], metavar="KEY=VALUE",
                   help='a [store] setting for the collector, as TOML (e.g. --store \'rollup_flush = "60s"\')')
    p.add_argument("--collectors", type=int, default=1, help="collector processes (scale-out: give --extra a [bus])")
    p.add_argument("--extra", default="", help="more TOML for every collector's config; {name} is c0, c1, ...")
    args = p.parse_args()
    # As in the collector: 1,000 streams' worth of objects make the default GC stall for
    # long enough to show up in the latencies measured here.
    import gc
    gc.set_threshold(20_000, 100, 1000)
    root = Path(tempfile.mkdtemp(prefix="egs-bench-collector-"))
    args.pki = None
    if args.tls:
        sys.path.insert(0, str(REPO / "tests"))
        from pki import PKI
        t0 = time.perf_counter()
        args.pki = PKI(root / "pki")
        for i in range(args.agents):
            args.pki.issue(f"bench-{i:05d}", f"bench-{i:05d}")
        print(f"# mutual TLS: {args.agents} client certificates issued in {time.perf_counter() - t0:.1f} s")
    started = [start_collector(root / f"c{i}", args.store, args.pki, args.extra.replace("{name}", f"c{i}"))
               for i in range(args.collectors)]
    procs = [p for p, _, _ in started]
    proc, ingest, consumers = started[0]
    try:
        print(f"# collector bench: {args.agents} agents x 1 batch/s x {args.points} points, {args.duration:g} s "
              f"measured after {args.warmup:g} s warm-up; {os.cpu_count()} CPUs; data in {root}")
        r = asyncio.run(ingest_phase(args, [i for _, i, _ in started], consumers, procs))
        print(f"ingest: {r['points_per_s']:,.0f} points/s sustained ({r['batches_per_s']:,.0f} batches/s acked "
              f"of {r['offered_batches_per_s']:,} offered), errors {r['errors']}")
        print(f"ack latency: p50 {r['ack_p50_ms']:.1f} ms, p99 {r['ack_p99_ms']:.1f} ms, max {r['ack_max_ms']:.1f} ms")
        if args.timeline:
            windows: dict[int, list[float]] = {}
            t_first = min((t for t, _ in r["timeline"]), default=0)
            for t, lat in r["timeline"]:
                windows.setdefault(int((t - t_first) // args.timeline), []).append(lat)
            print("ack p99 by send time: " + ", ".join(
                f"{k * args.timeline:g}s {pct(v, 99) * 1000:.0f}" for k, v in sorted(windows.items())) + " (ms)")
        print(f"subscriber delivery (send -> consumer): p50 {r['delivery_p50_ms']:.1f} ms, "
              f"p99 {r['delivery_p99_ms']:.1f} ms over {r['delivered']} updates")
        print(f"CPU: collector {r['collector_cpu_pct']:.0f} % (main process {r['collector_main_cpu_pct']:.0f} %, "
              f"the other {r['collector_processes'] - 1} {r['collector_cpu_pct'] - r['collector_main_cpu_pct']:.0f} %), "
              f"bench (simulated agents) {r['bench_cpu_pct']:.0f} % (100 % = one core); "
              f"collector RSS {r['collector_rss_mib']:.0f} MiB (all its processes)")
        # The figure that carries over to a collector host of its own (the simulated agents
        # share this machine's cores): CPU time per 1,000 points acknowledged.
        if r["points_per_s"]:
            print(f"collector CPU per 1,000 points: {r['collector_cpu_pct'] * 10 / (r['points_per_s'] / 1000):.1f} ms "
                  f"(bench: {r['bench_cpu_pct'] * 10 / (r['points_per_s'] / 1000):.1f} ms)")
        size = sum(f.stat().st_size for i in range(args.collectors) for f in (root / f"c{i}" / "data").iterdir())
        print(f"store: {size / 2**20:.0f} MiB on disk (db + WAL) after the ingest phase")
        if args.replay_batches:
            # A fresh collector: the ingest phase may have left it with a backlog to commit.
            for p_ in procs:
                p_.send_signal(signal.SIGTERM)
            for p_ in procs:
                p_.wait(120)
            proc, ingest, consumers = start_collector(root / "replay", args.store, args.pki,
                                                      args.extra.replace("{name}", "replay"))
            procs = [proc]
            rr = replay_phase(args, root, ingest)
            print(f"spool replay: {rr['replay_batches']} batches in {rr['replay_s']:.1f} s = "
                  f"{rr['replay_batches_per_s']:,.0f} batches/s, {rr['replay_points_per_s']:,.0f} points/s")
            print(f"batch of {args.points} points: {rr['batch_bytes_protobuf']} bytes protobuf, "
                  f"{rr['batch_bytes_spooled_zlib']} bytes spooled (zlib level 1 + header)")
    finally:
        for p_ in procs:
            if p_.poll() is None:
                p_.send_signal(signal.SIGTERM)
        for p_ in procs:
            try:
                p_.wait(30)
            except subprocess.TimeoutExpired:
                p_.kill()
        import shutil
        if os.environ.get("EGS_BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
