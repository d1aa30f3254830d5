"""The operator's verbs for alarms and recordings: `alarms`, `record`, `recordings`.

They talk to the running daemon's `Alarms` service over the local socket, with the socket
resolution and "not running" message the daemon room's client gives every verb
(`agent.api.client`). Exit codes: 0 ok, 1 daemon unreachable or the request failed,
2 bad usage.
"""
from __future__ import annotations

import gzip
import json
import sys
import time

import grpc

from agent.api.cli import client_args


def register(sub) -> None:
    p = sub.add_parser("alarms", help="alarm rules, the state of each label set, GPU health")
    client_args(p)
    p.add_argument("--json", action="store_true", help="rules, states, health, hooks and recorder as JSON")
    p.add_argument("--active", action="store_true", help="only label sets not in ok")
    p.set_defaults(func=cmd_alarms)

    p = sub.add_parser("record", help="save the last seconds of a GPU's raw samples now (flight recorder)")
    client_args(p)
    p.add_argument("--gpu", type=int, action="append", required=True, metavar="N", help="GPU index (repeatable)")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S", help="seconds back from now (default 10)")
    p.add_argument("--json", action="store_true", help="the recording's header as JSON")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("recordings", help="list flight recordings, or show one")
    client_args(p)
    p.add_argument("id", nargs="?", help="a recording id: show it")
    p.add_argument("--json", action="store_true", help="JSON: the headers, or the whole recording")
    p.add_argument("--output", metavar="FILE", help="with an id: save the recording file (.jsonl.gz) here")
    p.set_defaults(func=cmd_recordings)


# --- talking to the daemon -------------------------------------------------------------------

class _Stub:
    """The Alarms stub on the daemon's socket; unreachable daemon -> DaemonUnavailable."""

    def __init__(self, args, timeout: float = 10.0):
        from agent.api.client import open_channel, resolve_socket
        from agent.proto import alarms_pb2_grpc

        self.path = resolve_socket(args)
        self.timeout = timeout
        self.channel = open_channel(self.path)
        self.stub = alarms_pb2_grpc.AlarmsStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.channel.close()

    def call(self, name: str, request, stream: bool = False):
        from agent.api.client import explain_unavailable

        try:
            result = getattr(self.stub, name)(request, timeout=self.timeout)
            return list(result) if stream else result
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise explain_unavailable(self.path, e) from None
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise RuntimeError("this daemon serves no alarms (the alarms component is off or failed; "
                                   "see `egs-agent status`)") from None
            raise RuntimeError(e.details()) from None


