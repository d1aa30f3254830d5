"""How long the NIC tuning's reads and passes take, on a veth pair in a throwaway namespace.

Prints: SIOCETHTOOL get-channels latency (the daemon's per-interface read) against spawning
the `ethtool -l` binary, and one verify and one apply pass of the manager. Needs root and
`ip`; run as `sudo .venv/bin/python bench/nic.py` from the checkout. Short on purpose (a few
seconds on one core).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INNER = r"""
import statistics, subprocess, time
from agent import config
from agent.nic import ethtool
from agent.nic.manager import NicManager

def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]

med, p99 = timed(lambda: ethtool.get_channels("va"), 2000)
print(f"SIOCETHTOOL get channels: median {med*1e6:.1f} us, p99 {p99*1e6:.1f} us (2000 reads)")
med, p99 = timed(lambda: subprocess.run(["ethtool", "-l", "va"], capture_output=True, check=True), 50)
print(f"ethtool -l subprocess:    median {med*1e3:.2f} ms, p99 {p99*1e3:.2f} ms (50 runs)")
nic = config.parse("").nic
manager = NicManager(nic)
req = manager.requirement("ecs.ga1.14xlarge", "bench")
med, p99 = timed(lambda: manager.run_pass("verify", req, ["va"]), 200)
print(f"verify pass (1 NIC, XPS on): median {med*1e3:.2f} ms, p99 {p99*1e3:.2f} ms (200 passes)")
def flip():
    ethtool.set_channels("va", ethtool.get_channels("va").with_queues(1))
    t = time.perf_counter(); manager.run_pass("apply", req, ["va"]); return time.perf_counter() - t
runs = sorted(flip() for _ in range(50))
print(f"apply pass 1 -> 4 queues + XPS: median {statistics.median(runs)*1e3:.2f} ms, max {runs[-1]*1e3:.2f} ms (50 passes)")
"""


def main() -> int:
    if os.geteuid() != 0:
        print("bench/nic.py needs root (network namespace)", file=sys.stderr)
        return 1
    ns = f"egsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "va", "numrxqueues", "4", "numtxqueues", "4", "type", "veth",
                        "peer", "name", "vb", "numrxqueues", "4", "numtxqueues", "4"], check=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", INNER], env=env, cwd=REPO).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    sys.exit(main())
