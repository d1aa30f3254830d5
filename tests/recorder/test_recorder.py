"""The flight recorder: the ring around an event, written compactly, bounded, readable."""
from __future__ import annotations

import gzip
import json

import pytest

from agent.recorder.store import NoSuchRecording, Recorder, RecordingError
from alarm_helpers import Clock, FakeCore


@pytest.fixture
def setup(tmp_path):
    clock = Clock(1_700_000_100.0)
    core = FakeCore(clock=clock, hz=100.0, ring_seconds=60.0)
    rec = Recorder(tmp_path / "recordings", core, clock, before_s=5.0, after_s=2.0, max_bytes=1 << 20)
    yield clock, core, rec, tmp_path / "recordings"
    rec.stop()


def test_recording_waits_for_the_after_period_then_holds_before_and_after(setup):
    clock, core, rec, directory = setup
    event_ts = clock()
    rid = rec.trigger([1], {"kind": "alarm", "rule": "hot"}, event_ts, tag="hot-gpu1")
    assert rid.endswith("-hot-gpu1-1")
    rec.tick(clock.advance(1.0))
    assert rec.status()["pending"] == 1  # the 2 s after the event have not passed
    rec.tick(clock.advance(1.5))
    rec._worker.submit(lambda: None).result()  # wait for the writer thread
    data = rec.read(rid)
    assert (data["from"], data["to"], data["gpus"]) == (event_ts - 5.0, event_ts + 2.0, [1])
    (gpu,) = data["data"]
    ts = gpu["timestamps"]
    assert len(ts) == 700 and ts[0] >= event_ts - 5.0 and ts[-1] <= event_ts + 2.0  # 7 s at 100 Hz
    assert gpu["values"]["gpu_fan_speed_percent"][0] is None  # unsupported stays null
    assert gpu["values"]["gpu_temperature_celsius"][0] == pytest.approx(60 + ts[0] % 10)
    raw = gzip.decompress((directory / f"{rid}.jsonl.gz").read_bytes()).decode().splitlines()
    assert json.loads(raw[0])["format"] == "egs-recording/1" and len(raw) == 2


def test_one_incident_on_one_gpu_makes_one_recording(setup):
    clock, core, rec, _ = setup
    a = rec.trigger([0], {"kind": "health"}, clock())
    b = rec.trigger([0], {"kind": "alarm", "rule": "gpu-critical-xid"}, clock() + 1)
    c = rec.trigger([1], {"kind": "alarm"}, clock() + 1)
    assert a == b != c


def test_total_size_is_bounded_oldest_dropped_first_and_counted(tmp_path):
    clock = Clock(1_700_000_100.0)
    core = FakeCore(clock=clock)
    rec = Recorder(tmp_path, core, clock, before_s=30, after_s=0.5, max_bytes=1 << 16)
    ids = []
    try:
        for _ in range(6):
            ids.append(rec.record_now([0, 1], 30)["id"])
            clock.advance(1)
    finally:
        rec.stop()
    kept = [h["id"] for h in rec.list()]
    assert kept == ids[-len(kept):] and 0 < len(kept) < 6
    assert rec.status()["bytes"] <= 1 << 16
    assert rec.dropped_total == 6 - len(kept)
    again = Recorder(tmp_path, core, clock)  # the count survives a restart
    assert again.dropped_total == rec.dropped_total
    again.stop()
    with pytest.raises(NoSuchRecording):
        rec.read(ids[0])


def test_on_demand_recording_checks_the_gpu(setup):
    clock, core, rec, _ = setup
    header = rec.record_now([0], 3)
    assert header["samples"] == 300 and header["reason"] == {"kind": "on-demand"}
    with pytest.raises(RecordingError, match="no such GPU"):
        rec.record_now([7], 3)


def test_ids_cannot_escape_the_directory(setup):
    _, _, rec, _ = setup
    for bad in ("../state", "20231114T221500Z-x/../../etc/passwd", ""):
        with pytest.raises(NoSuchRecording):
            rec.read(bad)


def test_no_core_means_no_recording(tmp_path):
    rec = Recorder(tmp_path, None)
    try:
        assert rec.trigger([0], {}, 0.0) is None
        with pytest.raises(RecordingError, match="no GPU core"):
            rec.record_now([0], 1)
    finally:
        rec.stop()


def test_stop_writes_pending_recordings_with_what_there_is(setup):
    clock, core, rec, _ = setup
    rid = rec.trigger([0], {"kind": "alarm"}, clock())
    clock.advance(0.5)
    rec.stop()
    assert rec.read(rid)["to"] == clock()
