#!/usr/bin/env python3
"""Issue 14's figures for /metrics: an 8-GPU host scraped at 1/s and 10/s, beside Debian's
prometheus-node-exporter scraped the same way in the same run.

It starts `egs-agent run` on the simulated eight-nvidia scenario with [prometheus] on a free
loopback port, lets it settle, then measures in turn, `--seconds` each:
  - idle: no scrape (the daemon's own CPU, all threads, from /proc/PID/task/*/schedstat);
  - 1/s and 10/s: scrapes on one persistent HTTP/1.1 connection with Prometheus 2.42's Accept
    header (so OpenMetrics is served), no gzip;
  - idle again (the baseline is the mean of both idle phases, so a drift shows);
and reports per rate: the scrape latency as the scraper sees it (p50, p99), bytes per
scrape, the daemon's CPU per scrape ((CPU/s while scraping - CPU/s idle) / scrapes/s), the
render's own thread CPU per scrape (the component's figure in `status`), and the daemon's
CPU at 1/s against idle, in % of one core. Then node_exporter (default collectors) on the
same two rates: latency, bytes, its CPU per scrape.
Targets (issue 14): <= 2 ms daemon CPU per scrape, p99 <= 10 ms, 1/s within 0.1 % of a core
of idle.

    .venv/bin/python bench/scrape.py [--seconds 15] [--json]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import sim_paths  # noqa: E402
from agent.api.client import Client  # noqa: E402
from daemon import percentile, process_cpu_s  # noqa: E402  (bench/daemon.py)

# What Prometheus 2.42 sends (scrape.go, acceptHeader)
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    """The process's CPU time, from each thread's /proc/PID/task/TID/schedstat (nanoseconds,
    where /proc/PID/stat counts 10 ms ticks: a second of 1/s scrapes is a couple of ticks).
    Threads that ended take their time with them, so phases keep their threads (one
    persistent connection each); /proc/PID/stat's ticks where schedstat is missing."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    except FileNotFoundError:
        return process_cpu_s(pid)
    return total / 1e9


def stop(proc: subprocess.Popen, timeout: float) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def scrape_phase(pid: int, port: int, rate: float, seconds: float) -> dict:
    """Scrape at `rate` per second for `seconds` on one connection; the process's CPU meanwhile."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies, sizes = [], []
    c0, t0 = cpu_s(pid), time.monotonic()
    next_at = t0
    while time.monotonic() - t0 < seconds:
        next_at += 1.0 / rate
        start = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept": ACCEPT})
        resp = conn.getresponse()
        body = resp.read()
        latencies.append(1000 * (time.perf_counter() - start))
        if resp.status != 200:
            raise SystemExit(f"scrape answered {resp.status}: {body[:200]!r}")
        sizes.append(len(body))
        time.sleep(max(0.0, next_at - time.monotonic()))
    c1, t1 = cpu_s(pid), time.monotonic()
    conn.close()
    return {"rate": rate, "scrapes": len(latencies), "seconds": t1 - t0, "cpu_s": c1 - c0,
            "cpu_per_s": (c1 - c0) / (t1 - t0), "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "bytes": int(sum(sizes) / len(sizes))}


def idle_phase(pid: int, seconds: float) -> float:
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0)


def measure(pid: int, port: int, seconds: float, rates: list[float], render=None) -> dict:
    idle = [idle_phase(pid, seconds)]
    phases = []
    for rate in rates:
        before = render() if render else None
        phase = scrape_phase(pid, port, rate, seconds)
        if render:
            after = render()
            phase["render_cpu_ms"] = 1000 * (after["render_cpu_s"] - before["render_cpu_s"]) / max(
                1, after["renders"] - before["renders"])
        phases.append(phase)
    idle.append(idle_phase(pid, seconds))
    baseline = sum(idle) / len(idle)
    for phase in phases:
        phase["cpu_ms_per_scrape"] = 1000 * (phase["cpu_per_s"] - baseline) / (phase["scrapes"] / phase["seconds"])
        phase["cpu_percent_vs_idle"] = 100 * (phase["cpu_per_s"] - baseline)
    return {"idle_cpu_percent": [round(100 * i, 3) for i in idle], "phases": phases}


def run_agent(seconds: float, settle: float, rates: list[float], dcgm: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="egsb-", dir="/tmp"))
    sock, port = work / "agent.sock", free_port()
    config = work / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{work / "state"}"\nlog_level = "warning"\n[gpu]\namd = false\n'
                      f'[api]\nsocket = "{sock}"\n[prometheus]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                      f'dcgm_names = {"true" if dcgm else "false"}\n')
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("eight-nvidia")),
               EGS_NVML_LIBRARY=str(sim_paths.NVML_LIB), PYTHONPATH=str(ROOT))
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EGS_SIMULATED", "EGS_SOCKET"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(port, proc)
        client = Client(str(sock))
        time.sleep(settle)
        gpus = len(client.status()["gpus"])

        def render() -> dict:
            return client.status()["prometheus"]
        out = measure(proc.pid, port, seconds, rates, render)
        client.close()
        return {"gpus": gpus, "dcgm_names": dcgm, **out}
    finally:
        stop(proc, 20)
        shutil.rmtree(work, ignore_errors=True)


def run_node_exporter(seconds: float, settle: float, rates: list[float]) -> dict | None:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(port, proc)
        time.sleep(settle)
        answer = subprocess.run([binary, "--version"], capture_output=True, text=True)
        version = (answer.stdout or answer.stderr).split("\n")[0]
        return {"binary": binary, "version": version, **measure(proc.pid, port, seconds, rates)}
    finally:
        stop(proc, 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="each phase (default 15)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring (default 5)")
    parser.add_argument("--rates", default="1,10", help="scrapes per second (default 1,10)")
    parser.add_argument("--dcgm", action="store_true", help="serve the DCGM names too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sim_paths.build_sim()
    rates = [float(r) for r in args.rates.split(",")]
    agent = run_agent(args.seconds, args.settle, rates, args.dcgm)
    node = run_node_exporter(args.seconds, args.settle, rates)
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs", "agent": agent,
              "node_exporter": node}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['machine']}; {agent['gpus']} simulated GPUs, {args.seconds:g} s per phase"
          f"{', DCGM names too' if args.dcgm else ''}")
    print(f"egs-agent idle CPU (before, after): {agent['idle_cpu_percent']} % of a core")
    header = f"{'':<16}{'rate/s':>7}{'scrapes':>8}{'p50 ms':>8}{'p99 ms':>8}{'bytes':>8}{'CPU ms/scrape':>14}{'render CPU ms':>14}{'CPU % vs idle':>14}"
    print(header)
    for name, run in (("egs-agent", agent), ("node_exporter", node)):
        if run is None:
            print(f"{name:<16} not installed (Debian's prometheus-node-exporter)")
            continue
        for p in run["phases"]:
            render = f"{p['render_cpu_ms']:.3f}" if "render_cpu_ms" in p else "-"
            print(f"{name:<16}{p['rate']:>7g}{p['scrapes']:>8}{p['p50_ms']:>8.2f}{p['p99_ms']:>8.2f}{p['bytes']:>8}"
                  f"{p['cpu_ms_per_scrape']:>14.3f}{render:>14}{p['cpu_percent_vs_idle']:>14.3f}")
    if node is not None:
        print(f"node_exporter idle CPU (before, after): {node['idle_cpu_percent']} % of a core ({node['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
