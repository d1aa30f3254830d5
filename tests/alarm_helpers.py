"""Helpers for the alarm tests: a virtual clock, a figure source set by hand, and rules
written as the TOML an operator would write (parsed by the real config machinery).
Imported by name (pyproject's pytest `pythonpath` puts tests/ on sys.path).
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


# --- the alarms component in just enough of a daemon ---------------------------------------------

import logging  # noqa: E402
import sys  # noqa: E402

from agent.alarms.component import build  # noqa: E402
from agent.config import parse_duration  # noqa: E402
from agent.components import Context  # noqa: E402
from agent.sources.base import Sample, collect_safely  # noqa: E402
from agent.sources.gpu import gpu_event  # noqa: E402
from agent.sources.health import HealthSource  # noqa: E402
from agent.windows import Windows  # noqa: E402

CONFIG = """
[agent]
state_dir = "{state}"

[recorder]
before = "5s"
after = "2s"

[[alarm]]
name = "gpu-hot"
metric = "gpu_temperature_celsius"
window = "10s"
stat = "avg"
threshold = 70
consecutive = 3
interval = "1s"
command = ["{python}", "-c", "import sys; open('{hook_out}', 'a').write(sys.stdin.read())"]
"""


class _CoreSource:
    """The GPU source's part the health source reads: the core's devices and this tick's
    faults as `Event(kind="gpu")`."""

    def __init__(self, core, labels_of):
        self.core, self.labels_of, self.tick_events = core, labels_of, []

    @property
    def devices(self):
        return self.core.devices() if self.core is not None else []

    def collect(self):
        events = self.core.events() if self.core is not None else []
        self.tick_events = [gpu_event(ev, self.labels_of(ev.gpu)) for ev in events]


class Daemonish:
    """Just enough of the daemon: windows, the health source, a context, an emit that
    collects, the alarms and recorder components and a tick loop in the daemon's order."""

    def __init__(self, tmp_path, text=CONFIG, core=True):
        self.clock = Clock(1_700_000_000.0)
        self.hook_out = tmp_path / "hook.jsonl"
        self.cfg = config.parse(text.format(state=tmp_path / "state", python=sys.executable,
                                            hook_out=self.hook_out), "agent.toml")
        self.windows = Windows([10, 60, 300], self.clock)
        self.core = FakeCore(clock=self.clock) if core else None
        self.gpu = _CoreSource(self.core, self.labels)
        self.health = HealthSource(self.gpu, parse_duration(self.cfg.health.xid_hold))
        self.health.start()
        self.events = []
        self.ctx = Context(windows=self.windows, core=self.core, emit=self.events.append,
                           state_dir=tmp_path / "state", clock=self.clock, host_id="h", labels={},
                           log=logging.getLogger("test"),
                           gpu_devices=self.core.devices if self.core is not None else (lambda: []),
                           gpu_health=self.health.gpus)
        components = build(self.cfg, self.ctx)
        self.alarms = components[0]
        self.recorder = components[1] if len(components) > 1 else None
        self.components = components
        for c in components:
            c.start()

    def labels(self, gpu):
        return {"gpu": str(gpu), "uuid": f"GPU-{gpu:08d}", "vendor": "nvidia", "model": "Tesla P100-PCIE-16GB"}

    def run(self, seconds, temps):
        for _ in range(seconds):
            now = self.clock.advance(1.0)
            for gpu, t in temps.items():
                self.windows.add(Sample.reading("gpu_temperature_celsius", self.labels(gpu), t, now))
            # As the daemon does: the sources are collected into the windows (GPU, then
            # health), their events delivered, then the components tick; what they emit is
            # delivered at the end of the tick.
            self.gpu.collect()
            self.windows.add_all(collect_safely(self.health, now))
            arrived = self.gpu.tick_events + self.health.tick_events  # the faults, then health's changes
            self.events += arrived
            self._deliver(arrived)
            seen = len(self.events)
            for c in self.components:
                c.tick(now)
            self._deliver(self.events[seen:])

    def _deliver(self, events):
        if self.recorder is not None:
            for event in events:
                self.recorder.on_event(event)

    def stop(self):
        for c in self.components:
            c.stop()

    def of(self, kind, **data):
        return [e for e in self.events if e.kind == kind and all(e.data.get(k) == v for k, v in data.items())]
