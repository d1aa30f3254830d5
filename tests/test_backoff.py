"""Retry delays follow gRPC's connection backoff: 1 s, x1.6, +/-20 %, at most 120 s by default."""
from __future__ import annotations

import random

from agent.backoff import Backoff


def test_delays_grow_by_the_multiplier_up_to_the_maximum_within_the_jitter():
    b = Backoff(rng=random.Random(7))
    delays = [b.next() for _ in range(20)]
    expected = [min(1.6 ** i, 120.0) for i in range(20)]
    for got, nominal in zip(delays, expected):
        assert nominal * 0.8 <= got <= nominal * 1.2
    assert max(delays) <= 144.0 and delays[-1] >= 96.0


def test_jitter_spreads_a_fleet():
    firsts = {round(Backoff(rng=random.Random(seed)).next(), 6) for seed in range(50)}
    assert len(firsts) > 40


def test_reset_starts_over():
    b = Backoff(jitter=0)
    for _ in range(5):
        b.next()
    b.reset()
    assert b.next() == 1.0 and b.next() == 1.6


def test_without_jitter_the_delays_are_exact_doublings_up_to_the_maximum():
    # The NIC metadata lookup's retries: 5 s doubling to 300 s.
    b = Backoff(5.0, multiplier=2, jitter=0, maximum=300.0)
    assert [b.next() for _ in range(8)] == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
