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


# --- a stand-in for agent.native.Core (the documented API), for unit tests ---------------------

from dataclasses import dataclass, field  # noqa: E402
from types import SimpleNamespace  # noqa: E402


@dataclass
class FakeDevice:
    index: int
    uuid: str = ""
    vendor: str = "nvidia"
    name: str = "Tesla P100-PCIE-16GB"
    state: str = "ok"
    lost_reason: str | None = None

    def __post_init__(self):
        self.uuid = self.uuid or f"GPU-{self.index:08d}"


@dataclass
class FakeCoreEvent:
    kind: str
    gpu: int
    code: int = 0
    ts: float = 0.0
    detail: str = ""


@dataclass
class FakeCore:
    """Devices, queued events and a ring of `hz` samples a second: temperature = 60 + t % 10."""

    devices_: list = field(default_factory=lambda: [FakeDevice(0), FakeDevice(1)])
    clock: object = None
    hz: float = 100.0
    ring_seconds: float = 60.0
    queued: list = field(default_factory=list)

    def devices(self):
        return list(self.devices_)

    def events(self):
        out, self.queued = self.queued, []
        return out

    def ring(self, gpu, since=None):
        now = self.clock()
        first = max(now - self.ring_seconds, since if since is not None else -1e18)
        n0, n1 = int(first * self.hz) + 1, int(now * self.hz)
        ts = [i / self.hz for i in range(n0, n1 + 1)]
        return SimpleNamespace(timestamps=ts, values={
            "gpu_temperature_celsius": [60.0 + (t % 10) for t in ts],
            "gpu_fan_speed_percent": [None for _ in ts]})
