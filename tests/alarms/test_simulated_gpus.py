"""Health and the end-to-end alarm path on the simulated NVML (native/sim), with the real core.

Needs the native extension (`make native`) and the simulated libraries (built here through
tests/sim_paths.py); without the extension these tests skip and say so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sim_paths
from agent.sources.gpu import gpu_event
from agent.sources.health import Health

import agent.native as native  # built by `make test`: its absence is a failure

HERE = Path(__file__).resolve().parent


@pytest.fixture
def core_on(sim_out, monkeypatch):
    cores = []

    def start(scenario: str):
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(sim_paths.scenario(scenario)))
        core = native.Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, hz=50.0, ring_seconds=10.0)
        core.start()
        cores.append(core)
        return core

    yield start
    for core in cores:
        core.stop()


def health_events(core, until, seconds=8.0):
    """Fold the core's events into Health until `until(events)` holds (or `seconds` pass)."""
    h = Health(hold_s=600)
    events = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        faults = [gpu_event(e, None) for e in core.events()]  # as the GPU source hands them on
        events += h.observe(faults, core.devices(), time.time())
        if until(events):
            break
        time.sleep(0.1)
    return h, events


def test_simulated_xid_79_fails_gpu0_and_xid_13_is_reported(core_on):
    core = core_on("nvidia-xid")
    h, events = health_events(core, lambda ev: len(ev) >= 2)
    got = [(e.labels["gpu"], e.data["state"], e.data["cause"].get("code"), e.data["cause"]["effect"])
           for e in events]
    assert got == [("0", "failed", 79, "failed"), ("0", "failed", 13, "info")]
    assert events[0].labels["uuid"] == "GPU-0e1d0000-0000-4000-8000-000000000000"
    assert [g["state"] for g in h.status()] == ["failed", "ok"]


def test_simulated_lost_gpu1_is_lost_and_gpu0_stays_ok(core_on):
    core = core_on("nvidia-lost")
    h, events = health_events(core, lambda ev: any(e.data["state"] == "lost" for e in ev))
    assert [(e.labels["gpu"], e.data["previous"], e.data["state"]) for e in events] == [("1", "ok", "lost")]
    assert [g["state"] for g in h.status()] == ["ok", "lost"]


AGENT_TOML = """
[agent]
state_dir = "{state}"
[gpu]
hz = 50
amd = false
ring_seconds = 30
[host]
interval = 1
[api]
socket = "{socket}"
[windows]
sizes = ["10s", "1m"]
[recorder]
before = "4s"
after = "2s"
[nic]
mode = "off"

[[alarm]]
name = "gpu-hot"
description = "GPU temperature, 3-second average >= 70"
metric = "gpu_temperature_celsius"
window = "3s"
stat = "avg"
operator = ">="
threshold = 70
consecutive = 2
interval = "1s"
effective = "00:00-23:59"
"""


def cli(*args, socket):
    return subprocess.run([sys.executable, "-m", "agent.cli", "--socket", socket, *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_daemon_fires_once_for_the_hot_gpu_with_a_recording_of_the_crossing(sim_out, tmp_path):
    socket = str(tmp_path / "agent.sock")
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML.format(state=tmp_path / "state", socket=socket))
    env = dict(os.environ, EGS_SIM_SCENARIO=str(HERE / "hot-gpu0.toml"), EGS_NVML_LIBRARY=str(sim_paths.NVML_LIB))
    log = tmp_path / "daemon.log"
    with open(log, "w") as err:
        daemon = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                  env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        recording = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
            result = cli("recordings", "--json", socket=socket)
            if result.returncode == 0:
                found = [h for h in json.loads(result.stdout)["recordings"] if h["reason"].get("rule") == "gpu-hot"]
                if found:
                    recording = found[0]
                    break
        assert recording is not None, log.read_text()[-3000:]
        time.sleep(3)  # a few more evaluations: still exactly one firing
        doc = json.loads(cli("alarms", "--json", socket=socket).stdout)
        rec = json.loads(cli("recordings", recording["id"], "--json", socket=socket).stdout)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    lines = log.read_text().splitlines()
    fired = [ln for ln in lines if "event=alarm" in ln and '"gpu-hot"' in ln and 'notify="firing"' in ln]
    assert len(fired) == 1, "\n".join(lines[-40:])
    assert "gpu=0," in fired[0] and 'record=true' in fired[0]
    assert recording["reason"]["labels"]["gpu"] == "0"  # the recording the firing asked for
    states = {s["labels"]["gpu"]: s["state"] for s in doc["states"] if s["rule"] == "gpu-hot"}
    assert states == {"0": "alarm", "1": "ok"}

    (gpu0,) = rec["data"]
    temps = [t for t in gpu0["values"]["gpu_temperature_celsius"] if t is not None]
    # Full resolution across the crossing: the 50 °C before and the 85 °C after are both there.
    assert min(temps) == 50.0 and max(temps) == 85.0
    assert len(gpu0["timestamps"]) > 100 and rec["gpus"] == [0]
