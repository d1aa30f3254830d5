"""What the GPU source tells besides values: failed reads counted per GPU and metric, a
metric with no recent sample shown null and stale (never its last good value), the core's
fault events emitted by the daemon as `Event(kind="gpu")` whichever components run (with the
health source's changes after them), and the backends described once rather than every tick."""
import dataclasses
import json
import logging

import pytest

from agent import config
from agent.daemon import Daemon
from agent.native import Backend, CoreEvent, Device, FieldStats
from agent.sources.gpu import GpuSource, gpu_event, stale_bound
from agent.windows import Windows
from daemon_helpers import BUILT, FakeGpuCore, write_config

T0 = 1_700_000_000.0
TEMP, CLOCK = "gpu_temperature_celsius", "gpu_sm_clock_mhz"


def device(index, state="ok"):
    return Device(index=index, vendor="nvidia", uuid=f"GPU-{index}", name="Tesla T4", pci_bus_id="",
                  state=state, lost_reason="gone" if state == "lost" else "")


def ok(gpu, metric, value, ts):
    return FieldStats(gpu, metric, 10, value, value, value, value, ts - 1, ts, 0)


def failed(gpu, metric, errors, text=""):
    return FieldStats(gpu, metric, 0, None, None, None, None, None, None, errors, text)


def settings(**over):
    return dataclasses.replace(config.parse("", "test.toml").gpu, **({"hz": 10.0, "slow_hz": 1.0} | over))


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def rig():
    def make(devices=(0, 1), **over):
        core = FakeGpuCore([device(i) for i in devices], backends={
            "nvidia": Backend("nvidia", "ok", "NVML 12", "libnvidia-ml.so.1", "550.54"),
            "amd": Backend("amd", "unavailable", "no libamd_smi.so", "")})
        src = GpuSource(settings(**over), core_factory=lambda s: core)
        src.start()
        clock = Clock(T0)
        return core, src, Windows([10, 60], clock), clock
    return make


def collect(src, windows, clock, now):
    clock.now = now
    samples = src.collect(now)
    windows.add_all(samples)
    return samples


def test_failed_reads_are_counted_per_gpu_and_metric_and_exported_as_a_counter(rig):
    core, src, w, clock = rig()
    core.next_drain = [failed(0, TEMP, 3, "GPU is lost"), ok(0, "gpu_power_watts", 100.0, T0), ok(1, TEMP, 50.0, T0)]
    collect(src, w, clock, T0)
    core.next_drain = [failed(0, TEMP, 2), ok(1, TEMP, 50.0, T0 + 1)]
    samples = collect(src, w, clock, T0 + 1)
    doc = {g["index"]: g for g in src.gpu_status(w)}
    assert doc[0]["read_errors"] == {TEMP: 5}
    assert doc[0]["last_errors"] == {TEMP: "GPU is lost"}
    assert doc[1]["read_errors"] == {} and doc[1]["last_errors"] == {}
    assert doc[0]["metrics"][TEMP] is None  # all reads failed: no data, not 0
    counter = [s for s in samples if s.metric == "gpu_read_errors_total"]
    assert [(s.labels, s.last) for s in counter] == [
        ({"gpu": "0", "uuid": "GPU-0", "vendor": "nvidia", "model": "Tesla T4", "metric": TEMP}, 5.0)]
    assert w.latest("gpu_read_errors_total", counter[0].labels) == 5.0


def test_a_metric_without_samples_past_its_bound_is_null_and_named_stale(rig):
    core, src, w, clock = rig(hz=10.0, slow_hz=0.05)
    assert CLOCK in core.slow_metrics and TEMP not in core.slow_metrics  # the fake's tiers
    assert (src.staleness_bound(TEMP), src.staleness_bound(CLOCK)) == (10.0, 60.0)  # max(10 s, 3 / rate)
    core.next_drain = [ok(0, TEMP, 71.0, T0), ok(0, CLOCK, 1500.0, T0), ok(1, TEMP, 40.0, T0)]
    collect(src, w, clock, T0)
    for t in range(1, 12):  # GPU 0's temperature sensor goes quiet; GPU 1's keeps answering
        core.next_drain = [ok(1, TEMP, 40.0, T0 + t)]
        collect(src, w, clock, T0 + t)
        doc = {g["index"]: g for g in src.gpu_status(w)}
        if t <= 10:
            assert doc[0]["metrics"][TEMP] == 71.0 and doc[0]["stale"] == [], t
    assert doc[0]["metrics"][TEMP] is None and TEMP in doc[0]["stale"]
    assert doc[0]["metrics"][CLOCK] == 1500.0 and CLOCK not in doc[0]["stale"]  # its bound is 60 s
    assert doc[1]["metrics"][TEMP] == 40.0 and TEMP not in doc[1]["stale"]
    core.next_drain = [ok(0, TEMP, 72.0, T0 + 12)]
    collect(src, w, clock, T0 + 12)
    (g0, _) = src.gpu_status(w)
    assert g0["metrics"][TEMP] == 72.0 and TEMP not in g0["stale"]


