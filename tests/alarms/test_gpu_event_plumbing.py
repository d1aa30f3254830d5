"""Health fed by the daemon, not by the core: GPU fault events arrive as `Event(kind="gpu")`
through the component's `on_event`, devices through `ctx.gpu_devices()`; the alarms and
health components are built linked, per context; unknown AMD event codes are logged."""
from __future__ import annotations

import logging

from agent.events import Event
from agent.health import Health
from agent.sources.gpu import gpu_event
from alarm_helpers import CONFIG, Daemonish, FakeCoreEvent, FakeDevice


class UntouchableCore:
    """A core the alarms component must not read events or devices from (the GPU source does)."""

    def __init__(self, core):
        self.ring = core.ring

    def events(self):
        raise AssertionError("alarms read core.events(); the GPU source drains them")

    def devices(self):
        raise AssertionError("alarms walked core.devices(); ctx.gpu_devices() has them")


def test_health_folds_gpu_events_from_on_event_without_reading_the_core(tmp_path):
    d = Daemonish(tmp_path)
    d.ctx.core = d.alarms.ctx.core = UntouchableCore(d.core)
    real = d.core
    d.core = None  # Daemonish.run then pumps no core events itself
    try:
        d.run(2, {})
        now = d.clock()
        d.alarms.on_event(gpu_event(FakeCoreEvent("xid", 1, 79, now + 0.5, "fallen off the bus"), d.labels(1)))
        d.alarms.on_event(Event("alarm", now, {"gpu": "1"}, {"rule": "x"}))  # other kinds: not health's
        d.run(3, {})
    finally:
        d.alarms.stop()
        d.core = real
    (health,) = d.of("health")
    assert (health.labels, health.data["state"], health.data["cause"]["code"]) == (d.labels(1), "failed", 79)
    assert [g["state"] for g in d.health.status()] == ["ok", "failed"]


def test_a_lost_device_from_the_sources_list_marks_health_lost(tmp_path):
    d = Daemonish(tmp_path)
    try:
        d.run(1, {})
        d.core.devices_[0] = FakeDevice(0, state="lost", lost_reason="GPU is lost")
        d.run(1, {})
    finally:
        d.alarms.stop()
    (lost,) = d.of("health", state="lost")
    assert lost.labels["gpu"] == "0" and lost.data["cause"]["detail"] == "GPU is lost"


def test_each_context_gets_its_own_linked_alarms_and_health(tmp_path):
    a, b = Daemonish(tmp_path / "a"), Daemonish(tmp_path / "b", CONFIG)
    try:
        assert a.health.alarms is a.alarms and b.health.alarms is b.alarms
        a.run(1, {})
        a.core.queued.append(FakeCoreEvent("xid", 0, 48, a.clock() + 0.1, "DBE"))
        a.run(1, {})
        b.run(2, {})
        assert [g["state"] for g in a.health.status()] == ["failed", "ok"]
        assert [g["state"] for g in b.health.status()] == ["ok", "ok"]
    finally:
        a.alarms.stop()
        b.alarms.stop()


def test_unknown_amd_event_codes_are_logged_not_dropped_silently(caplog):
    h = Health(hold_s=600)
    devices = [FakeDevice(0, vendor="amd", name="AMD FirePro S7150")]
    with caplog.at_level(logging.INFO, logger="egs-agent.health"):
        assert h.observe([FakeCoreEvent("amd", 0, 99, 1.0, "new kind of notice")], devices, 1.0) == []
    assert [g["state"] for g in h.status()] == ["ok"]
    (record,) = [r for r in caplog.records if "AMD SMI event 99" in r.getMessage()]
    assert "GPU 0" in record.getMessage() and "new kind of notice" in record.getMessage()
