"""How each field is read (egs_core.h, EGS_PATH_*): the driver's sample buffers, one batched
call per device, or a call per field. The paths must give the values the per-field path
gives (the scenario's known waveforms), report themselves, fall back per field, and a driver
without nvmlDeviceGetFieldValues / nvmlDeviceGetSamples (or an AMD part without a metrics
table) must still be read through the old calls. Library calls are counted by the simulator
(egs_sim_nvml_calls) and must equal what the core says it made."""
from __future__ import annotations

import ctypes
import subprocess
import time
from pathlib import Path

import pytest
import sim_paths

from agent.native import Core

HERE = Path(__file__).resolve().parent
SECONDS = 3.2

# The waves of scenarios/waves.toml, the same on both GPUs.
WAVES = {"gpu_utilization_percent": (20, 60, 40), "gpu_memory_busy_percent": (10, 30),
         "gpu_power_watts": (100, 200, 150, 250), "gpu_sm_clock_mhz": (1000, 1400)}
# The simulated driver's sample periods (native/sim/sim_nvml.c, sample_type).
PERIODS = {"gpu_utilization_percent": 1 / 6, "gpu_memory_busy_percent": 1 / 6,
           "gpu_power_watts": 0.05, "gpu_sm_clock_mhz": 0.1, "gpu_memory_clock_mhz": 0.1}
TELEMETRY = ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo",
             "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature", "nvmlDeviceGetFieldValues",
             "nvmlDeviceGetSamples", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo",
             "nvmlDeviceGetFanSpeed", "nvmlDeviceGetTotalEnergyConsumption")


def sim_calls(path: Path, symbol: str = "egs_sim_nvml_calls") -> dict[str, int]:
    """Calls per function the simulated library counted in this process."""
    fn = getattr(ctypes.CDLL(str(path)), symbol)
    fn.restype = ctypes.c_uint
    names = (ctypes.c_char_p * 128)()
    counts = (ctypes.c_ulonglong * 128)()
    n = fn(128, names, counts, 0)
    return {names[i].decode(): counts[i] for i in range(min(n, 128))}


def run_waves(make_core, **kw) -> tuple[Core, dict, dict]:
    core = make_core(HERE / "scenarios" / "waves.toml", hz=20, events=False, ring_seconds=10, **kw)
    time.sleep(SECONDS)
    core.stop()
    stats = {(s.gpu, s.metric): s for s in core.drain()}
    return core, stats, core.sampler_stats()


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    """The shims of this file, built once: name -> path."""
    out = tmp_path_factory.mktemp("shims")
    built = {}
    for source, lib in (("samples_gone_shim.c", sim_paths.NVML_LIB),
                        ("amd_no_metrics_shim.c", sim_paths.AMDSMI_LIB),
                        ("amd_centi_temp_shim.c", sim_paths.AMDSMI_LIB)):
        so = out / ("lib" + source.replace(".c", ".so"))
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), str(HERE / source),
                        "-L", str(lib.parent), "-Wl,--no-as-needed", f"-l:{lib.name}",
                        f"-Wl,-rpath,{lib.parent}", "-ldl"], check=True)
        built[source] = so
    return built


def test_each_field_reports_its_path(make_core):
    core = make_core("constant", hz=20, events=False)
    nv, amd = core.devices()[0], core.devices()[2]
    assert {m for m, p in nv.paths.items() if p == "buffer"} == set(PERIODS)
    assert nv.paths["gpu_energy_joules_total"] == "batch"
    assert {nv.paths[m] for m in ("gpu_temperature_celsius", "gpu_memory_used_bytes",
                                  "gpu_fan_speed_percent")} == {"call"}
    # The metrics table serves all but VRAM; AMD has no fan figure.
    assert amd.paths["gpu_memory_used_bytes"] == "call" and amd.paths["gpu_fan_speed_percent"] == "none"
    assert {amd.paths[m] for m in ("gpu_temperature_celsius", "gpu_utilization_percent",
                                   "gpu_power_watts", "gpu_energy_joules_total",
                                   "gpu_sm_clock_mhz")} == {"batch"}
    assert core.backends["nvidia"].symbols["samples"] == "nvmlDeviceGetSamples"
    assert core.backends["amd"].symbols["metrics"] == "amdsmi_get_gpu_metrics_info"


