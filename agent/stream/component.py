"""The daemon component for the outbound stream (`"agent.stream.component:build"`).

Builds the `Outbox` from the `[stream]` section; with no endpoints configured streaming is
off and the daemon runs without it.
"""
from __future__ import annotations

from agent.config import ConfigError
from agent.stream.outbox import Outbox
from agent.stream.settings import is_loopback_host


def check(cfg) -> None:
    """Rules across keys that a single `Key` cannot express; errors name file:line:key."""
    s = cfg.stream
    if s.plaintext:
        for endpoint in s.endpoints:
            if not is_loopback_host(endpoint.rsplit(":", 1)[0]):
                locator = getattr(cfg, "locator", None)
                message = f"plaintext is only allowed when every endpoint is loopback; {endpoint} is not"
                if locator is not None:
                    raise locator.error(("stream", "plaintext"), message)
                raise ConfigError(message, key="stream.plaintext")


def build(cfg, ctx) -> Outbox | None:
    if not cfg.stream.endpoints:
        return None
    check(cfg)
    return Outbox(cfg.stream, ctx.state_dir, host_id=ctx.host_id, labels=ctx.labels,
                  clock=ctx.clock, log=ctx.log, status_of=getattr(ctx, "status_of", None))
