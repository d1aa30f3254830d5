"""Fixtures for the alarm room's tests.

This folder goes on sys.path so `alarm_helpers` imports by name, and so does tests/ so the
simulated libraries' helper `sim_paths` (tests/sim_paths.py) does, as its notes describe.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from alarm_helpers import Clock, FakeSource  # noqa: E402
from agent.alarms.engine import Engine  # noqa: E402


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def source():
    return FakeSource()


@pytest.fixture
def make_engine(clock, source):
    def make(*rule_objs):
        return Engine(rule_objs, source, clock)
    return make