@pytest.mark.parametrize("paths", [True, False], ids=["buffers+batch", "per-field"])
def test_every_path_recovers_the_scenarios_waveforms(make_core, paths):
    # The per-field path reads the slow tier on every tick too, so that it resolves the 0.5 s
    # clock steps; the buffers get them from the driver's samples whatever the tick rate.
    core, stats, s = run_waves(make_core, batch=paths, buffers=paths, slow_hz=None if paths else 20)
    for gpu in (0, 1):
        for metric, values in WAVES.items():
            st = stats[(gpu, metric)]
            assert (st.min, st.max) == (min(values), max(values)), (gpu, metric, st)
            # Every step lasts as long as the others, so the mean is the values' mean, up to
            # the part-cycle at the ends of the run.
            assert st.mean == pytest.approx(sum(values) / len(values), abs=0.12 * max(values)), (gpu, metric)
            assert st.errors == 0
        assert stats[(gpu, "gpu_temperature_celsius")].mean == (65 if gpu == 0 else 55)
        assert stats[(gpu, "gpu_memory_clock_mhz")].min == (715 if gpu == 0 else 1600)
    if paths:
        # The NVIDIA GPU's buffered fields come at the driver's own resolution, not the tick's
        # (the first read also takes the driver's samples of the second before the start).
        for metric, period in PERIODS.items():
            expected = (SECONDS - 0.2) / period
            assert 0.75 * expected <= stats[(0, metric)].count <= (SECONDS + 1) / period + 1, metric
        assert s["buffered_reads"] > 0