def test_a_metric_never_sampled_is_stale_once_its_bound_passed(rig):
    core, src, w, clock = rig()
    collect(src, w, clock, T0)
    assert src.gpu_status(w)[0]["stale"] == []
    collect(src, w, clock, T0 + 10.5)
    g0 = src.gpu_status(w)[0]
    assert TEMP in g0["stale"] and g0["metrics"][TEMP] is None


def test_backends_are_described_once_and_again_after_a_device_state_changes(rig):
    core, src, w, clock = rig()
    first = src.backend_status()
    for t in range(5):
        collect(src, w, clock, T0 + t)
        assert src.backend_status() == first
    assert core.calls["backends"] == 1
    core.devices_[1] = device(1, state="lost")
    collect(src, w, clock, T0 + 6)
    assert src.backend_status() == first
    assert core.calls["backends"] == 2


def test_a_core_event_becomes_an_event_of_kind_gpu_with_the_gpus_labels():
    ev = CoreEvent("xid", 1, 79, T0 + 0.25, "fallen off the bus")
    out = gpu_event(ev, {"gpu": "1", "uuid": "GPU-1"})
    assert (out.kind, out.ts, out.labels) == ("gpu", T0 + 0.25, {"gpu": "1", "uuid": "GPU-1"})
    assert out.data == {"event": "xid", "gpu": 1, "code": 79, "detail": "fallen off the bus"}
    assert gpu_event(ev, None).labels == {"gpu": "1"}  # a device the source does not know
    assert stale_bound(0.01) == 300.0 and stale_bound(100.0) == 10.0


def test_the_daemon_emits_core_events_and_walks_devices_once_a_tick_with_no_alarms(short_dir, caplog):
    core = FakeGpuCore([device(0), device(1)], backends={"nvidia": Backend("nvidia", "ok", "", "")})
    path = write_config(short_dir, "[gpu]\nenabled = true\n")
    d = Daemon(config.load(path, env={}), config_path=str(path), env={}, components=("daemon_helpers:build_pair",),
               core_factory=lambda s: core)
    BUILT.clear()
    try:
        d.start()
        first, second = BUILT
        assert (first.ctx, second.ctx) == (d.ctx, d.ctx)
        assert [s.name for s in d.slots] == ["first", "second"]
        assert d.ctx.gpu_devices() == core.devices_
        now = d.clock()
        core.queued = [CoreEvent("xid", 1, 79, now, "fallen off the bus"), CoreEvent("amd", 0, 2, now, "")]
        walks, described = core.calls["devices"], core.calls["backends"]
        with caplog.at_level(logging.INFO, logger="egs-agent"):
            d.tick(d.clock())
        assert core.calls["devices"] == walks + 1  # the source's walk only
        assert core.calls["backends"] == described  # not rebuilt every tick
        assert core.queued == []
        gpu = [e for e in first.events if e.kind == "gpu"]
        assert [(e.data["event"], e.data["gpu"], e.data["code"]) for e in gpu] == [("xid", 1, 79), ("amd", 0, 2)]
        assert gpu[0].labels["uuid"] == "GPU-1"
        assert any("event=gpu" in r.getMessage() and "79" in r.getMessage() for r in caplog.records)
        # The health source read the same faults in the same tick: its changes follow them.
        health = [(e.labels["gpu"], e.data["state"]) for e in first.events if e.kind == "health"]
        assert health == [("1", "failed"), ("0", "degraded")]
        doc = json.loads(d.status_json())
        assert [e["kind"] for e in doc["events"]][-4:] == ["gpu", "gpu", "health", "health"]
        assert [g["state"] for g in doc["health"]] == ["degraded", "failed"]
        assert doc["gpus"][0]["read_errors"] == {} and "stale" in doc["gpus"][0]
    finally:
        d.stop()
