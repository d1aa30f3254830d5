"""Fixtures for the alarm room's tests (its helpers are tests/alarm_helpers.py, imported by name)."""
from __future__ import annotations

import pytest

from alarm_helpers import Clock, FakeSource
from agent.alarms.engine import Engine


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
