"""A small agent for the tests: an `Outbox` spooling one batch per marker number.

Each batch holds one point `test_marker` whose value is the marker. A marker is written to
`--log` only after `Outbox.flush()` said it is durable in the spool, so the log is the list
of everything the collector must end up with, exactly once, whatever kills this process.
The outbox's `status()` is written to `<state>/status.json` twice a second.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from agent.config import load
from agent.stream.outbox import Outbox


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--linger", type=float, default=600.0)
    p.add_argument("--log", required=True)
    p.add_argument("--points", type=int, default=0, help="extra points per batch (series gpu=0..N-1)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    cfg = load(args.config)
    outbox = Outbox(cfg.stream, args.state, host_id=args.host, labels={"role": "test"})
    outbox.start()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    status_path = os.path.join(args.state, "status.json")

    def dump():
        tmp = status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(outbox.status(), f, default=str)
        os.replace(tmp, status_path)

    last_dump = 0.0
    with open(args.log, "a") as log:
        for marker in range(args.first, args.first + args.count):
            if stop:
                break
            now = time.time()
            extra = [{"metric": "test_load", "labels": {"gpu": str(i)}, "ts": now, "count": 1,
                      "sum": marker * 1.001 + i, "min": marker, "max": marker + i, "last": marker + i * 0.5}
                     for i in range(args.points)]
            outbox.put_buckets(extra + [{"metric": "test_marker", "labels": {}, "ts": now, "count": 1,
                                         "sum": marker, "min": marker, "max": marker, "last": marker}])
            if not outbox.flush(30):
                print("flush timed out", file=sys.stderr)
                return 1
            log.write(f"{marker}\n")
            log.flush()
            if now - last_dump > 0.5:
                dump()
                last_dump = now
            time.sleep(1.0 / args.rate)
    deadline = time.monotonic() + args.linger
    while not stop and time.monotonic() < deadline:
        dump()
        time.sleep(0.2)
    outbox.stop()
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
