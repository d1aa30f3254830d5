"""What the per-process attribution costs (issue 15): `docs/benchmarks.md`, "Workload attribution".

Default run (a minute or so): for 1, 10 and 100 processes per GPU on GPUS simulated GPUs, real
`sleep` processes in real Kubernetes-shaped cgroups (cgroup v1 `cpu` hierarchy, when root can
make them; else where they are), listed by a stand-in for the core's NVML process list, one
attribution pass timed (wall and this process's CPU, median of PASSES) at top_n 10 (the
default: at most 10 processes per GPU are read) and at top_n 100 (every process read). Then the
DRM fdinfo source: its walk of this machine's /proc (no DRM device here: the fixed cost of
looking), and a fixture tree of GPUS x N processes each with one amdgpu client (the parse cost).
Last, the issue's goal point: 8 GPUs x 20 processes at the default 5 s interval, as a share of
one core.

`--churn SECONDS`: the soak behind tests/workload's scaled-down test: short-lived processes
(`sleep LIFETIME`) spawned at RATE a second for SECONDS, every one listed by the stand-in while
it lives (RATE x LIFETIME at a time: 85 at the defaults, so top_n bounds every pass), a pass
every 0.5 s; prints the processes seen, the series of the largest pass, the label
sets seen over the whole run, and this process's RSS at the start, middle and end.

    .venv/bin/python bench/workload.py [--gpus 8] [--passes 30] [--json]
    .venv/bin/python bench/workload.py --churn 60 --rate 170      # 10,000 processes in a minute
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.workload import metrics  # noqa: E402
from agent.workload.attribution import Attributor  # noqa: E402
from agent.workload.fdinfo import DrmFdinfoSource  # noqa: E402
from agent.workload.records import GpuProcess, GpuRef  # noqa: E402

CG = Path("/sys/fs/cgroup/cpu")
POD = "8a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b"


class Listing:
    name = "nvml"

    def __init__(self):
        self.by_gpu: dict[int, list[int]] = {}

    def processes(self, gpus):
        return [GpuProcess(g.index, g.uuid, pid, "nvml", used_memory_bytes=(1 << 20) * (i + 1), sm_percent=1.0)
                for g in gpus for i, pid in enumerate(self.by_gpu.get(g.index, ()))]


def gpus_of(n: int) -> list[GpuRef]:
    return [GpuRef(i, f"GPU-bench-{i}", f"0000:{0x10 + i:02x}:00.0", "nvidia", "bench") for i in range(n)]


def timed_passes(attributor: Attributor, gpus, passes: int) -> dict:
    attributor.run(gpus)  # counters for the rates; not timed
    wall, cpu = [], []
    for _ in range(passes):
        w, c = time.perf_counter(), time.process_time()
        snap = attributor.run(gpus)
        metrics.samples(snap)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_ms": round(statistics.median(wall) * 1e3, 3), "cpu_ms": round(statistics.median(cpu) * 1e3, 3)}


class Cgroups:
    """Kubernetes-shaped cgroups under cpu/egs-bench (removed at the end)."""

    def __init__(self):
        self.ok = os.geteuid() == 0 and (CG / "cgroup.procs").exists()
        self.made: list[Path] = []

    def put(self, pid: int, container: int) -> None:
        if not self.ok:
            return
        d = CG / "egs-bench" / "kubepods" / "burstable" / f"pod{POD}" / f"{container:064x}"
        for p in reversed([d, *d.parents]):
            if CG in p.parents and not p.exists():
                p.mkdir()
                self.made.append(p)
        (d / "cgroup.procs").write_text(str(pid))

    def cleanup(self) -> None:
        for d in reversed(self.made):
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    (CG / "cgroup.procs").write_text(pid)
                d.rmdir()
            except OSError:
                pass


def pass_cost(args) -> dict:
    gpus = gpus_of(args.gpus)
    out = {"gpus": args.gpus, "cgroups": "real kubepods cgroups (v1 cpu)" if Cgroups().ok else "none", "per_gpu": {}}
    for per_gpu in (1, 10, 100):
        cg = Cgroups()
        procs = [subprocess.Popen(["sleep", "600"]) for _ in range(per_gpu * args.gpus)]
        try:
            listing = Listing()
            for i, p in enumerate(procs):
                cg.put(p.pid, i % 4)
                listing.by_gpu.setdefault(i % args.gpus, []).append(p.pid)
            row = {}
            for top_n in (10, 100):
                a = Attributor([listing], top_n=top_n, kubelet=None)
                row[f"top_n_{top_n}"] = timed_passes(a, gpus, args.passes)
            out["per_gpu"][per_gpu] = row
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            cg.cleanup()
    return out


def fdinfo_cost(args) -> dict:
    src = DrmFdinfoSource("/proc")
    src.processes(gpus_of(args.gpus))
    t, c = time.perf_counter(), time.process_time()
    for _ in range(args.passes):
        src.processes(gpus_of(args.gpus))
    host = {"processes": len([n for n in os.listdir("/proc") if n.isdigit()]),
            "fds": sum(len(os.listdir(f"/proc/{n}/fd")) for n in os.listdir("/proc") if n.isdigit()
                       and os.access(f"/proc/{n}/fd", os.R_OK)),
            "wall_ms": round((time.perf_counter() - t) / args.passes * 1e3, 3),
            "cpu_ms": round((time.process_time() - c) / args.passes * 1e3, 3)}
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        gpus = gpus_of(args.gpus)
        for per_gpu in (1, 10, 100):
            root = Path(tmp) / f"proc{per_gpu}"
            pid = 1000
            for g in gpus:
                for _ in range(per_gpu):
                    d = root / str(pid)
                    (d / "fd").mkdir(parents=True)
                    (d / "fdinfo").mkdir()
                    for fd in range(3):  # stdin/out/err: links that are not DRM
                        (d / "fd" / str(fd)).symlink_to("/dev/null")
                    (d / "fd" / "3").symlink_to("/dev/dri/renderD128")
                    (d / "fdinfo" / "3").write_text(
                        f"pos:\t0\nflags:\t02100002\ndrm-driver:\tamdgpu\ndrm-pdev:\t{g.pci_bus_id}\n"
                        f"drm-client-id:\t{pid}\ndrm-memory-vram:\t1024 KiB\ndrm-memory-gtt:\t0 KiB\n"
                        f"drm-engine-gfx:\t{pid} ns\ndrm-engine-compute:\t0 ns\ndrm-engine-dec:\t0 ns\n"
                        f"drm-engine-enc:\t0 ns\n")
                    pid += 1
            src = DrmFdinfoSource(str(root))
            src.processes(gpus)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.passes):
                found = src.processes(gpus)
            assert len(found) == per_gpu * len(gpus)
            fixture[per_gpu] = {"wall_ms": round((time.perf_counter() - t) / args.passes * 1e3, 3),
                                "cpu_ms": round((time.process_time() - c) / args.passes * 1e3, 3)}
    return {"this_host": host, "fixture_per_gpu": fixture}


def goal(args) -> dict:
    gpus = gpus_of(8)
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(8 * 20)]
    cg = Cgroups()
    try:
        listing = Listing()
        for i, p in enumerate(procs):
            cg.put(p.pid, i % 4)
            listing.by_gpu.setdefault(i % 8, []).append(p.pid)
        cost = timed_passes(Attributor([listing], top_n=10), gpus, args.passes)
        cost_all = timed_passes(Attributor([listing], top_n=20), gpus, args.passes)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cg.cleanup()
    return {"8x20_top_n_10": cost, "8x20_top_n_20": cost_all,
            "core_percent_at_5s_top_n_10": round(cost["cpu_ms"] / 5000 * 100, 4),
            "core_percent_at_5s_top_n_20": round(cost_all["cpu_ms"] / 5000 * 100, 4),
            "core_percent_at_1s_top_n_20": round(cost_all["cpu_ms"] / 1000 * 100, 4)}


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def churn(args) -> dict:
    gpus = gpus_of(args.gpus)
    listing = Listing()
    a = Attributor([listing], top_n=10)
    live: list[subprocess.Popen] = []
    seen = 0
    label_sets: set = set()
    max_series = 0
    rss = {"start_kib": rss_kib()}
    start = time.monotonic()
    next_pass = start
    while time.monotonic() - start < args.churn:
        target = int((time.monotonic() - start) * args.rate)
        while seen < target:
            live.append(subprocess.Popen(["sleep", str(args.lifetime)]))
            seen += 1
        live = [p for p in live if p.poll() is None]
        listing.by_gpu = {}
        for i, p in enumerate(live):
            listing.by_gpu.setdefault(i % args.gpus, []).append(p.pid)
        if time.monotonic() >= next_pass:
            next_pass += 0.5
            series = metrics.samples(a.run(gpus))
            sets = {tuple(sorted(s.labels.items())) for s in series}
            max_series = max(max_series, len(series))
            label_sets |= sets
            if "middle_kib" not in rss and time.monotonic() - start > args.churn / 2:
                rss["middle_kib"] = rss_kib()
        time.sleep(0.002)
    for p in live:
        p.wait()
    rss["end_kib"] = rss_kib()
    return {"seconds": args.churn, "processes": seen, "lifetime_s": args.lifetime, "max_series_in_a_pass": max_series,
            "label_sets_over_the_run": len(label_sets),
            "workloads": sorted({dict(s)["workload"] for s in label_sets}), "rss": rss,
            "host_reader_entries_at_end": a.host.tracked()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--churn", type=float, metavar="SECONDS", help="the short-lived process soak instead")
    ap.add_argument("--rate", type=float, default=170.0, help="processes a second for --churn")
    ap.add_argument("--lifetime", type=float, default=0.5, help="seconds each --churn process lives")
    args = ap.parse_args()
    if args.churn:
        result = {"churn": churn(args)}
    else:
        result = {"pass": pass_cost(args), "fdinfo": fdinfo_cost(args), "goal": goal(args)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
