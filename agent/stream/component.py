"""The daemon component for the outbound stream (`"agent.stream.component:build"`).

Builds the `Outbox` from the `[stream]` section (which the section's own check has already
held to its cross-key rules); with no endpoints configured streaming is off and the daemon
runs without it.
"""
from __future__ import annotations

from agent.stream.outbox import Outbox


def build(cfg, ctx) -> Outbox | None:
    if not cfg.stream.endpoints:
        return None
    return Outbox(cfg.stream, ctx.state_dir, host_id=ctx.host_id, labels=ctx.labels,
                  clock=ctx.clock, log=ctx.log, status_of=ctx.status_of)
