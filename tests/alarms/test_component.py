"""The alarms and recorder components inside a daemon context: windows in, events, hooks and
recordings out (the recorder triggered by the events alone)."""
from __future__ import annotations

import json
import sys

import pytest

from agent import config
from agent.recorder.store import read_file
from collector_procs import wait_for
from alarm_helpers import CONFIG, Daemonish, FakeCoreEvent

@pytest.fixture
def d(tmp_path):
    d = Daemonish(tmp_path)
    yield d
    d.stop()


def test_hot_gpu_fires_once_with_a_recording_and_the_hook(d):
    d.run(30, {0: 85.0, 1: 40.0})
    fired = d.of("alarm", notify="firing")
    assert [(e.data["rule"], e.labels["gpu"]) for e in fired] == [("gpu-hot", "0")]
    assert fired[0].data["record"] is True  # the rule asks; the recorder decides from the event
    d.recorder.recorder._worker.submit(lambda: None).result()
    assert wait_for(lambda: d.of("recording"))
    (ready,) = d.of("recording")  # what the outbox ships to the collector
    rec = d.recorder.recorder.read(ready.data["id"])
    assert rec["gpus"] == [0] and rec["reason"]["rule"] == "gpu-hot" and ready.labels["gpu"] == "0"
    assert rec["from"] == fired[0].ts - 5 and rec["to"] == fired[0].ts + 2 and rec["samples"] == 700
    assert read_file(ready.data["path"])["data"][0]["timestamps"] == rec["data"][0]["timestamps"]
    assert wait_for(lambda: d.hook_out.exists() and d.hook_out.read_text().strip())
    hooked = json.loads(d.hook_out.read_text().splitlines()[0])
    assert hooked["data"]["rule"] == "gpu-hot" and hooked["labels"]["gpu"] == "0"
    assert [s["labels"]["gpu"] for s in d.alarms.status()] == ["0"]  # only the label set not ok


def test_state_is_saved_and_a_rebuilt_component_does_not_refire(tmp_path):
    d = Daemonish(tmp_path)
    d.run(10, {0: 85.0})
    d.stop()
    assert len(d.of("alarm", notify="firing")) == 1
    again = Daemonish(tmp_path)
    again.clock.now = d.clock.now
    again.run(30, {0: 85.0})
    again.stop()
    assert again.of("alarm", notify="firing") == []
    assert [s["state"] for s in again.alarms.view()["states"] if s["rule"] == "gpu-hot"] == ["alarm"]


def test_xid_gives_a_health_event_and_the_builtin_rule_fires_sharing_one_recording(d):
    d.run(2, {})
    d.core.queued.append(FakeCoreEvent("xid", 1, 79, d.clock() + 0.5, "fallen off the bus"))
    d.run(10, {})
    (health,) = d.of("health")
    assert (health.labels["gpu"], health.data["state"], health.data["cause"]["code"]) == ("1", "failed", 79)
    (fired,) = d.of("alarm", notify="firing")
    assert (fired.data["rule"], fired.labels["gpu"]) == ("gpu-critical-xid", "1")
    assert [g["state"] for g in d.health.gpus()] == ["ok", "failed"]
    d.stop()  # writes what is pending
    (ready,) = d.of("recording")  # one incident, one recording: health's, the alarm's too
    assert ready.data["reason"]["kind"] == "health" and ready.data["gpus"] == [1]
    assert [r["rule"] for r in ready.data["reason"]["also"]] == ["gpu-critical-xid"]
    assert d.windows.latest("gpu_xid_critical", d.labels(1)) == 1.0  # the gauge is a metric too


def test_builtin_rules_can_be_switched_off(tmp_path):
    d = Daemonish(tmp_path, CONFIG + "\n[alarms]\nbuiltin_critical_xid = false\nbuiltin_lost_gpu = false\n"
                  "builtin_gpu_signals = false\n")
    try:
        assert sorted(d.alarms.engine.rules) == ["gpu-hot"]
    finally:
        d.stop()


def test_a_rule_window_longer_than_the_daemon_keeps_is_reported_not_evaluated(tmp_path):
    d = Daemonish(tmp_path, CONFIG.replace('window = "10s"', 'window = "1h"'))
    try:
        d.run(3, {0: 90.0})
        errors = {r["name"]: r.get("error") for r in d.alarms.view()["rules"]}
        assert "longer than the 300s the daemon keeps" in errors["gpu-hot"]
        assert d.of("alarm", rule="gpu-hot") == []
    finally:
        d.stop()


def test_without_a_core_rules_still_run_and_no_recording_is_made(tmp_path):
    d = Daemonish(tmp_path, core=False)
    try:
        d.run(5, {0: 90.0})
        (fired,) = d.of("alarm", notify="firing")
        assert fired.data["record"] is True and d.recorder.status()["available"] is False
    finally:
        d.stop()
    assert d.of("recording") == []


def test_reload_keeps_an_active_alarm(d):
    d.run(5, {0: 90.0})
    d.alarms.reload(config.parse(CONFIG.format(state=d.ctx.state_dir.parent / "state", python=sys.executable,
                                               hook_out=d.hook_out).replace("threshold = 70", "threshold = 75"),
                                 "agent.toml"))
    d.run(5, {0: 90.0})
    assert len(d.of("alarm", notify="firing")) == 1
