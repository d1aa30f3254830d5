#!/usr/bin/env python3
"""What an idle gRPC server costs, alone in a process: the floor under the daemon's local API.

Starts a server on a Unix socket with no calls (`grpc.server`, as agent/api/server.py does, or
`grpc.aio.server` with --aio), lets it settle, then prints each thread's CPU over `--seconds`
(/proc/self/task/TID/schedstat) as % of one core, and the total.

    .venv/bin/python bench/grpc_idle.py [--aio] [--seconds 20]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc


def per_thread() -> dict[str, tuple[str, int]]:
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            out[task.name] = ((task / "comm").read_text().strip(), int((task / "schedstat").read_text().split()[0]))
        except (OSError, ValueError):
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aio", action="store_true", help="grpc.aio.server on an asyncio loop thread")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    sock = Path(tempfile.mkdtemp(prefix="egs-grpc-idle-")) / "s.sock"
    if args.aio:
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            server = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(max_workers=4))
            server.add_insecure_port(f"unix:{sock}")
            await server.start()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True).start()
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_insecure_port(f"unix:{sock}")
        server.start()
    time.sleep(3)
    before = per_thread()
    time.sleep(args.seconds)
    after = per_thread()
    total = 0.0
    for tid, (name, ns) in sorted(after.items()):
        pct = (ns - before.get(tid, (name, 0))[1]) / (args.seconds * 1e9) * 100
        total += pct
        if pct >= 0.001:
            print(f"  {name:<16} {pct:.3f} %")
    print(f"{'grpc.aio.server' if args.aio else 'grpc.server'} idle on a Unix socket, {args.seconds:g} s, "
          f"load {os.getloadavg()[0]:.2f}: {total:.3f} % of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
