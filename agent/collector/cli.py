"""`egs-collector`: run the collector, or talk to one as a consumer.

  egs-collector run [--config FILE]
  egs-collector check-config FILE
  egs-collector subscribe [--host H] [--label k=v] [--metric M] [--event-kind K] [--json]
  egs-collector agents [--json]
  egs-collector query METRIC [--host H] [--label k=v] [--since 1h] [--resolution 10s] [--json]

Consumer verbs find the collector from `--target` (or `EGS_COLLECTOR`), else from the
config file's consumers.listen; TLS unless `--plaintext` (or tls.plaintext in the file);
the token from `--token-file`, else `EGS_COLLECTOR_TOKEN`. Exit codes: 0 ok, 1 runtime
failure (collector unreachable), 2 bad usage or bad config.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path

import grpc

from agent.collector import settings
from agent.config import ConfigError, parse_duration
from agent.systemd import setup_logging
from agent.proto import collector_pb2, collector_pb2_grpc


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"labels are key=value, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egs-collector", description="Central collector of the egs-agent fleet.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the collector (foreground, logs to stderr)")
    run.add_argument("--config", help=f"config file (default {settings.DEFAULT_PATH})")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    def client_args(p):
        p.add_argument("--config", help="read target, TLS and plaintext from this collector config")
        p.add_argument("--target", default=os.environ.get("EGS_COLLECTOR"), help="host:port of the consumers port")
        p.add_argument("--ca", help="CA certificate (PEM) to verify the collector with")
        p.add_argument("--server-name", help="name to verify the collector's certificate against")
        p.add_argument("--plaintext", action="store_true", help="no TLS (loopback collectors configured so)")
        p.add_argument("--token-file", help="file holding the consumer token (else $EGS_COLLECTOR_TOKEN)")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the collector")

    s = sub.add_parser("subscribe", help="stream live values (snapshot first) from the collector")
    client_args(s)
    s.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    s.add_argument("--label", action="append", default=[], type=_label, help="only series with label k=v (repeatable)")
    s.add_argument("--metric", action="append", default=[], help="only this metric (repeatable)")
    s.add_argument("--event-kind", action="append", default=[], help="only events of this kind; '-' for none")
    s.add_argument("--no-snapshot", action="store_true", help="skip the initial snapshot")
    s.add_argument("--heartbeat", type=float, default=0, help="heartbeat interval, seconds")
    s.add_argument("--count", type=int, default=0, help="exit after this many updates (0: run until interrupted)")
    s.set_defaults(func=cmd_subscribe)

    a = sub.add_parser("agents", help="list agents with last-seen time, spool backlog and health")
    client_args(a)
    a.set_defaults(func=cmd_agents)

    q = sub.add_parser("query", help="stored history of one metric")
    client_args(q)
    q.add_argument("metric")
    q.add_argument("--host", default="")
    q.add_argument("--label", action="append", default=[], type=_label)
    q.add_argument("--since", default="1h", help="how far back (e.g. 10m, 6h)")
    q.add_argument("--resolution", default="", choices=("", "raw", "10s", "1m"))
    q.set_defaults(func=cmd_query)
    return parser


# --- run ---------------------------------------------------------------------------------

def cmd_check(args) -> int:
    settings.load(args.file)
    print(f"{args.file}: ok")
    return 0


def cmd_run(args) -> int:
    cfg = settings.load(args.config)
    setup_logging(cfg.collector.log_level)
    from agent.collector.server import serve
    # At fleet rates the collector holds hundreds of thousands of live objects; with the
    # default thresholds a full GC pass over them runs every few seconds and stalls every
    # ack for ~100 ms (measured with bench/collector.py). Almost nothing here forms cycles,
    # so collect rarely: the young generation every 20,000 allocations, the oldest seldom.
    gc.set_threshold(20_000, 100, 1000)
    from agent.collector.bus import BusConfigError
    from agent.collector.store import StoreConfigError
    from agent.collector.writer import WriterError, WriterGone
    from agent.prometheus.web import WebConfigError
    try:
        return asyncio.run(serve(cfg))
    except (OSError, WriterError, WriterGone, StoreConfigError, BusConfigError, WebConfigError) as e:
        print(f"egs-collector: {e}", file=sys.stderr)
        return 1


# --- consumer verbs ----------------------------------------------------------------------

def _channel(args) -> tuple[grpc.Channel, list[tuple[str, str]]]:
    target, plaintext, ca = args.target, args.plaintext, args.ca
    if args.config:
        cfg = settings.load(args.config)
        if not target:
            host, _, port = cfg.consumers.listen.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)
            target = f"{host}:{port}"
        plaintext = plaintext or cfg.tls.plaintext
        ca = ca or cfg.tls.client_ca
    if not target:
        raise ConfigError("no collector given: use --target host:port, EGS_COLLECTOR, or --config", key="target")
    token = ""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", args.token_file) from None
    token = token or os.environ.get("EGS_COLLECTOR_TOKEN", "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    # As large an answer as the collector may send (server.MAX_SEND_BYTES), not gRPC's 4 MiB.
    options = [("grpc.max_receive_message_length", 64 << 20)]
    if plaintext:
        return grpc.insecure_channel(target, options=options), metadata
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    root = Path(ca).read_bytes() if ca else None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options=options), metadata


def _failed(e: grpc.RpcError, args) -> int:
    print(f"egs-collector: {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
    return 2 if e.code() == grpc.StatusCode.UNAUTHENTICATED else 1


def _point_dict(host, point, received=None) -> dict:
    d = {"host": host, "metric": point.metric, "labels": dict(point.labels), "ts": point.ts,
         "count": point.count, "avg": point.sum / point.count if point.count else None,
         "min": point.min, "max": point.max, "last": point.last}
    if received is not None:
        d["received"] = received
    return d


def cmd_subscribe(args) -> int:
    channel, metadata = _channel(args)
    stub = collector_pb2_grpc.ConsumersStub(channel)
    request = collector_pb2.SubscribeRequest(hosts=args.host, metrics=args.metric, event_kinds=args.event_kind,
                                             heartbeat_seconds=args.heartbeat, no_snapshot=args.no_snapshot)
    request.labels.update(dict(args.label))
    seen = 0
    try:
        for update in stub.Subscribe(request, metadata=metadata):
            if args.json:
                print(json.dumps({"sent": update.sent, "snapshot": update.snapshot, "snapshot_done": update.snapshot_done,
                                  "heartbeat": update.heartbeat, "coalesced": update.coalesced, "dropped": update.dropped,
                                  "samples": [_point_dict(s.host, s.point, s.received) for s in update.samples],
                                  "events": [{"host": e.host, "kind": e.event.kind, "ts": e.event.ts,
                                              "labels": dict(e.event.labels), "data": json.loads(e.event.data_json or "{}")}
                                             for e in update.events]}), flush=True)
            else:
                for s in update.samples:
                    p = s.point
                    labels = ",".join(f"{k}={v}" for k, v in sorted(p.labels.items()))
                    avg = p.sum / p.count if p.count else float("nan")
                    print(f"{time.strftime('%H:%M:%S', time.localtime(p.ts))} {s.host} {p.metric}{{{labels}}} "
                          f"avg={avg:.6g} min={p.min:.6g} max={p.max:.6g}", flush=True)
                for e in update.events:
                    print(f"{time.strftime('%H:%M:%S', time.localtime(e.event.ts))} {e.host} event={e.event.kind} "
                          f"{dict(e.event.labels)} {e.event.data_json}", flush=True)
                if update.snapshot_done:
                    print("-- snapshot done; live updates follow", flush=True)
                if update.heartbeat:
                    print(f"-- heartbeat (coalesced {update.coalesced}, dropped {update.dropped})", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except grpc.RpcError as e:
        return _failed(e, args)
    finally:
        channel.close()
    return 0


def cmd_agents(args) -> int:
    channel, metadata = _channel(args)
    try:
        reply = collector_pb2_grpc.ConsumersStub(channel).Agents(collector_pb2.AgentsRequest(), metadata=metadata,
                                                                 timeout=args.timeout)
    except grpc.RpcError as e:
        return _failed(e, args)
    finally:
        channel.close()
    rows = [{"host": a.host, "labels": dict(a.labels), "connected": a.connected, "peer": a.peer,
             "last_seen": a.last_seen, "age_seconds": round(reply.now - a.last_seen, 1) if a.last_seen else None,
             "epoch": a.epoch, "last_seq": a.last_seq, "spool_backlog_records": a.status.spool_backlog_records,
             "spool_backlog_bytes": a.status.spool_backlog_bytes, "dropped_records": a.status.dropped_records,
             "health": a.status.health, "batches": a.batches, "duplicates": a.duplicates,
             "collector": a.collector} for a in reply.agents]
    if args.json:
        print(json.dumps({"agents": rows, "now": reply.now, "store": reply.store}))
        return 0
    if reply.store:
        print(f"store: {reply.store}")
    fleet = any(r["collector"] for r in rows)
    print(f"{'HOST':24} {'CONN':4} {'LAST SEEN':>10} {'BACKLOG':>8} {'DROPPED':>8} {'HEALTH':12}" + (" COLLECTOR" if fleet else ""))
    for r in rows:
        age = f"{r['age_seconds']:.0f}s ago" if r["age_seconds"] is not None else "never"
        print(f"{r['host']:24} {'yes' if r['connected'] else 'no':4} {age:>10} {r['spool_backlog_records']:>8} "
              f"{r['dropped_records']:>8} {r['health']:12}" + (f" {r['collector']}" if fleet else ""))
    if not rows:
        print("(no agent has published yet)")
    return 0


def cmd_query(args) -> int:
    try:
        since = parse_duration(args.since)
    except ValueError as e:
        raise ConfigError(str(e), key="--since") from None
    channel, metadata = _channel(args)
    now = time.time()
    request = collector_pb2.QueryRequest(metric=args.metric, host=args.host, start=now - since, end=now,
                                         resolution=args.resolution)
    request.labels.update(dict(args.label))
    try:
        reply = collector_pb2_grpc.ConsumersStub(channel).Query(request, metadata=metadata, timeout=args.timeout)
    except grpc.RpcError as e:
        return _failed(e, args)
    finally:
        channel.close()
    if args.json:
        print(json.dumps({"resolution": reply.resolution, "series": [
            {"host": s.host, "metric": s.metric, "labels": dict(s.labels),
             "points": [{"ts": p.ts, "count": p.count, "avg": p.sum / p.count if p.count else None,
                         "min": p.min, "max": p.max, "last": p.last} for p in s.points]} for s in reply.series]}))
        return 0
    for s in reply.series:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.host} {s.metric}{{{labels}}} ({reply.resolution}, {len(s.points)} points)")
        for p in s.points:
            avg = p.sum / p.count if p.count else float("nan")
            print(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(p.ts))} avg={avg:.6g} min={p.min:.6g} max={p.max:.6g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"egs-collector: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
