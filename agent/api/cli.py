"""The daemon's verbs: `run`, `status`, `query`, `watch`, `check-config`.

`status` reads like nvidia-smi (one row per GPU, then backends, host and NIC lines) because
that is what operators of GPU hosts reach for first; `--json` gives the whole document
(agent/api/status.py) for scripts. `watch` redraws in place with a short per-GPU history so a person sees the trend,
not just a number. When the daemon is unreachable every verb prints one line saying so and
how to start it, and exits 1.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time

from agent import config as config_mod

SPARKS = "▁▂▃▄▅▆▇█"
SIM_BANNER = "SIMULATED — these GPUs are simulated (EGS_SIMULATED=1), not real hardware"


def client_args(p: argparse.ArgumentParser) -> None:
    """The options of every verb that talks to the running daemon (here and in other rooms)."""
    p.add_argument("--config", help="read the socket path from this config file")
    # SUPPRESS keeps `egs-agent --socket X status` working: a default here would clobber it.
    p.add_argument("--socket", default=argparse.SUPPRESS, help="local API socket")


def register(sub) -> None:
    p = sub.add_parser("run", help="run the daemon in the foreground (logs to stderr)")
    p.add_argument("--config", help=f"config file (default {config_mod.DEFAULT_PATH}; none there: defaults)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="devices, their state and latest values, backends, host, alarms, NIC")
    client_args(p)
    p.add_argument("--json", action="store_true", help="the status document as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("query", help="one statistic of a metric over a window")
    client_args(p)
    p.add_argument("metric")
    p.add_argument("--window", default="1m", help="window, e.g. 10s, 1m, 5m, 15m (default 1m)")
    p.add_argument("--stat", default="avg", choices=("avg", "min", "max", "last", "count"))
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="label filter (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("watch", help="live view, refreshed in place")
    client_args(p)
    p.add_argument("--interval", default="1s", help="refresh interval (default 1s)")
    p.add_argument("--history", type=int, default=40, help="seconds of history per GPU (default 40)")
    p.add_argument("--count", type=int, default=0, help="stop after N updates (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per update")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)


# --- verbs -----------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from agent import daemon

    return daemon.run(args.config, getattr(args, "socket", None))


def cmd_check_config(args) -> int:
    config_mod.load(args.file)  # a ConfigError becomes "file:line: key: message", exit 2
    print(f"{args.file}: ok")
    return 0


def _client(args):
    # Imported here: grpc takes a while to import and `run`/`check-config` do not need it.
    from agent.api.client import Client, resolve_socket

    return Client(resolve_socket(args))


def _unavailable(e) -> int:
    print(str(e), file=sys.stderr)
    return 1


def _duration_option(option: str, text: str) -> float | None:
    """A duration given on the command line, or None after saying why it is not one."""
    try:
        return config_mod.parse_duration(text)
    except ValueError as e:
        print(f"egs-agent: {option}: {e}", file=sys.stderr)
        return None


def cmd_status(args) -> int:
    from agent.api.client import DaemonUnavailable

    try:
        with _client(args) as client:
            doc = client.status()
    except DaemonUnavailable as e:
        return _unavailable(e)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_status(doc))
    return 0


def cmd_query(args) -> int:
    from agent.api.client import DaemonUnavailable

    window = _duration_option("--window", args.window)
    if window is None:
        return 2
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"egs-agent: --label {item!r}: expected K=V", file=sys.stderr)
            return 2
        labels[key] = value
    import grpc

    try:
        with _client(args) as client:
            reply = client.query(args.metric, window, args.stat, labels)
    except DaemonUnavailable as e:
        return _unavailable(e)
    except grpc.RpcError as e:
        print(f"egs-agent: query: {e.details()}", file=sys.stderr)
        return 2 if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else 1
    series = [{"labels": dict(s.labels), "value": s.value if s.HasField("value") else None, "count": s.count}
              for s in reply.series]
    if args.json:
        print(json.dumps({"metric": reply.metric, "unit": reply.unit, "window_seconds": reply.window_seconds,
                          "stat": reply.stat, "ts": reply.ts, "simulated": reply.simulated, "series": series},
                         indent=2))
        return 0
    if reply.simulated:
        print(SIM_BANNER)
    print(f"{reply.metric} {reply.stat} over {args.window} ({reply.unit or 'no unit'})")
    if not series:
        print("  no data")
    for s in series:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items())) or "(host)"
        print(f"  {labels:<60} {_num(s['value'])}  ({s['count']} samples)")
    return 0


def cmd_watch(args) -> int:
    from agent.api.client import DaemonUnavailable

    interval = _duration_option("--interval", args.interval)
    if interval is None:
        return 2
    tty = sys.stdout.isatty() and not args.json
    history: dict[str, list] = {}
    shown = 0
    try:
        with _client(args) as client:
            client.timeout = None
            for update in client.watch(interval, history_seconds=args.history, include_status=not args.json):
                if args.json:
                    print(json.dumps(update_to_dict(update)), flush=True)
                else:
                    _remember(history, update, args.history)
                    frame = render_watch(json.loads(update.status_json or "{}"), update, history)
                    if tty:
                        sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
                    sys.stdout.write(frame + "\n")
                    sys.stdout.flush()
                shown += 1
                if args.count and shown >= args.count:
                    break
    except DaemonUnavailable as e:
        return _unavailable(e)
    return 0


# --- rendering -------------------------------------------------------------------------------

def _num(value, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _bytes(n) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _rate(n) -> str:
    return "n/a" if n is None else _bytes(n) + "/s"


def update_to_dict(update) -> dict:
    return {"ts": update.ts, "simulated": update.simulated, "coalesced": update.coalesced,
            "events_dropped": update.events_dropped,
            "events": [json.loads(e) for e in update.events_json],
            "points": [{"metric": p.metric, "labels": dict(p.labels),
                        "value": p.value if p.HasField("value") else None} for p in update.points]}


def _gpu_rows(doc: dict) -> list[str]:
    gpus = doc.get("gpus", [])
    head = f"| {'GPU':>3} | {'Name':<26} | {'State':<11} | {'Temp':>6} | {'Util':>5} | {'Memory used / total':>23} | {'Power':>8} |"
    rule = "+" + "-" * (len(head) - 2) + "+"
    rows = [rule, head, rule]
    health = _health_by_gpu(doc)
    for g in gpus:
        m = g.get("metrics", {})
        # The device's own state (ok/lost) unless the health view says more (degraded, failed).
        state = g.get("state", "?")
        if state == "ok" and health.get(g.get("index"), {}).get("state") not in (None, "ok"):
            state = health[g.get("index")]["state"]
        temp = _num(m.get("gpu_temperature_celsius"), "{:.0f}C")
        util = _num(m.get("gpu_utilization_percent"), "{:.0f}%")
        mem = f"{_bytes(m.get('gpu_memory_used_bytes'))} / {_bytes(m.get('gpu_memory_total_bytes'))}"
        power = _num(m.get("gpu_power_watts"), "{:.0f}W")
        rows.append(f"| {g.get('index', '?'):>3} | {str(g.get('name', ''))[:26]:<26} | {state:<11} | "
                    f"{temp:>6} | {util:>5} | {mem:>23} | {power:>8} |")
    if not gpus:
        rows.append(f"| {'no GPUs':<{len(head) - 4}} |")
    rows.append(rule)
    return rows


def _health_by_gpu(doc: dict) -> dict:
    entries = doc.get("health")
    if not isinstance(entries, list):
        return {}
    return {h.get("gpu"): h for h in entries if isinstance(h, dict)}


def _health_lines(doc: dict) -> list[str]:
    """One line per GPU whose health is not ok, with its reasons."""
    lines = []
    for gpu, h in sorted(_health_by_gpu(doc).items(), key=lambda kv: str(kv[0])):
        if h.get("state") in (None, "ok"):
            continue
        reasons = "; ".join(str(r.get("detail")) for r in h.get("reasons", []) if isinstance(r, dict))
        lines.append(f"GPU {gpu} {h.get('state')}: {reasons or 'no reason given'}")
    return lines


def render_status(doc: dict) -> str:
    lines = []
    if doc.get("simulated"):
        lines.append(SIM_BANNER)
    agent = doc.get("agent", {})
    lines.append(f"egs-agent {agent.get('version', '?')} on {agent.get('host_id', '?')}   "
                 f"up {_duration(agent.get('uptime_s'))}   {time.strftime('%Y-%m-%d %H:%M:%S')}")
    lines += _gpu_rows(doc)
    lines += _health_lines(doc)
    backends = doc.get("backends", {})
    parts = []
    for name, b in backends.items():
        text = f"{name} {b.get('state')}"
        if b.get("driver_version"):
            text += f" (driver {b['driver_version']})"
        elif b.get("state") != "ok" and b.get("detail"):
            text += f" ({b['detail']})"
        parts.append(text)
    lines.append("Backends: " + ("; ".join(parts) or "none"))
    host = doc.get("host", {})
    lines.append(f"Host: cpu {_num(host.get('cpu_utilization_percent'), '{:.0f}%')}   "
                 f"load {' '.join(_num(host.get(k), '{:.2f}') for k in ('load1', 'load5', 'load15'))}   "
                 f"memory {_num(host.get('memory_used_percent'), '{:.0f}%')} "
                 f"({_bytes(host.get('memory_used_bytes'))} / {_bytes(host.get('memory_total_bytes'))})")
    for nic, m in host.get("nics", {}).items():
        lines.append(f"  {nic:<12} rx {_rate(m.get('net_rx_bytes_per_second')):>12} "
                     f"{_num(m.get('net_rx_packets_per_second'), '{:.0f}')} pkt/s   "
                     f"tx {_rate(m.get('net_tx_bytes_per_second')):>12} "
                     f"{_num(m.get('net_tx_packets_per_second'), '{:.0f}')} pkt/s")
    lines.append("Alarms: " + _alarm_summary(doc.get("alarms")))
    nic = doc.get("nic")
    if nic:
        lines.append("NIC queues: " + _nic_summary(nic))
    failed = [f"{n} ({c.get('error')})" for n, c in doc.get("components", {}).items() if c.get("state") == "failed"]
    failed += [f"source {n} ({s.get('last_error')})" for n, s in doc.get("sources", {}).items() if s.get("state") == "failed"]
    if failed:
        lines.append("Failed: " + "; ".join(failed))
    return "\n".join(lines)


def _alarm_summary(alarms) -> str:
    if not alarms:
        return "none"
    if isinstance(alarms, dict):
        alarms = alarms.get("alarms") or alarms.get("rules") or []
    firing = [a for a in alarms if isinstance(a, dict) and a.get("state") in ("alarm", "firing")]
    if not firing:
        return f"none firing ({len(alarms)} rule states)"
    def where(labels) -> str:
        if not isinstance(labels, dict):
            return str(labels or "")
        if "gpu" in labels:
            return f"GPU {labels['gpu']}"
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    parts = []
    for a in firing:
        text = f"{a.get('rule') or a.get('name', '?')} {where(a.get('labels'))}".strip()
        extra = " ".join(str(x) for x in (a.get("severity"), _num(a.get("value")) if a.get("value") is not None else None) if x)
        parts.append(f"{text} ({extra})" if extra else text)
    return "FIRING " + "; ".join(parts)


def _nic_summary(nic) -> str:
    if not isinstance(nic, dict):
        return str(nic)
    keys = ("mode", "state", "instance_type", "interface", "current", "required", "detail")
    parts = [f"{k}={nic[k]}" for k in keys if nic.get(k) not in (None, "", [], {})]
    return " ".join(parts) or json.dumps(nic)[:120]


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def sparkline(values, lo: float | None = None, hi: float | None = None) -> str:
    """One character per value; gaps (None/NaN) are blank."""
    real = [v for v in values if v is not None and not math.isnan(v)]
    if not real:
        return " " * len(values)
    lo = min(real) if lo is None else lo
    hi = max(real) if hi is None else hi
    span = (hi - lo) or 1.0
    out = []
    for v in values:
        if v is None or math.isnan(v):
            out.append(" ")
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, max(0, int((v - lo) / span * (len(SPARKS) - 1) + 0.5)))])
    return "".join(out)


_TRENDS = (("gpu_utilization_percent", "util", 0.0, 100.0), ("gpu_temperature_celsius", "temp", None, None))


def _remember(history: dict, update, keep: int) -> None:
    """Per-GPU history of the trend metrics: seeded from the first update, then appended."""
    for p in update.points:
        if p.metric not in {m for m, *_ in _TRENDS} or "gpu" not in p.labels:
            continue
        key = f"{p.labels['gpu']}:{p.metric}"
        series = history.setdefault(key, [])
        if p.history and not series:
            series.extend(None if math.isnan(v) else v for v in p.history)
        else:
            series.append(p.value if p.HasField("value") else None)
        del series[:-keep]


def render_watch(doc: dict, update, history: dict) -> str:
    lines = []
    if update.simulated or doc.get("simulated"):
        lines.append(SIM_BANNER)
    width = shutil.get_terminal_size((100, 30)).columns
    lines.append(f"egs-agent watch   {time.strftime('%H:%M:%S', time.localtime(update.ts))}"
                 + (f"   (coalesced {update.coalesced} updates: terminal too slow)" if update.coalesced else ""))
    lines += _gpu_rows(doc)
    spark_width = max(10, min(60, width - 40))
    for g in doc.get("gpus", []):
        for metric, short, lo, hi in _TRENDS:
            values = history.get(f"{g.get('index')}:{metric}", [])[-spark_width:]
            latest = next((v for v in reversed(values) if v is not None), None)
            lines.append(f"  GPU {g.get('index')} {short:<4} {sparkline(values, lo, hi):<{spark_width}} {_num(latest)}")
    host = doc.get("host", {})
    lines.append(f"Host: cpu {_num(host.get('cpu_utilization_percent'), '{:.0f}%')}   memory "
                 f"{_num(host.get('memory_used_percent'), '{:.0f}%')}   alarms: {_alarm_summary(doc.get('alarms'))}")
    for e in update.events_json:
        lines.append("event: " + e)
    return "\n".join(lines)
