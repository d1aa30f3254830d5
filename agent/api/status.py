"""The `status --json` document: what `egs-agent status` prints and the `Status` call returns.

Two kinds of parts go into it. What only the daemon's main loop may read (the components'
`status()`, the core's backends, the tick counters, recent events) is gathered once per tick
by the daemon and handed over with `publish(parts)`. What any thread may read (the locked
windows, the sources' status, the GPU source's per-GPU view, the health source's latest
collection) is read here, when someone asks: the document is assembled and serialised at
most once per tick, and a tick nobody asks about costs no JSON.

Shape (a contract other tools rely on: these keys stay, more are welcome): `simulated`, `agent`, `host`, `gpus`,
`backends`, `sources`, `components`, `events`, `alarms`, `nic`, `health`, `workloads` (the latest
attribution pass: per GPU its top processes and workloads, docs/workloads.md; null before the
first pass or when `[workload]` is off), then one key per component under its name (`recorder`,
`stream`, ...).
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
from typing import Any, Callable

from agent import __version__
from agent.sources.base import Source
from agent.windows import Windows


class StatusDocument:
    def __init__(self, *, windows: Windows, sources: dict[str, Source], host_id: str, started_at: float,
                 config_path: str | None, simulated: bool, labels: Callable[[], dict[str, str]]):
        self.windows = windows
        self.sources = sources
        self.host_id = host_id
        self.started_at = started_at
        self.config_path = config_path
        self.simulated = simulated
        self.labels = labels  # the agent's labels, as of the running config (they change on reload)
        self._lock = threading.Lock()  # guards the three below
        self._parts: dict | None = None
        self._json: str = "{}"
        self._stale = False
        self._document: dict = {}

    def publish(self, parts: dict) -> None:
        """The main loop's parts of a new tick (see `agent.daemon.Daemon._main_loop_parts`)."""
        with self._lock:
            self._parts, self._stale = parts, True

    def json(self) -> str:
        """The latest document as JSON (safe from any thread)."""
        with self._lock:
            if self._stale:
                document = self._assemble(self._parts)
                try:
                    text = json.dumps(document, default=str, allow_nan=False)
                except ValueError:  # a NaN/inf somewhere (a component's figure): null it, as JSON has none
                    document = json_ready(document)
                    text = json.dumps(document, default=str, allow_nan=False)
                self._document, self._json, self._stale = document, text, False
            return self._json

    def _assemble(self, parts: dict) -> dict:
        gpu, health, workload = self.sources.get("gpu"), self.sources.get("health"), self.sources.get("workload")
        status: dict[str, Any] = {
            "simulated": self.simulated,
            "agent": {"version": __version__, "host_id": self.host_id, "pid": os.getpid(),
                      "config": self.config_path, "uptime_s": round(parts["now"] - self.started_at, 1),
                      "ticks": parts["ticks"], "tick_avg_ms": parts["tick_avg_ms"], "windows": self.windows.stats(),
                      "labels": dict(self.labels())},
            "host": self._host(),
            "gpus": gpu.gpu_status(self.windows, *parts["gpus"]) if gpu is not None else [],
            "backends": parts["backends"],
            "sources": {s.name: s.status.to_dict() for s in self.sources.values()},
            "components": parts["components"],
            "events": parts["events"],
            "alarms": [],
            "nic": {},
            "health": health.gpus() if health is not None else [],
            "workloads": workload.document() if workload is not None else None,
        }
        status.update(parts["own"])
        return status

    def _host(self) -> dict:
        w = self.windows
        host: dict[str, Any] = {"hostname": socket.gethostname()}
        host["cpu_utilization_percent"] = w.latest("cpu_utilization_percent", {})
        host["cpu_count"] = len([ls for ls in w.label_sets("cpu_utilization_percent") if "cpu" in ls])
        host["memory_used_percent"] = w.latest("memory_used_percent", {})
        for name in ("memory_used_bytes", "memory_total_bytes", "load1", "load5", "load15"):
            host[name] = w.latest(name, {})
        # Only the NICs of the latest reading: a NIC that went away keeps its series in the
        # windows (its last minutes still answer queries) but is no longer shown as current.
        source = self.sources.get("host")
        present = source.nics if source is not None else None
        nics: dict[str, dict] = {}
        for metric in w.metrics():
            if metric.startswith("net_"):
                for labels in w.label_sets(metric):
                    nic = labels.get("nic")
                    if nic is not None and (present is None or nic in present):
                        nics.setdefault(nic, {})[metric] = w.latest(metric, labels)
        host["nics"] = dict(sorted(nics.items()))
        return host


def json_ready(value: Any) -> Any:
    """NaN/inf have no JSON spelling: they become null, like an unsupported metric."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
