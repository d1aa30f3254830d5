"""The two sampling tiers: fast fields every tick, slow fields (`gpu.slow_fields`) on every
slow_every-th grid slot, counted per tier, and never presented as new samples in between."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import sim_paths
from sim_paths import CLASSIC_SLOW

from agent import config, native
from agent._native import ffi, lib
from agent.native import Core

SLOW = {"gpu_sm_clock_mhz", "gpu_memory_clock_mhz", "gpu_energy_joules_total", "gpu_fan_speed_percent"}
FAST = {"gpu_utilization_percent", "gpu_memory_busy_percent", "gpu_memory_used_bytes",
        "gpu_memory_total_bytes", "gpu_temperature_celsius", "gpu_power_watts"}


def test_default_tiers_are_the_documented_ones():
    assert config.parse("").gpu.slow_fields == list(config.DEFAULT_SLOW_FIELDS)
    assert set(config.GPU_FIELD_GROUPS) == set(native.FIELD_GROUPS)
    core = Core(nvidia=False, amd=False)
    assert core.slow_fields == config.DEFAULT_SLOW_FIELDS
    # Polled fields with neither a buffer nor a batch entry in NVML are slow at the defaults.
    assert core.slow_metrics == SLOW | {"gpu_temperature_celsius", "gpu_memory_used_bytes",
                                        "gpu_memory_total_bytes", "gpu_memory_used_percent"}
    assert Core(nvidia=False, amd=False, slow_fields=CLASSIC_SLOW).slow_metrics == SLOW


def test_slow_fields_are_read_on_every_nth_grid_slot_and_counted_per_tier(make_core):
    # Tiers of polled fields: the driver buffers (read on slow ticks) are tested in test_paths.py.
    core = make_core("constant", hz=100, slow_hz=20, ring_seconds=5, amd=False, buffers=False,
                     slow_fields=CLASSIC_SLOW)
    time.sleep(1.0)
    core.stop()
    s = core.sampler_stats()
    every = s["slow_every"]
    assert every == 5 and s["target_slow_hz"] == pytest.approx(20.0)
    slots = s["ticks"] + s["late_ticks"]
    # Slot 0 reads both tiers; then one slow tick per multiple of 5 (a stall that skips a
    # multiple catches it up on the next tick, so there are never more).
    assert 1 <= s["slow_ticks"] <= (slots - 1) // every + 1
    if s["late_ticks"] == 0:
        assert s["slow_ticks"] == (s["ticks"] - 1) // every + 1
    assert s["slow_ticks"] >= 0.9 * s["ticks"] / every
    assert s["reads_fast"] == s["ticks"] * 2 * len(FAST)
    assert s["reads_slow"] == s["slow_ticks"] * 2 * len(SLOW)
    assert s["reads"] == s["reads_fast"] + s["reads_slow"]

    counts = {(x.gpu, x.metric): x.count for x in core.drain()}
    for gpu in (0, 1):
        for metric in FAST:
            assert counts[(gpu, metric)] == s["ticks"], metric
        for metric in SLOW:
            assert counts[(gpu, metric)] == s["slow_ticks"], metric

    ring = core.ring(0)
    assert len(ring.timestamps) == s["ticks"]
    assert all(v == 65.0 for v in ring.values["gpu_temperature_celsius"])
    # A slot whose tick did not read a slow field says "not sampled", not the last value.
    for metric in SLOW:
        read = [i for i, v in enumerate(ring.values[metric]) if v is not None]
        assert len(read) == s["slow_ticks"], metric
        assert read[0] == 0
        if s["late_ticks"] == 0:
            assert read == list(range(0, s["ticks"], every)), metric
    assert set(v for v in ring.values["gpu_sm_clock_mhz"] if v is not None) == {1328.0}


def test_slow_hz_equal_to_hz_reads_every_field_every_tick(make_core):
    core = make_core("constant", hz=50, slow_hz=50, amd=False, buffers=False)
    time.sleep(0.3)
    core.stop()
    s = core.sampler_stats()
    assert s["slow_every"] == 1 and s["slow_ticks"] == s["ticks"]
    assert s["reads"] == s["ticks"] * 2 * 10
    ring = core.ring(1)
    assert None not in ring.values["gpu_energy_joules_total"]


def test_unsupported_slow_field_is_found_on_the_first_tick(make_core):
    core = make_core("nvidia-unsupported", hz=20, slow_hz=0.1, amd=False)
    time.sleep(0.3)
    assert {"gpu_fan_speed_percent", "gpu_energy_joules_total"} <= core.devices()[0].unsupported
    core.stop()
    s = core.sampler_stats()
    assert s["slow_every"] == 200 and s["slow_ticks"] == 1


def test_defaults_are_10_hz_and_1_hz_slow():
    g = config.parse("").gpu
    assert (g.hz, g.slow_hz) == (10.0, 1.0)
    core = Core(nvidia=False, amd=False)
    assert (core.hz, core.slow_hz) == (10.0, 1.0)
    assert core.sampler_stats()["slow_every"] == 10
    # Below 1 Hz the slow tier defaults to the fast rate rather than exceeding it.
    assert Core(hz=0.5, nvidia=False, amd=False).slow_hz == 0.5


def test_from_config_passes_both_rates_and_the_slow_fields():
    cfg = config.parse("[gpu]\nhz = 40\nslow_hz = 4\nslow_fields = [\"fan\", \"memory\"]\n")
    core = Core.from_config(cfg)
    assert (core.hz, core.slow_hz) == (40.0, 4.0)
    assert core.sampler_stats()["slow_every"] == 10
    assert core.slow_metrics == {"gpu_fan_speed_percent", "gpu_memory_used_bytes", "gpu_memory_total_bytes",
                                 "gpu_memory_used_percent"}


def test_no_slow_fields_reads_every_polled_field_every_tick(make_core):
    core = make_core("constant", hz=50, slow_hz=5, amd=False, buffers=False, slow_fields=())
    time.sleep(0.3)
    core.stop()
    s = core.sampler_stats()
    assert s["slow_every"] == 10 and s["reads_slow"] == 0
    assert s["reads"] == s["reads_fast"] == s["ticks"] * 2 * 10
    assert None not in core.ring(1).values["gpu_fan_speed_percent"]


def test_temperature_and_memory_on_the_slow_tier_are_read_with_it(make_core):
    core = make_core("constant", hz=50, slow_hz=10, amd=False, buffers=False,
                     slow_fields=("memory", "temperature"))
    time.sleep(0.5)
    core.stop()
    s = core.sampler_stats()
    counts = {x.metric: x.count for x in core.drain() if x.gpu == 0}
    for metric in ("gpu_temperature_celsius", "gpu_memory_used_bytes", "gpu_memory_used_percent"):
        assert counts[metric] == s["slow_ticks"], metric
    assert counts["gpu_fan_speed_percent"] == counts["gpu_power_watts"] == s["ticks"]
    ring = core.ring(0)
    read = [i for i, v in enumerate(ring.values["gpu_temperature_celsius"]) if v is not None]
    assert len(read) == s["slow_ticks"] and read[0] == 0 and s["ticks"] > s["slow_ticks"]


@pytest.mark.parametrize("text, message", [
    ('[gpu]\nslow_fields = ["fan", "clock"]\n', "gpu.slow_fields: unknown field 'clock'; the fields are utilization,"),
    ('[gpu]\nslow_fields = ["fan", "fan"]\n', "gpu.slow_fields: names a field twice"),
    ("[gpu]\nslow_fields = [1]\n", "gpu.slow_fields"),
])
def test_config_refuses_unknown_or_repeated_slow_fields(text, message):
    with pytest.raises(config.ConfigError, match="agent.toml:2: " + message.replace("[", r"\[")):
        config.parse(text, "agent.toml")


@pytest.mark.parametrize("mask", [1 << lib.EGS_F_UTILIZATION, 1 << lib.EGS_F_MEMORY_TOTAL, 1 << 10, 0xFFFFFFFF])
def test_c_core_refuses_a_split_pair_or_an_unknown_field(mask):
    cfg = ffi.new("struct egs_config *", {"nvidia": 0, "amd": 0, "hz": 10.0, "slow_hz": 1.0, "slow_fields": mask})
    out = ffi.new("struct egs_core **")
    assert lib.egs_core_new(cfg, out) == lib.EGS_E_INVALID
    with pytest.raises(ValueError, match="unknown GPU field 'clocks'"):
        Core(nvidia=False, amd=False, slow_fields=("clocks",))


@pytest.mark.parametrize("text, line, message", [
    ("[gpu]\nslow_hz = 20\n", 2, "gpu.slow_hz: must be <= gpu.hz (10.0), got 20.0"),
    ("[gpu]\nhz = 5\n\nslow_hz = 6\n", 4, "gpu.slow_hz: must be <= gpu.hz (5.0), got 6.0"),
    ("[gpu]\nslow_hz = 0.05\n", 2, "gpu.slow_hz: must be >= 0.1"),
])
def test_slow_hz_is_bounded_by_0_1_and_gpu_hz(text, line, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "agent.toml")
    assert f"agent.toml:{line}: {message}" in str(e.value)


def test_slow_hz_at_the_bounds_is_accepted():
    assert config.parse("[gpu]\nhz = 5\nslow_hz = 5\n").gpu.slow_hz == 5.0
    assert config.parse("[gpu]\nslow_hz = 0.1\n").gpu.slow_hz == 0.1


@pytest.mark.parametrize("slow_hz", [0, -1.0, 10.5, float("nan")])
def test_core_refuses_a_slow_rate_outside_0_and_hz(slow_hz):
    with pytest.raises(ValueError, match="slow_hz"):
        Core(hz=10, slow_hz=slow_hz, nvidia=False, amd=False)


@pytest.mark.parametrize("slow_hz, rc", [(20.0, lib.EGS_E_INVALID), (-1.0, lib.EGS_E_INVALID),
                                         (float("nan"), lib.EGS_E_INVALID), (0.0, lib.EGS_OK),
                                         (10.0, lib.EGS_OK)])
def test_c_core_checks_the_slow_rate_itself(slow_hz, rc):
    cfg = ffi.new("struct egs_config *", {"nvidia": 0, "amd": 0, "hz": 10.0, "slow_hz": slow_hz})
    out = ffi.new("struct egs_core **")
    assert lib.egs_core_new(cfg, out) == rc
    if rc == lib.EGS_OK:
        stats = ffi.new("struct egs_sampler_stats *")
        assert lib.egs_sampler_get(out[0], stats) == lib.EGS_OK
        assert stats.slow_every == 1  # 0 = no slow tier: every field every tick
        lib.egs_core_free(out[0])


def test_probe_reads_slow_fields_at_least_once_in_a_short_run(sim_out):
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario("constant")))
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "probe", "--seconds", "0.3", "--hz", "20", "--json",
         "--nvml-library", str(sim_paths.NVML_LIB), "--amdsmi-library", "/nonexistent/libamd_smi.so"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(sim_paths.ROOT))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["slow_hz"] == pytest.approx(1 / 0.3)
    assert report["slow_fields"] == list(config.DEFAULT_SLOW_FIELDS)
    sampler = report["sampler"]
    assert sampler["reads_slow"] > 0 and sampler["reads_fast"] > sampler["reads_slow"]
    m = report["gpus"][0]["metrics"]
    assert m["gpu_sm_clock_mhz"]["count"] >= 1 and m["gpu_sm_clock_mhz"]["last"] == 1328
    # The clocks come from the driver's sample buffer now (as many samples as the driver took,
    # issue 16), so the tiers are compared on the fan: slow tier, still polled by its own call.
    assert m["gpu_fan_speed_percent"]["count"] >= 1 and m["gpu_fan_speed_percent"]["last"] == 42
    # At the defaults temperature is on the slow tier with the fan (one read a slow tick).
    assert m["gpu_temperature_celsius"]["count"] == m["gpu_fan_speed_percent"]["count"] >= 1


def test_probe_refuses_a_slow_rate_above_the_fast_one(sim_out):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "probe", "--hz", "5", "--slow-hz", "6"],
                            capture_output=True, text=True, timeout=60, cwd=str(sim_paths.ROOT))
    assert result.returncode == 2
    assert "--slow-hz must be between 0.1 and --hz (5)" in result.stderr
