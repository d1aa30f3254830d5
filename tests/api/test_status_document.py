"""The `status --json` document on its own: assembled from the main loop's parts and what any
thread may read, at most once per published tick, NaN/inf as null, "{}" before the first."""
from __future__ import annotations

import json
import math

from agent.api.status import StatusDocument
from agent.sources.base import Source
from agent.windows import Windows


class _Health(Source):
    name = "health"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def collect(self, now):
        return []

    def gpus(self):
        self.calls += 1
        return [{"gpu": 0, "state": "ok"}]


def parts(now, own=None):
    return {"now": now, "ticks": 3, "tick_avg_ms": 1.5, "gpus": ([], {}, None, now), "backends": {},
            "components": {"x": {"state": "ok"}}, "events": [], "own": own or {}}


def document():
    health = _Health()
    doc = StatusDocument(windows=Windows([10], lambda: 100.0), sources={"health": health}, host_id="h",
                         started_at=90.0, config_path=None, simulated=False, labels=lambda: {"rack": "a"})
    return doc, health


def test_before_the_first_tick_the_document_is_empty():
    doc, _ = document()
    assert doc.json() == "{}"


def test_the_document_has_the_contracts_keys_and_each_components_own():
    doc, _ = document()
    doc.publish(parts(100.0, {"recorder": {"pending": 0}}))
    d = json.loads(doc.json())
    assert list(d)[:11] == ["simulated", "agent", "host", "gpus", "backends", "sources", "components", "events",
                            "alarms", "nic", "health"]
    assert d["recorder"] == {"pending": 0} and d["health"] == [{"gpu": 0, "state": "ok"}]
    assert (d["agent"]["uptime_s"], d["agent"]["labels"], d["sources"]["health"]["state"]) == (10.0, {"rack": "a"},
                                                                                             "starting")


def test_it_is_assembled_once_per_published_tick_however_often_asked():
    doc, health = document()
    doc.publish(parts(100.0))
    first = doc.json()
    assert doc.json() is first and health.calls == 1
    doc.publish(parts(101.0))
    doc.json()
    assert health.calls == 2


def test_a_non_finite_figure_becomes_null_not_invalid_json():
    doc, _ = document()
    doc.publish(parts(100.0, {"stream": {"rate": math.nan, "lag": [math.inf, 1.0]}}))
    d = json.loads(doc.json())
    assert d["stream"] == {"rate": None, "lag": [None, 1.0]}
