"""Retry delays that grow: gRPC's connection-backoff algorithm (grpc/doc/connection-backoff.md).

The delay grows by `multiplier` per failed round up to `maximum`, and each delay is spread
by +/- `jitter` of itself so that a fleet of agents cut off by the same collector restart
does not reconnect in lock-step. Used by the stream's reconnects and the NIC room's
metadata lookup (which asks a host-local service, so it needs no jitter).
"""
from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 1.0, multiplier: float = 1.6, jitter: float = 0.2,
                 maximum: float = 120.0, rng: random.Random | None = None):
        self.base, self.multiplier, self.jitter, self.maximum = base, multiplier, jitter, maximum
        self._rng = rng or random.Random()
        self._current = base
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt; grows for the one after."""
        delay = self._current
        self._current = min(self._current * self.multiplier, self.maximum)
        self.attempts += 1
        return max(0.0, delay + self._rng.uniform(-self.jitter * delay, self.jitter * delay))

    def reset(self) -> None:
        self._current = self.base
        self.attempts = 0
