"""Start/stop, rate accuracy, error mapping and the probe command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sim_paths
from sim_paths import CLASSIC_SLOW

from agent import metrics
from agent.native import Core, InvalidArgument, NativeError, StateError


def test_start_stop_repeated_many_times(make_core):
    core = make_core("constant", start=False, hz=1000, amd=False)
    for _ in range(60):
        core.start()
        assert core.running()
        assert len(core.devices()) == 2
        core.stop()
        assert not core.running()
    core.stop()  # idempotent
    # Descriptions stay readable after stop.
    assert core.backends["nvidia"].state == "ok"
    assert core.backends["nvidia"].symbols["temperature"] == "nvmlDeviceGetTemperatureV"
    assert [d.uuid for d in core.devices()] == [
        "GPU-8f1c2d3e-0000-4000-8000-000000000001", "GPU-8f1c2d3e-0000-4000-8000-000000000002"]


def test_concurrent_stops_are_safe_and_prompt_at_low_rate(make_core):
    for _ in range(10):
        core = make_core("constant", hz=1, amd=False)
        threads = [threading.Thread(target=core.stop) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        assert not core.running()


def test_rate_is_held_on_the_deadline_grid(make_core):
    hz = 200.0
    core = make_core("constant", hz=hz, amd=False, buffers=False, slow_fields=CLASSIC_SLOW)  # a read per field per tick
    # Count-based: run until 200 ticks (a second when the machine is idle), however long a
    # loaded machine takes, then check the grid's bookkeeping rather than the wall clock.
    deadline = time.monotonic() + 30.0
    while core.sampler_stats()["ticks"] < 200:
        assert time.monotonic() < deadline, "the sampler made no progress"
        time.sleep(0.02)
    core.stop()
    s = core.sampler_stats()
    expected = s["elapsed_s"] * hz
    # Every grid slot is either a tick or a counted skip: nothing drifts, and a stall never
    # turns into a burst. Slots are counted up to the last tick, so the only shortfall is the
    # wait between that tick and the stop (a few slots when the machine is busy).
    slots = s["ticks"] + s["late_ticks"]
    assert slots <= expected + 2
    assert slots >= expected - max(3, 0.05 * expected)
    assert s["ticks"] >= 200
    counts = {(x.gpu, x.metric): x.count for x in core.drain()}
    assert counts[(0, "gpu_temperature_celsius")] == s["ticks"]
    # 2 GPUs: 6 fast field values every tick, 4 slow ones on the slow ticks.
    assert s["reads_fast"] == s["ticks"] * 2 * 6
    assert s["reads_slow"] == s["slow_ticks"] * 2 * 4
    assert s["reads"] == s["reads_fast"] + s["reads_slow"]
    assert s["thread_cpu_s"] > 0


def test_a_ticks_work_median_is_its_calls_latency_plus_the_fold(make_core, tmp_path):
    # One GPU whose every query takes 1 ms, every field by its own call every tick: 8 calls
    # (utilisation, memory, temperature, power, two clocks, energy, fan), so a tick's work
    # is at least 8 ms, and the median lands within the histogram's 1.6 % buckets plus the
    # sleeps' overshoot.
    scenario = tmp_path / "ms-calls.toml"
    scenario.write_text('[sim]\ncall_latency_us = 1000\n\n[[gpu]]\nvendor = "nvidia"\n'
                        'name = "Tesla P100-PCIE-16GB"\npci_bus_id = "00000000:00:08.0"\n')
    core = make_core(scenario, hz=20, slow_hz=20, amd=False, events=False, batch=False, buffers=False,
                     health_hz=0, process_hz=0)
    deadline = time.monotonic() + 30.0
    while core.sampler_stats()["ticks"] < 12:
        assert time.monotonic() < deadline, "the sampler made no progress"
        time.sleep(0.05)
    s = core.sampler_stats()
    assert s["library_calls"] == 8 * s["ticks"]
    assert 8000 <= s["tick_work_p50_us"] <= 8000 * 1.5, s
    assert s["tick_work_p50_us"] > s["fold_p50_us"] > 0


def test_a_second_start_while_running_raises_state_error(make_core):
    core = make_core("constant", amd=False)
    with pytest.raises(StateError):
        core.start()


def test_ring_of_an_unknown_gpu_raises_invalid_argument(make_core):
    core = make_core("constant", amd=False)
    with pytest.raises(InvalidArgument) as e:
        core.ring(99)
    assert isinstance(e.value, NativeError)
    assert "gpu 99" in str(e.value)


def test_bad_arguments_are_refused_before_reaching_c():
    with pytest.raises(ValueError):
        Core(hz=0)
    for wait_ms in (0, 2001, -5):  # 1..EGS_EVENT_WAIT_MAX: stop joins the threads for 3 s
        with pytest.raises(ValueError, match="event_wait_ms"):
            Core(event_wait_ms=wait_ms)


def _switches(name: str) -> int:
    """Voluntary context switches of this process's thread called `name` (each sleep is one)."""
    for task in Path("/proc/self/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    raise AssertionError(f"no thread {name}")


def test_an_idle_sampler_sleeps_to_its_next_tick_and_still_stops_at_once(make_core):
    # One tick a second: the sampler used to wake every 50 ms to look for a stop (40 wake-ups
    # in 2 s); it now sleeps to the deadline and the stop wakes it.
    core = make_core("constant", hz=1, amd=False, events=False)
    time.sleep(0.2)
    before = _switches("egs-sampler")
    time.sleep(2.0)
    woke = _switches("egs-sampler") - before
    assert woke <= 8, f"{woke} wake-ups in 2 s at 1 Hz"
    stop_started = time.monotonic()
    core.stop()
    assert time.monotonic() - stop_started < 1.0  # not the rest of the second: the stop woke it


def test_the_core_threads_are_named_for_top_and_ps(make_core):
    core = make_core("nvidia-xid", amd=False)
    names = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    assert {"egs-sampler", "egs-events"} <= names
    core.stop()


def test_switched_off_backends_say_so(make_core):
    core = make_core("constant", nvidia=False, amd=False)
    assert core.backends["nvidia"].state == "unavailable"
    assert "disabled" in core.backends["nvidia"].detail
    assert core.devices() == []


def test_probe_json_has_every_backend_gpu_and_metric(sim_out):
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("nvidia-unsupported")))
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "probe", "--seconds", "0.3", "--hz", "50", "--json",
         "--nvml-library", str(sim_paths.NVML_LIB), "--amdsmi-library", "/nonexistent/libamd_smi.so"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(sim_paths.ROOT))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["backends"]) == {"nvidia", "amd"}
    assert report["backends"]["nvidia"]["state"] == "ok"
    assert report["backends"]["amd"]["state"] == "unavailable"
    assert [g["index"] for g in report["gpus"]] == [0, 1]
    gpu0 = report["gpus"][0]
    assert gpu0["uuid"] == "GPU-0e5e0000-0000-4000-8000-000000000000"
    assert set(gpu0["metrics"]) == set(metrics.GPU_METRICS)
    fan = gpu0["metrics"]["gpu_fan_speed_percent"]
    assert fan == {"supported": False, "count": 0, "mean": None, "min": None, "max": None, "last": None,
                   "path": "none"}
    assert gpu0["metrics"]["gpu_temperature_celsius"]["path"] == "call"
    assert gpu0["paths"]["gpu_fan_speed_percent"] == "none"
    temp = gpu0["metrics"]["gpu_temperature_celsius"]
    assert temp["supported"] and temp["count"] > 0
    assert temp["mean"] == temp["min"] == temp["max"] == temp["last"] == 55
    assert report["sampler"]["ticks"] > 0


def test_probe_text_names_unsupported_metrics(sim_out):
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("nvidia-unsupported")))
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "probe", "--seconds", "0.2",
         "--nvml-library", str(sim_paths.NVML_LIB), "--amdsmi-library", "/nonexistent/libamd_smi.so"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(sim_paths.ROOT))
    assert result.returncode == 0, result.stderr
    assert "nvidia: ok" in result.stdout
    fan_line = next(l for l in result.stdout.splitlines() if "gpu_fan_speed_percent" in l)
    assert "unsupported" in fan_line
