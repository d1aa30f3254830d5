"""Runs the NIC daemon component inside a network namespace for the tests, one pass per
"check" line on stdin; answers each with one JSON line: the component's status and the
events emitted since the previous answer. "quit" stops it. The check interval in the test
config is long, so only the test's "check" starts a pass.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from types import SimpleNamespace

from agent import config
from agent.nic.component import build
from agent.windows import Windows


def main(config_path: str) -> int:
    cfg = config.load(config_path)
    events: list[dict] = []
    ctx = SimpleNamespace(windows=Windows([10.0], time.time), core=None, emit=lambda e: events.append(e.to_dict()),
                          state_dir=None, clock=time.time, host_id="test", labels={},
                          log=logging.getLogger("nic-test"))
    component = build(cfg, ctx)
    component.start()
    seen = None
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command != "check":
                continue
            if seen is not None:
                component.check_now()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status = component.status()
                if status.get("checked_at") not in (None, seen):
                    break
                time.sleep(0.02)
            seen = status.get("checked_at")
            component.tick(time.time())
            gauges = {f"{m}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}": value
                      for m, labels, value, _ in ctx.windows.latest_all()}
            print(json.dumps({"status": status, "events": events, "metrics": gauges}), flush=True)
            events.clear()
    finally:
        component.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