def test_buffered_samples_keep_their_own_timestamps_in_the_ring(make_core):
    core, stats, _ = run_waves(make_core)
    ring = core.ring(0)
    assert ring.timestamps == sorted(ring.timestamps)
    util = [(t, v) for t, v in zip(ring.timestamps, ring.values["gpu_utilization_percent"]) if v is not None]
    gaps = [b[0] - a[0] for a, b in zip(util, util[1:])]
    assert len(util) == stats[(0, "gpu_utilization_percent")].count
    assert all(abs(g - 1 / 6) < 1e-4 for g in gaps), gaps
    # The polled fields keep their tick slots; a buffered slot holds no polled value.
    temps = [v for v in ring.values["gpu_temperature_celsius"] if v is not None]
    assert len(temps) == stats[(0, "gpu_temperature_celsius")].count
    # `since` in the middle of buffered samples folded late still finds every newer one.
    cut = util[len(util) // 2][0]
    newer = core.ring(0, since=cut)
    assert [v for v in newer.values["gpu_utilization_percent"] if v is not None] == \
        [v for t, v in util if t > cut]


def test_buffered_values_equal_pynvml_reading_the_same_buffers(make_core, run_json):
    theirs = run_json(r"""
import json, time, pynvml
pynvml.nvmlInit()
time.sleep(0.6)
h = pynvml.nvmlDeviceGetHandleByIndex(0)
out = {}
for name, kind in (("util", pynvml.NVML_GPU_UTILIZATION_SAMPLES), ("power", pynvml.NVML_TOTAL_POWER_SAMPLES)):
    vtype, samples = pynvml.nvmlDeviceGetSamples(h, kind, 0)
    out[name] = [[s.timeStamp, s.sampleValue.uiVal] for s in samples]
print(json.dumps(out))
""", sim_paths.nvml_env("constant"))
    core = make_core("constant", hz=20, amd=False, events=False)
    time.sleep(1.3)
    stats = {(s.gpu, s.metric): s for s in core.drain()}
    assert {v for _, v in theirs["util"]} == {75}
    assert {v for _, v in theirs["power"]} == {180500}
    for name, period in (("util", 1 / 6), ("power", 0.05)):
        stamps = [t for t, _ in theirs[name]]
        assert all(abs((b - a) / 1e6 - period) < 1e-4 for a, b in zip(stamps, stamps[1:])), name
    assert stats[(0, "gpu_utilization_percent")].count >= 3
    assert stats[(0, "gpu_utilization_percent")].mean == 75
    assert stats[(0, "gpu_power_watts")].mean == pytest.approx(180.5)


def test_metrics_table_values_equal_amdsmi_reading_it(make_core, run_json):
    theirs = run_json(r"""
import json, amdsmi
amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
h = amdsmi.amdsmi_get_processor_handles()[0]
m = amdsmi.amdsmi_get_gpu_metrics_info(h)
e = amdsmi.amdsmi_get_energy_count(h)
keys = ("temperature_edge", "average_gfx_activity", "average_umc_activity", "current_socket_power",
        "current_gfxclk", "current_uclk", "energy_accumulator")
print(json.dumps({**{k: m[k] for k in keys}, "resolution": e["counter_resolution"]}))
""", sim_paths.amdsmi_env("constant"))
    core = make_core("constant", hz=20, nvidia=False, events=False)
    time.sleep(0.3)
    last = {s.metric: s.last for s in core.drain()}
    # The table's temperature agrees with amdsmi_get_temp_metric here, so it serves it too.
    assert core.devices()[0].paths["gpu_temperature_celsius"] == "batch"
    assert last["gpu_temperature_celsius"] == theirs["temperature_edge"] == 61
    assert last["gpu_utilization_percent"] == theirs["average_gfx_activity"] == 55
    assert last["gpu_memory_busy_percent"] == theirs["average_umc_activity"] == 25
    assert last["gpu_power_watts"] == theirs["current_socket_power"] == 110
    assert last["gpu_sm_clock_mhz"] == theirs["current_gfxclk"] == 1050
    assert last["gpu_memory_clock_mhz"] == theirs["current_uclk"] == 1250
    assert last["gpu_energy_joules_total"] == pytest.approx(
        theirs["energy_accumulator"] * theirs["resolution"] / 1e6, rel=1e-6)


def test_a_driver_without_field_values_or_samples_is_read_by_the_old_calls(make_core):
    core = make_core("constant", nvml_library=str(sim_paths.NVML_LEGACY_LIB), hz=20, amd=False,
                     events=False)
    time.sleep(0.4)
    core.stop()
    last = {(s.gpu, s.metric): s.last for s in core.drain()}
    symbols = core.backends["nvidia"].symbols
    assert symbols["samples"] is None and symbols["field_values"] is None
    for dev in core.devices():
        assert set(dev.paths.values()) == {"call"}, dev.paths
        assert not dev.unsupported
    assert last[(0, "gpu_utilization_percent")] == 75
    assert last[(0, "gpu_power_watts")] == pytest.approx(180.5)
    assert last[(1, "gpu_energy_joules_total")] == pytest.approx(5000)


def test_a_table_temperature_in_another_unit_keeps_the_narrow_call(make_core, shims):
    # amd_centi_temp_shim.c: the table's temperature in centi-degrees, as some gpu_metrics
    # versions hold it; the narrow call's degrees disagree at start, so temperature keeps it.
    core = make_core("constant", amdsmi_library=str(shims["amd_centi_temp_shim.c"]), hz=20,
                     nvidia=False, events=False)
    time.sleep(0.3)
    last = {s.metric: s.last for s in core.drain()}
    paths = core.devices()[0].paths
    assert paths["gpu_temperature_celsius"] == "call" and paths["gpu_power_watts"] == "batch"
    assert last["gpu_temperature_celsius"] == 61


def test_an_amd_part_without_a_metrics_table_keeps_its_narrow_calls(make_core, shims):
    core = make_core("constant", amdsmi_library=str(shims["amd_no_metrics_shim.c"]), hz=20,
                     nvidia=False, events=False)
    time.sleep(0.3)
    last = {s.metric: s.last for s in core.drain()}
    dev = core.devices()[0]
    assert set(dev.paths.values()) == {"call", "none"} and dev.paths["gpu_fan_speed_percent"] == "none"
    assert last["gpu_temperature_celsius"] == 61 and last["gpu_power_watts"] == 110
    assert last["gpu_sm_clock_mhz"] == 1050


def test_buffers_that_stop_answering_fall_back_to_their_own_calls(make_core, shims):
    # 20 nvmlDeviceGetSamples calls answer (the probes: 5 per GPU, then one slow tick), then
    # every one says NOT_SUPPORTED: each field moves to its own call on that tick, for good.
    core = make_core("constant", nvml_library=str(shims["samples_gone_shim.c"]), hz=20, slow_hz=20,
                     amd=False, events=False)
    time.sleep(0.6)
    core.drain()
    time.sleep(0.4)
    stats = {(s.gpu, s.metric): s for s in core.drain()}
    for dev in core.devices():
        assert {dev.paths[m] for m in PERIODS} == {"call"}, dev.paths
        assert not dev.unsupported
    assert stats[(0, "gpu_utilization_percent")].last == 75
    assert stats[(0, "gpu_power_watts")].last == pytest.approx(180.5)
    assert stats[(1, "gpu_sm_clock_mhz")].last == 1189
    assert all(s.errors == 0 for s in stats.values())


@pytest.mark.parametrize("paths,library", [(True, sim_paths.NVML_LIB), (False, sim_paths.NVML_LIB),
                                           (True, sim_paths.NVML_LEGACY_LIB)],
                         ids=["buffers+batch", "per-field", "legacy-driver"])
def test_the_core_counts_the_calls_the_library_saw(make_core, paths, library):
    # The legacy driver has neither field values nor sample buffers: power comes from
    # nvmlDeviceGetPowerUsage, which was once counted twice.
    before = sim_calls(library)
    # No health or per-process pass: their calls are counted apart (health_calls, process_calls).
    core = make_core("constant", hz=50, amd=False, events=False, batch=paths, buffers=paths, health_hz=0,
                     process_hz=0, nvml_library=str(library))
    time.sleep(1.2)
    core.stop()
    after = sim_calls(library)
    seen = sum(after.get(f, 0) - before.get(f, 0) for f in TELEMETRY)
    s = core.sampler_stats()
    # At start each GPU is asked once for its field values and, with buffers, once per
    # sample type (5): those are the core's probes, not the sampler's calls. The legacy driver
    # has neither to ask.
    if library == sim_paths.NVML_LEGACY_LIB:
        assert after.get("nvmlDeviceGetPowerUsage", 0) > before.get("nvmlDeviceGetPowerUsage", 0)
        probes = 0
    else:
        probes = 2 * (1 + (5 if paths else 0))
    assert seen - probes == s["library_calls"] > 0
    assert s["library_calls_per_gpu_per_s"] == pytest.approx(
        s["library_calls"] / 2 / s["elapsed_s"])


def test_at_the_defaults_only_slow_slots_are_woken_for_and_each_makes_nine_calls(make_core):
    # gpu.hz 10, gpu.slow_hz 1, gpu.slow_fields at its default: on a driver with sample buffers
    # and field values a fast slot has nothing left to poll, so the sampler does not wake for
    # it (idle_slots), and a slow tick reads the five buffers, the field values (energy),
    # memory, temperature and fan: 9 calls per GPU a second (issue 16's goal: <= 12).
    before = sim_calls(sim_paths.NVML_LIB)
    core = make_core("constant", amd=False, events=False, health_hz=0, process_hz=0)
    time.sleep(1.2)
    core.stop()
    after = sim_calls(sim_paths.NVML_LIB)
    s = core.sampler_stats()
    assert (core.hz, core.slow_hz) == (10.0, 1.0) and s["ticks"] == s["slow_ticks"] >= 2
    # The stretches between slow slots, and the part of the current one already past.
    assert 9 * (s["ticks"] - 1) <= s["idle_slots"] < 9 * s["ticks"] and s["late_ticks"] == 0
    assert abs(s["ticks"] + s["idle_slots"] - s["elapsed_s"] * 10) <= 2
    assert s["achieved_hz"] == pytest.approx((s["ticks"] + s["idle_slots"]) / s["elapsed_s"])
    assert s["library_calls"] == 2 * 9 * s["slow_ticks"]
    calls = {f: after.get(f, 0) - before.get(f, 0) for f in TELEMETRY}
    temperature = calls["nvmlDeviceGetTemperatureV"] + calls["nvmlDeviceGetTemperature"]
    assert temperature == calls["nvmlDeviceGetFanSpeed"] == 2 * s["slow_ticks"]
    assert {m: p for m, p in core.devices()[0].paths.items() if p != "call"} == {
        **{m: "buffer" for m in PERIODS}, "gpu_energy_joules_total": "batch"}


def test_a_fast_field_without_a_buffer_keeps_every_slot_woken_for(make_core):
    # Temperature back on the fast tier: it has no buffer, so every slot is a tick again.
    core = make_core("constant", hz=20, amd=False, events=False, health_hz=0, process_hz=0,
                     slow_fields=("memory", "sm_clock", "memory_clock", "energy", "fan"))
    time.sleep(0.6)
    core.stop()
    s = core.sampler_stats()
    assert s["idle_slots"] == 0 and s["ticks"] > s["slow_ticks"]
    counts = {x.metric: x.count for x in core.drain() if x.gpu == 0}
    assert counts["gpu_temperature_celsius"] == s["ticks"]
