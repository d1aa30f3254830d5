"""`egs-agent probe`: run the native core in-process for a few seconds and report what it saw.

A one-shot `dmon` for operators and the base of later checks: per backend its state (and
why, when it is not ok), per GPU its identity and state, and per catalogue metric the
count, mean, min, max and last reading over the run. A metric the device does not support
is null, never 0. Slow-tier metrics (clocks, energy, fan) are read at `--slow-hz`, so their
counts are lower than the others'. It needs no daemon and no config file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent import libraries, metrics

STATS = ("count", "mean", "min", "max", "last")


def run_probe(seconds: float, hz: float, nvml_library: str | None = None,
              amdsmi_library: str | None = None, slow_hz: float | None = None) -> dict[str, Any]:
    """Samples for `seconds` and returns the report as a JSON-ready dict."""
    # The extension may be missing; the caller reports it.
    from agent.sources.amdgpuinfo import CoreWithFallback

    core = CoreWithFallback(nvml_library=nvml_library, amdsmi_library=amdsmi_library, hz=hz,
                slow_hz=slow_hz, ring_seconds=0.0)
    core.start()
    try:
        core.drain()  # start the window at a tick boundary, not at library init
        time.sleep(seconds)
        stats = core.drain()
        sampler = core.sampler_stats()
        events = core.events()
    finally:
        core.stop()
    by_key = {(s.gpu, s.metric): s for s in stats}
    gpus = []
    for d in core.devices():
        per_metric: dict[str, Any] = {}
        for name in metrics.GPU_METRICS:
            s = by_key.get((d.index, name))
            supported = name not in d.unsupported
            if s is None:
                per_metric[name] = {"supported": supported, "count": 0,
                                    **{k: None for k in STATS[1:]}}
            else:
                per_metric[name] = {"supported": supported, "count": s.count, "mean": s.mean,
                                    "min": s.min, "max": s.max, "last": s.last}
            per_metric[name]["path"] = d.paths.get(name, "none" if not supported else "call")
        gpus.append({"index": d.index, "vendor": d.vendor, "uuid": d.uuid, "name": d.name,
                     "pci_bus_id": d.pci_bus_id, "state": d.state, "lost_reason": d.lost_reason,
                     "source": d.source, "metrics": per_metric, "paths": dict(d.paths)})
    backends = {name: {"state": b.state, "detail": b.detail, "library": b.library,
                       "driver_version": b.driver_version, "devices": b.devices,
                       "symbols": b.symbols}
                for name, b in core.backends.items()}
    return {"seconds": seconds, "hz": hz, "slow_hz": core.slow_hz, "slow_fields": list(core.slow_fields),
            "backends": backends, "gpus": gpus,
            "sampler": {k: sampler[k] for k in ("ticks", "achieved_hz", "late_ticks",
                                                 "tick_late_p99_us", "thread_cpu_s", "slow_ticks",
                                                 "reads_fast", "reads_slow", "buffered_reads",
                                                 "library_calls", "library_calls_per_gpu_per_s")},
            "events": [{"kind": e.kind, "gpu": e.gpu, "code": e.code, "ts": e.ts,
                        "detail": e.detail} for e in events]}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def render_text(report: dict[str, Any]) -> str:
    out = []
    for name, b in report["backends"].items():
        extra = f" (driver {b['driver_version']})" if b["driver_version"] else ""
        out.append(f"{name}: {b['state']}{extra}: {b['detail']}")
    s = report["sampler"]
    out.append(f"sampler: {s['ticks']} ticks in {report['seconds']:g} s, "
               f"{s['achieved_hz']:.1f} Hz of {report['hz']:g}, late p99 {s['tick_late_p99_us']:.0f} us; "
               f"slow tier ({', '.join(report['slow_fields'])}) on {s['slow_ticks']} ticks at {report['slow_hz']:g} Hz; "
               f"{s['library_calls_per_gpu_per_s']:.1f} library calls per GPU per s, "
               f"{s['buffered_reads']} values from driver sample buffers")
    out.append("paths: buffer = the driver's own sample buffer (read on the slow tier's ticks, every "
               "sample with its own time), batch = one call per GPU per tick for several fields, "
               "call = a call of its own")
    for g in report["gpus"]:
        out.append("")
        out.append(f"gpu {g['index']} {g['vendor']} {g['name']} {g['uuid']} {g['pci_bus_id']}: {g['state']}"
                   + (f" ({g['lost_reason']})" if g["lost_reason"] else ""))
        out.append(f"  {'metric':<28}{'path':>7}{'count':>8}{'mean':>14}{'min':>14}{'max':>14}{'last':>14}")
        for name, m in g["metrics"].items():
            if not m["supported"]:
                out.append(f"  {name:<28}{'':>7}{'unsupported':>8}")
                continue
            out.append(f"  {name:<28}{m['path']:>7}{m['count']:>8}"
                       + "".join(f"{_fmt(m[k]):>14}" for k in STATS[1:]))
    for e in report["events"]:
        out.append(f"event {e['kind']} gpu {e['gpu']} code {e['code']}: {e['detail']}")
    return "\n".join(out)


def _cmd(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        print("egs-agent probe: --seconds must be positive", file=sys.stderr)
        return 2
    if not 1 <= args.hz <= 5000:
        print("egs-agent probe: --hz must be between 1 and 5000", file=sys.stderr)
        return 2
    # By default as the agent (1 Hz), but fast enough that a short probe reads them at least once.
    slow_hz = min(args.hz, max(1.0, 1.0 / args.seconds)) if args.slow_hz is None else args.slow_hz
    if not 0.1 <= slow_hz <= args.hz:
        print(f"egs-agent probe: --slow-hz must be between 0.1 and --hz ({args.hz:g})", file=sys.stderr)
        return 2
    try:
        report = run_probe(args.seconds, args.hz, args.nvml_library, args.amdsmi_library, slow_hz)
    except ImportError as e:
        print(f"egs-agent probe: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="sample the GPUs for a few seconds and print what was read",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="how long to sample (default 2)")
    p.add_argument("--hz", type=float, default=10.0,
                   help="rate of the fast fields: utilization, memory, temperature, power (default 10)")
    p.add_argument("--slow-hz", type=float,
                   help="rate of the slow fields: clocks, energy, fan (default 1, or 1/--seconds "
                        "when that is more; at most --hz)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--nvml-library", help=f"NVML path (default ${libraries.NVML_ENV} or {libraries.NVML_LIBRARY})")
    p.add_argument("--amdsmi-library",
                   help=f"AMD SMI path (default ${libraries.AMDSMI_ENV} or $ROCM_PATH/lib/{libraries.AMDSMI_FILE})")
    p.set_defaults(func=_cmd)
