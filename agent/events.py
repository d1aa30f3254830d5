"""Events: something happened that an operator should hear about.

Alarm transitions, GPU health changes and NIC drift are all `Event`s, handed to the daemon's
`emit`, which logs them (one line each), queues them for local `Watch` clients and gives
them to the outbox for the collector.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # "alarm", "health", "nic", "agent"
    ts: float  # unix seconds
    labels: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def log_line(self) -> str:
        """One journald-friendly line: kind, labels, then the data as key=value."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        data = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(self.data.items()))
        return f"event={self.kind} {labels} {data}".strip()
