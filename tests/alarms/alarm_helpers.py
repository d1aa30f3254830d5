"""Helpers for the alarm tests: a virtual clock, a figure source set by hand, and rules
written as the TOML an operator would write (parsed by the real config machinery).
Imported by name: tests/alarms/conftest.py puts this folder on sys.path.
"""
from __future__ import annotations

from agent import config


class Clock:
    """Unix seconds that only move when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0):  # Tue 2023-11-14 22:13:20 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeSource:
    """The part of `agent.windows.Windows` the engine reads: figures set by the test."""

    def __init__(self):
        self.values: dict[tuple, float | None] = {}
        self.asked: list[tuple] = []

    def set(self, value: float | None, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def label_sets(self, metric: str) -> list[dict[str, str]]:
        return [dict(k) for k in self.values]

    def stat(self, metric, labels, window_s, stat, now=None):
        self.asked.append((metric, window_s, stat))
        return self.values.get(tuple(sorted(labels.items())))


def parse_rules(text: str):
    """Rules from `[[alarm]]` TOML, through the same validation the daemon uses."""
    return config.parse(text, "test.toml").alarm


def rule(text: str):
    """One rule named r on gpu_temperature_celsius, plus the given keys."""
    (only,) = parse_rules('[[alarm]]\nname = "r"\nmetric = "gpu_temperature_celsius"\n' + text)
    return only