def _run(args, work) -> int:
    from agent.api.client import DaemonUnavailable

    try:
        with _Stub(args) as stub:
            return work(stub)
    except DaemonUnavailable as e:
        print(f"egs-agent: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"egs-agent: {args.command}: {e}", file=sys.stderr)
        return 1


# --- alarms ----------------------------------------------------------------------------------

def cmd_alarms(args) -> int:
    from agent.proto import alarms_pb2

    def work(stub):
        reply = stub.call("ListAlarms", alarms_pb2.ListAlarmsRequest(active_only=args.active))
        doc = json.loads(reply.json)
        if args.json:
            print(json.dumps({"simulated": reply.simulated, **doc}, indent=2))
        else:
            print(render_alarms(doc, reply.simulated))
        return 0
    return _run(args, work)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _num(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def _gpu_of(labels: dict) -> str:
    if "gpu" in labels:
        return f"GPU {labels['gpu']}"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "host"


def render_alarms(doc: dict, simulated: bool = False) -> str:
    lines = []
    if simulated:
        lines.append("SIMULATED — these GPUs are simulated (EGS_SIMULATED=1), not real hardware")
    states = doc.get("states", [])
    lines.append(f"{'RULE':<24} {'LABELS':<14} {'STATE':<18} {'SEVERITY':<9} {'VALUE':>9} {'THRESHOLD':>11}  SINCE")
    order = {"alarm": 0, "pending": 1, "insufficient-data": 2, "ok": 3}
    for s in sorted(states, key=lambda s: (order.get(s["state"], 9), s["rule"], sorted(s["labels"].items()))):
        lines.append(f"{s['rule'][:24]:<24} {_gpu_of(s['labels'])[:14]:<14} {s['state']:<18} "
                     f"{s.get('severity') or '-':<9} {_num(s.get('value')):>9} "
                     f"{s.get('operator', '')}{_num(s.get('threshold')):>9}  {_when(s.get('since'))}")
    if not states:
        lines.append("(no label set evaluated yet)")
    errors = [r for r in doc.get("rules", []) if r.get("error")]
    for r in errors:
        lines.append(f"rule {r['name']}: {r['error']}")
    lines.append("")
    lines.append(f"rules: {len(doc.get('rules', []))} "
                 f"({', '.join(r['name'] for r in doc.get('rules', []) if not r.get('error'))})")
    for g in doc.get("health", []):
        reasons = "; ".join(f"{r['detail']} since {_when(r['since'])}" for r in g.get("reasons", []))
        last = g.get("last_xid")
        extra = f"  last XID {last['code']} ({last['name']}) at {_when(last['ts'])}" if last else ""
        lines.append(f"health GPU {g['gpu']}: {g['state']}{' — ' + reasons if reasons else ''}{extra}")
    hooks = doc.get("hooks", {})
    if hooks.get("started") or hooks.get("dropped"):
        lines.append("hooks: " + ", ".join(f"{k} {v}" for k, v in hooks.items()))
    rec = doc.get("recorder", {})
    if rec.get("available"):
        lines.append(f"recordings: {rec.get('count')} ({rec.get('bytes')} of {rec.get('max_bytes')} bytes, "
                     f"{rec.get('dropped_total')} dropped)")
    return "\n".join(lines)


# --- record ----------------------------------------------------------------------------------

def cmd_record(args) -> int:
    from agent.proto import alarms_pb2

    if not args.seconds > 0:
        print("egs-agent: record: --seconds must be > 0", file=sys.stderr)
        return 2

    def work(stub):
        reply = stub.call("Record", alarms_pb2.RecordRequest(gpus=args.gpu, seconds=args.seconds))
        header = json.loads(reply.header_json)
        if args.json:
            print(json.dumps(header, indent=2))
        else:
            print(f"{header['id']}: GPU {','.join(map(str, header['gpus']))}, {header['samples']} samples over "
                  f"{header['to'] - header['from']:.1f} s ({header.get('size_bytes')} bytes); "
                  f"read it with `egs-agent recordings {header['id']}`")
        return 0
    return _run(args, work)


# --- recordings ------------------------------------------------------------------------------

def cmd_recordings(args) -> int:
    from agent.proto import alarms_pb2

    if args.output and not args.id:
        print("egs-agent: recordings: --output needs a recording id", file=sys.stderr)
        return 2

    def work(stub):
        if not args.id:
            reply = stub.call("ListRecordings", alarms_pb2.ListRecordingsRequest())
            headers = [json.loads(h) for h in reply.headers_json]
            if args.json:
                print(json.dumps({"recordings": headers, "recorder": json.loads(reply.recorder_json)}, indent=2))
                return 0
            if not headers:
                print("no recordings")
            for h in headers:
                print(f"{h['id']:<48} {_reason(h.get('reason')):<40} GPU {','.join(map(str, h.get('gpus', [])))}"
                      f"  {h.get('samples', '?')} samples  {h.get('size_bytes', '?')} bytes")
            return 0
        chunks = stub.call("GetRecording", alarms_pb2.GetRecordingRequest(id=args.id), stream=True)
        blob = b"".join(c.data for c in chunks)
        if args.output:
            with open(args.output, "wb") as f:
                f.write(blob)
            print(f"{args.id}: {len(blob)} bytes written to {args.output}")
            return 0
        lines = [json.loads(x) for x in gzip.decompress(blob).decode().splitlines() if x.strip()]
        header, data = lines[0], lines[1:]
        if args.json:
            print(json.dumps({**header, "data": data}))
            return 0
        print(render_recording(header, data))
        return 0
    return _run(args, work)


def _reason(reason) -> str:
    if not reason:
        return "-"
    if reason.get("kind") == "alarm":
        return f"alarm {reason.get('rule')} ({reason.get('severity')})"
    if reason.get("kind") == "health":
        cause = reason.get("cause", {})
        return f"health {reason.get('state')} ({cause.get('kind')} {cause.get('code') or ''})".replace(" )", ")")
    return str(reason.get("kind"))


def render_recording(header: dict, data: list[dict]) -> str:
    lines = [f"recording {header['id']}: {_reason(header.get('reason'))}",
             f"  event at {_when(header.get('event_ts'))}, samples from {header['from'] - header['event_ts']:+.1f} s "
             f"to {header['to'] - header['event_ts']:+.1f} s"]
    for gpu in data:
        ts = gpu.get("timestamps", [])
        rate = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
        lines.append(f"  GPU {gpu['gpu']}: {len(ts)} samples ({rate:.0f} Hz)")
        for metric, values in sorted(gpu.get("values", {}).items()):
            present = [v for v in values if v is not None]
            if present:
                lines.append(f"    {metric:<28} min {min(present):<10.6g} max {max(present):<10.6g} "
                             f"last {present[-1]:.6g}")
            else:
                lines.append(f"    {metric:<28} no values")
    return "\n".join(lines)
