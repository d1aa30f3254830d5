"""The data path one way, in the daemon: core faults -> the GPU source's events -> the health
source's gauges (in the windows) and changes -> the alarm rules, which read the windows only
-> alarm events -> the flight recorder, which nobody calls: it takes its cue from the events."""
from __future__ import annotations

import json

import pytest

from agent import config
from agent.daemon import Daemon
from agent.native import Backend, CoreEvent, Device
from daemon_helpers import FakeGpuCore, write_config


def device(index, state="ok"):
    return Device(index=index, vendor="nvidia", uuid=f"GPU-{index}", name="Tesla T4", pci_bus_id="",
                  state=state, lost_reason="GPU is lost" if state == "lost" else "")


@pytest.fixture
def daemon(short_dir):
    core = FakeGpuCore([device(0), device(1)], backends={"nvidia": Backend("nvidia", "ok", "", "")})
    path = write_config(short_dir, "[gpu]\nenabled = true\n")
    d = Daemon(config.load(path, env={}), config_path=str(path), env={},
               components=("agent.alarms.component:build",), core_factory=lambda s: core)
    d.start()
    yield d, core
    d.stop()


def kinds(d):
    return [(e["kind"], e["labels"].get("gpu")) for e in json.loads(d.status_json())["events"]]


def test_a_critical_xid_reaches_health_the_rules_and_one_recording_in_the_tick_it_came(daemon):
    d, core = daemon
    assert [s.name for s in d.sources] == ["gpu", "host", "workload", "health"]
    assert [slot.name for slot in d.slots] == ["alarms", "recorder"]
    now = d.clock() + 1  # a second after the start's tick: the built-in rules are due again
    core.queued = [CoreEvent("xid", 1, 79, now - 0.5, "fallen off the bus")]
    d.tick(now)
    # One tick: the fault, the health change it made, the built-in rule firing on the gauge.
    assert kinds(d)[-3:] == [("gpu", "1"), ("health", "1"), ("alarm", "1")]
    doc = json.loads(d.status_json())
    alarm = doc["events"][-1]["data"]
    assert (alarm["rule"], alarm["notify"], alarm["record"]) == ("gpu-critical-xid", "firing", True)
    labels = doc["gpus"][1]
    assert d.windows.latest("gpu_xid_critical", {"gpu": "1", "uuid": "GPU-1", "vendor": "nvidia",
                                                 "model": "Tesla T4"}) == 1.0 and labels["uuid"] == "GPU-1"
    assert [g["state"] for g in doc["health"]] == ["ok", "failed"]
    assert doc["sources"]["health"]["state"] == "ok" and "health" not in doc["components"]
    # The health event and the alarm it raised share one pending recording of GPU 1.
    recorder = d.slots[1].component.recorder
    assert recorder.summary()["pending"] == 1 and doc["recorder"]["pending"] == 1
    (pending,) = recorder._pending
    assert pending.gpus == (1,) and pending.reason["kind"] == "health"
    assert [r["rule"] for r in pending.reason["also"]] == ["gpu-critical-xid"]


def test_a_device_lost_in_the_sources_list_is_health_lost_and_the_builtin_rule_resolves_when_back(daemon):
    d, core = daemon
    now = d.clock() + 1
    core.devices_[0] = device(0, state="lost")
    d.tick(now)
    assert kinds(d)[-2:] == [("health", "0"), ("alarm", "0")]
    doc = json.loads(d.status_json())
    assert doc["health"][0]["state"] == "lost" and doc["events"][-1]["data"]["rule"] == "gpu-lost"
    core.devices_[0] = device(0)
    d.tick(now + 1)
    doc = json.loads(d.status_json())
    assert doc["health"][0]["state"] == "ok"
    assert [(e["kind"], e["data"].get("notify")) for e in doc["events"][-2:]] == [("health", None), ("alarm", "resolved")]
