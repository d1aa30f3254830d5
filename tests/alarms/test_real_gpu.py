"""The alarm path on real NVIDIA hardware: the daemon with the system's own libnvidia-ml.so.1.

Skips, saying why, where there is no NVIDIA GPU and driver (CI and the build machines); on a
GPU host it runs the same end-to-end check as the simulated one, on real temperatures: a rule
every GPU breaches (5-second average >= 0 °C) fires exactly once per GPU, each with a
recording of raw samples at the sampling rate.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


pytestmark = pytest.mark.gpu


def _real_env() -> dict[str, str]:
    """The environment with every simulated-GPU override removed."""
    return {k: v for k, v in os.environ.items()
            if k not in ("EGS_SIM_SCENARIO", "EGS_NVML_LIBRARY", "EGS_AMDSMI_LIBRARY", "LD_LIBRARY_PATH")}


@pytest.fixture(scope="module")
def gpus():
    # Probe in a fresh process: once a test in this process has dlopen'ed the simulated
    # libnvidia-ml.so.1 by path, a later dlopen of the soname returns that same copy, and
    # the simulator would pass for a real GPU.
    probe = subprocess.run([sys.executable, "-m", "agent.cli", "probe", "--seconds", "0.2", "--json"],
                           env=_real_env(), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    backend = report["backends"]["nvidia"]
    devices = [g for g in report["gpus"] if g["vendor"] == "nvidia"]
    if backend["state"] != "ok" or not devices:
        pytest.skip(f"no NVIDIA GPU here: NVML backend {backend['state']} ({backend['detail']})")
    return devices


AGENT_TOML = """
[agent]
state_dir = "{state}"
[gpu]
hz = 100
amd = false
ring_seconds = 20
[api]
socket = "{socket}"
[windows]
sizes = ["10s", "1m"]
[recorder]
before = "3s"
after = "2s"
[nic]
mode = "off"

[[alarm]]
name = "gpu-warm"
metric = "gpu_temperature_celsius"
window = "5s"
stat = "avg"
threshold = 0
consecutive = 2
interval = "1s"
"""


def test_daemon_on_real_gpus_fires_once_per_gpu_with_full_rate_recordings(gpus, tmp_path):
    socket = str(tmp_path / "agent.sock")
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML.format(state=tmp_path / "state", socket=socket))
    env = _real_env()
    log = tmp_path / "daemon.log"
    with open(log, "w") as err:
        daemon = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
                                  env=env, stderr=err, stdout=subprocess.DEVNULL)
    want = {str(g["index"]) for g in gpus}
    try:
        headers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
            out = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", socket, "recordings", "--json"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                headers = [h for h in json.loads(out.stdout)["recordings"] if h["reason"].get("rule") == "gpu-warm"]
                if {str(h["gpus"][0]) for h in headers} == want:
                    break
        time.sleep(2)
        recs = [json.loads(subprocess.run([sys.executable, "-m", "agent.cli", "--socket", socket, "recordings",
                                           h["id"], "--json"], capture_output=True, text=True).stdout)
                for h in headers]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    lines = log.read_text().splitlines()
    fired = [ln for ln in lines if "event=alarm" in ln and '"gpu-warm"' in ln and 'notify="firing"' in ln]
    assert sorted(ln.split("gpu=")[1].split(",")[0] for ln in fired) == sorted(want), "\n".join(lines[-30:])
    assert {str(r["gpus"][0]) for r in recs} == want
    for rec in recs:
        (gpu,) = rec["data"]
        temps = [t for t in gpu["values"]["gpu_temperature_celsius"] if t is not None]
        ts = gpu["timestamps"]
        rate = (len(ts) - 1) / (ts[-1] - ts[0])
        print(f"GPU {gpu['gpu']}: {len(ts)} samples at {rate:.1f} Hz, temperature {min(temps)}..{max(temps)} °C")
        assert 0 < min(temps) <= max(temps) < 120
        assert rate > 50  # raw samples at the sampling rate (100 Hz asked), not 1-second aggregates
