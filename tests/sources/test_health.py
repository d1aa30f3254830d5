"""GPU health from the GPU source's fault events: XIDs by class, lost GPUs, and recovery that
does not stick; and the health source that yields its gauges and events like any source."""
from __future__ import annotations

from agent.sources.gpu import gpu_event
from agent.sources.health import Health, classify_xid
from alarm_helpers import FakeCoreEvent, FakeDevice


def fault(*args):
    """A core event as the GPU source hands it on: an Event(kind="gpu")."""
    return gpu_event(FakeCoreEvent(*args), None)


T0 = 1_700_000_000.0


def test_critical_xids_are_classified_per_nvidia_catalogue():
    assert classify_xid(79)[0] == "failed" and "fallen off the bus" in classify_xid(79)[1]
    assert {code: classify_xid(code)[0] for code in (48, 63, 64, 74, 92, 94, 95)} == {
        48: "failed", 63: "degraded", 64: "failed", 74: "failed", 92: "degraded", 94: "degraded", 95: "failed"}
    assert classify_xid(13) == ("info", "graphics engine exception")
    assert classify_xid(12345) == ("info", "unlisted XID")


def test_xid_79_fails_the_gpu_and_xid_13_is_reported_without_changing_health():
    h = Health(hold_s=600)
    devices = [FakeDevice(0), FakeDevice(1)]
    events = h.observe([fault("xid", 0, 79, T0 + 1)], devices, T0 + 1)
    assert [(e.kind, e.labels["gpu"], e.data["previous"], e.data["state"]) for e in events] == [
        ("health", "0", "ok", "failed")]
    assert events[0].labels == {"gpu": "0", "uuid": "GPU-00000000", "vendor": "nvidia", "model": "Tesla P100-PCIE-16GB"}
    assert events[0].data["cause"]["code"] == 79
    events = h.observe([fault("xid", 0, 13, T0 + 2)], devices, T0 + 2)
    assert [(e.data["state"], e.data["cause"]["effect"]) for e in events] == [("failed", "info")]
    assert [g["state"] for g in h.status()] == ["failed", "ok"]
    assert h.value("gpu_xid_critical", h.gpus[0]) == 1.0
    assert h.value("gpu_xid_critical", h.gpus[1]) == 0.0


def test_a_passed_xid_lapses_after_its_hold_and_the_gauge_returns_to_zero():
    h = Health(hold_s=600)
    devices = [FakeDevice(0)]
    h.observe([fault("xid", 0, 94, T0)], devices, T0)
    h.observe([fault("xid", 0, 94, T0 + 300)], devices, T0 + 300)  # a repeat renews the hold
    assert h.observe([], devices, T0 + 899) == []
    events = h.observe([], devices, T0 + 900)
    assert [(e.data["previous"], e.data["state"], e.data["cause"]["kind"]) for e in events] == [
        ("degraded", "ok", "recovered")]
    g = h.gpus[0]
    assert h.value("gpu_xid_critical", g) == 0.0 and h.value("gpu_health_state", g) == 0.0
    assert g.xid_total == 2 and g.last_xid["code"] == 94  # the history stays


def test_lost_gpu_from_event_and_device_state_until_it_answers_again():
    h = Health(hold_s=600)
    ok, lost = FakeDevice(1), FakeDevice(1, state="lost", lost_reason="GPU_IS_LOST")
    assert h.observe([], [FakeDevice(0), ok], T0) == []
    events = h.observe([fault("lost", 1, 15, T0 + 1, "nvmlDeviceGetTemperature: GPU is lost")],
                       [FakeDevice(0), lost], T0 + 1)
    assert [(e.labels["gpu"], e.data["state"]) for e in events] == [("1", "lost")]
    assert h.observe([], [FakeDevice(0), lost], T0 + 2) == []  # no repeat while it stays lost
    assert h.value("gpu_lost", h.gpus[1]) == 1.0 and h.value("gpu_health_state", h.gpus[1]) == 3.0
    events = h.observe([], [FakeDevice(0), ok], T0 + 60)
    assert [(e.data["previous"], e.data["state"]) for e in events] == [("lost", "ok")]


def test_lost_seen_only_in_device_state_still_counts():
    h = Health()
    events = h.observe([], [FakeDevice(0, state="lost", lost_reason="RESET_REQUIRED")], T0)
    assert [(e.data["state"], e.data["cause"]["detail"]) for e in events] == [("lost", "RESET_REQUIRED")]


def test_lost_outranks_failed():
    h = Health()
    h.observe([fault("xid", 0, 79, T0)], [FakeDevice(0)], T0)
    events = h.observe([fault("lost", 0, 15, T0 + 1)], [FakeDevice(0, state="lost")], T0 + 1)
    assert [(e.data["previous"], e.data["state"]) for e in events] == [("failed", "lost")]


def test_amd_reset_degrades_until_completed_and_routine_events_are_ignored():
    h = Health(hold_s=600)
    devices = [FakeDevice(0, vendor="amd", name="AMD FirePro S7150")]
    assert h.observe([fault("amd", 0, 12, T0)], devices, T0) == []  # process start: routine
    events = h.observe([fault("amd", 0, 3, T0 + 1)], devices, T0 + 1)
    assert [(e.data["state"], e.data["cause"]["name"]) for e in events] == [("degraded", "GPU reset in progress")]
    events = h.observe([fault("amd", 0, 4, T0 + 5)], devices, T0 + 5)
    assert [(e.data["previous"], e.data["state"]) for e in events] == [("degraded", "ok")]
    assert h.value("gpu_xid_critical", h.gpus[0]) == 0.0  # not an XID


class _GpuSource:
    """What the health source reads of the GPU source: its devices and this tick's faults."""

    def __init__(self, devices):
        self.devices, self.tick_events = devices, []


def test_the_health_source_yields_gauges_and_the_changes_the_gpu_sources_faults_made():
    from agent.sources.base import collect_safely
    from agent.sources.health import METRICS, HealthSource

    gpu = _GpuSource([FakeDevice(0), FakeDevice(1)])
    source = HealthSource(gpu, hold_s=600)
    source.start()
    collect_safely(source, T0)
    assert [(g["state"], g["since"]) for g in source.gpus()] == [("ok", T0), ("ok", T0)]  # known before any fault
    gpu.tick_events = [fault("xid", 1, 79, T0 + 0.5, "fallen off the bus")]
    samples = collect_safely(source, T0 + 1)
    gauges = {(s.metric, s.labels["gpu"]): s.last for s in samples}
    assert set(gauges) == {(m, g) for m in METRICS for g in ("0", "1")}
    assert gauges[("gpu_xid_critical", "1")] == 1.0 and gauges[("gpu_xid_critical", "0")] == 0.0
    assert gauges[("gpu_health_state", "1")] == 2.0 and gauges[("gpu_xid_errors_total", "1")] == 1.0
    assert all(s.ts == T0 + 1 and s.count == 1 for s in samples)
    # The change the fault caused (the fault itself is the GPU source's event).
    assert [(e.kind, e.labels["gpu"], e.data["state"]) for e in source.tick_events] == [("health", "1", "failed")]
    assert [g["state"] for g in source.gpus()] == ["ok", "failed"]
    gpu.tick_events = []
    collect_safely(source, T0 + 2)
    assert source.tick_events == []  # each collection's events are its own
