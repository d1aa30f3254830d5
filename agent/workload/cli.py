"""`egs-agent top`: which processes use each GPU, like nvitop's process table.

The GPUs come from the running daemon (`status`); when its status carries a `workloads`
document (the daemon runs the attribution itself, with the vendor libraries' process lists),
that is what is shown. Otherwise this process runs the attribution itself, from DRM fdinfo
(the only per-process source that needs no GPU library), over the daemon's GPUs or, with no
daemon, the DRM devices in sysfs (named `pci:<bus id>`: there is no vendor UUID there).

Rates (SM %, CPU %) are differences between two passes: `--once` therefore takes two passes
`--interval` apart and prints the second.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agent.api.cli import _bytes, _num, client_args
from agent.config import duration_error, parse_duration
from agent.workload.attribution import DEFAULT_TOP_N, Attributor
from agent.workload.fdinfo import DrmFdinfoSource
from agent.workload.kubelet import DEFAULT_SOCKET, PodResources
from agent.workload.records import GpuRef
from agent.workload.settings import MAX_TOP_N

_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
_HEADER = ("GPU", "PID", "USER", "WORKLOAD", "GPU-MEM", "SM%", "CPU%", "RSS", "COMMAND")


def register(subparsers) -> None:
    p = subparsers.add_parser("top", help="processes and workloads per GPU (live)",
                              description="Which processes and workloads use each GPU: GPU memory, SM %, "
                                          "host CPU % and RSS, like nvitop. Ctrl-C stops.")
    client_args(p)
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.add_argument("--json", action="store_true", help="print the workloads document as JSON (implies --once)")
    p.add_argument("--interval", default="2s", help="time between refreshes (default 2s)")
    p.add_argument("--top-n", type=int, default=DEFAULT_TOP_N, help=f"processes per GPU (default {DEFAULT_TOP_N})")
    p.add_argument("--procfs", default="/proc", help="procfs root (default /proc)")
    p.add_argument("--sysfs", default="/sys", help="sysfs root for the DRM devices without a daemon (default /sys)")
    p.add_argument("--kubelet-socket", default=DEFAULT_SOCKET, help="the kubelet's pod-resources socket ('' : none)")
    p.add_argument("--no-daemon", action="store_true", help="do not ask the daemon for its GPUs")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    problem = duration_error(args.interval, 0.01, 3600.0)  # a sleep past time_t would raise
    if problem is not None:
        print(f"egs-agent top: --interval: {problem}", file=sys.stderr)
        return 2
    interval = parse_duration(args.interval)
    if not 1 <= args.top_n <= MAX_TOP_N:
        print(f"egs-agent top: --top-n must be 1..{MAX_TOP_N}, got {args.top_n}", file=sys.stderr)
        return 2
    gpus, origin, daemon_doc = _gpus(args)
    if daemon_doc is not None:  # the daemon attributes itself: show its view
        return _show(args, lambda: _daemon_doc(args) or daemon_doc, interval, "daemon")
    kubelet = PodResources(args.kubelet_socket) if args.kubelet_socket else None
    attributor = Attributor([DrmFdinfoSource(args.procfs)], args.procfs, args.top_n, kubelet)
    try:
        if args.once or args.json:
            attributor.run(gpus)   # the first pass only sets the counters the rates come from
            time.sleep(interval)
        return _show(args, lambda: attributor.run(gpus).to_dict(), interval, origin)
    finally:
        if kubelet is not None:
            kubelet.close()


def _show(args, take, interval: float, origin: str) -> int:
    if args.json:
        json.dump(take(), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    if args.once:
        print(render(take(), origin))
        return 0
    while True:
        text = render(take(), origin)
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stdout.flush()
        time.sleep(interval)


def _gpus(args) -> tuple[list[GpuRef], str, dict | None]:
    """The GPUs, where they came from, and the daemon's own workloads document if it has one."""
    if not args.no_daemon:
        from agent.api.client import Client, DaemonUnavailable, resolve_socket
        try:
            with Client(resolve_socket(args), timeout=3.0) as client:
                doc = client.status()
        except (DaemonUnavailable, OSError) as e:
            origin = f"sysfs DRM devices (daemon: {e})"
        else:
            if doc.get("workloads"):
                return [], "daemon", doc["workloads"]
            gpus = [GpuRef(g["index"], g["uuid"], g.get("pci_bus_id") or "", g.get("vendor", ""), g.get("name", ""))
                    for g in doc.get("gpus", []) if g.get("state") == "ok"]
            return gpus, "daemon's GPUs, DRM fdinfo here", None
    else:
        origin = "sysfs DRM devices"
    return drm_gpus(args.sysfs), origin, None


def _daemon_doc(args) -> dict | None:
    from agent.api.client import Client, resolve_socket
    with Client(resolve_socket(args), timeout=3.0) as client:
        return client.status().get("workloads")


def drm_gpus(sysfs: str = "/sys") -> list[GpuRef]:
    """The PCI GPUs of `<sysfs>/class/drm/card<N>`, in card order."""
    base = os.path.join(sysfs, "class", "drm")
    try:
        cards = sorted((n for n in os.listdir(base) if n.startswith("card") and n[4:].isdigit()),
                       key=lambda n: int(n[4:]))
    except OSError:
        return []
    out, seen = [], set()
    for card in cards:
        device = os.path.join(base, card, "device")
        bus_id = os.path.basename(os.path.realpath(device))
        if bus_id in seen or bus_id.count(":") != 2:
            continue
        seen.add(bus_id)
        try:
            with open(os.path.join(device, "vendor")) as f:
                vendor = _VENDORS.get(f.read().strip(), "")
        except OSError:
            vendor = ""
        out.append(GpuRef(len(out), f"pci:{bus_id}", bus_id, vendor, card))
    return out


def render(doc: dict, origin: str = "") -> str:
    """The table of a workloads document (agent.workload.attribution.Snapshot.to_dict)."""
    sources = ", ".join(f"{name} {s['state']}" + (f" ({s['detail']})" if s.get("detail") else "")
                        for name, s in sorted(doc.get("sources", {}).items())) or "none"
    kube = doc.get("kubelet")
    lines = [f"egs-agent top  {time.strftime('%H:%M:%S', time.localtime(doc.get('ts', time.time())))}  "
             f"GPUs: {origin or 'daemon'}  sources: {sources}"
             + (f"  kubelet: {kube['state']}" if kube else "")]
    if not doc.get("gpus"):
        return "\n".join(lines + ["no GPU found"])
    rows = [_HEADER]
    for g in doc["gpus"]:
        if not g["processes"] and not g["other"]["processes"]:
            rows.append((g["gpu"], "-", "", "(no processes)", "", "", "", "", f"{g.get('model', '')}".strip()))
        for p in g["processes"]:
            command = p.get("command") or ""
            if p.get("reason"):
                command = f"[{p['reason']}]"
            pid = str(p["pid"]) + (f" ({p['nspid'][-1]})" if p.get("nspid") else "")
            rows.append((g["gpu"], pid, p.get("user") or "?", p["workload"]["workload"],
                         _bytes(p["used_memory_bytes"]), _num(p["sm_percent"], "{:.0f}"),
                         _num(p["cpu_percent"]), _bytes(p["rss_bytes"]), command))
        other = g["other"]
        if other["processes"]:
            rows.append((g["gpu"], "-", "", f"other ({other['processes']} processes)",
                         _bytes(other["used_memory_bytes"]), _num(other["sm_percent"], "{:.0f}"), "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(_HEADER) - 1)]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) if i in (2, 3) else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() + "  " + str(r[-1]))
    return "\n".join(line.rstrip() for line in lines)
