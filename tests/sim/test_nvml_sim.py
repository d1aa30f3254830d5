"""The simulated libnvidia-ml.so.1, read by the official reader (pynvml) in a subprocess.

Expected values come from the scenario files themselves, parsed with Python's tomllib, so the
tests also prove the scenario files are real TOML that means what the simulator makes of it.
"""
import ctypes
import json
import textwrap
import tomllib

import pytest

import sim_paths

PRELUDE = """
import json, sys, time
import pynvml as N
def err(e):
    return type(e).__name__
"""


def nvml(code: str) -> str:
    return PRELUDE + textwrap.dedent(code)


def load(name):
    with open(sim_paths.scenario(name), "rb") as f:
        return tomllib.load(f)


def nvidia_gpus(name):
    return [g for g in load(name)["gpu"] if g.get("vendor", "nvidia") == "nvidia"]


def test_pynvml_reads_identity_and_values_of_the_constant_scenario(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        res = {"driver": N.nvmlSystemGetDriverVersion(), "nvml": N.nvmlSystemGetNVMLVersion(),
               "count": N.nvmlDeviceGetCount(), "gpus": []}
        for i in range(res["count"]):
            h = N.nvmlDeviceGetHandleByIndex(i)
            mem = N.nvmlDeviceGetMemoryInfo(h)
            mem2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
            util = N.nvmlDeviceGetUtilizationRates(h)
            fv = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_POWER_INSTANT,
                                                N.NVML_FI_DEV_POWER_AVERAGE])
            res["gpus"].append({
                "name": N.nvmlDeviceGetName(h), "uuid": N.nvmlDeviceGetUUID(h),
                "bus_id": N.nvmlDeviceGetPciInfo(h).busId,
                "by_uuid_index": N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByUUID(N.nvmlDeviceGetUUID(h))),
                "total": mem.total, "used": mem.used, "free": mem.free,
                "total2": mem2.total, "used2": mem2.used,
                "temp": N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU),
                "temp_v": N.nvmlDeviceGetTemperatureV(h, N.NVML_TEMPERATURE_GPU),
                "power_mw": N.nvmlDeviceGetPowerUsage(h),
                "fv": [[v.fieldId, v.nvmlReturn, v.valueType, v.value.uiVal] for v in fv],
                "util": util.gpu, "mem_busy": util.memory,
                "sm": N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_SM),
                "graphics": N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_GRAPHICS),
                "mem_clock": N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_MEM),
                "fan": N.nvmlDeviceGetFanSpeed(h),
                "energy_mj": N.nvmlDeviceGetTotalEnergyConsumption(h),
            })
        N.nvmlShutdown()
        print(json.dumps(res))
    """), sim_paths.nvml_env("constant"))

    expected = nvidia_gpus("constant")
    assert out["driver"] == load("constant")["sim"]["driver_version"]
    assert out["nvml"].endswith(out["driver"])
    assert out["count"] == len(expected) == 2
    for i, (got, want) in enumerate(zip(out["gpus"], expected)):
        f = want["fields"]
        total = want["memory_total_mib"] * 2**20
        used = f["memory_used_mib"] * 2**20
        assert got["name"] == want["name"]
        assert got["uuid"] == want["uuid"]
        assert got["bus_id"] == want["pci_bus_id"].upper()
        assert got["by_uuid_index"] == i
        assert (got["total"], got["used"], got["free"]) == (total, used, total - used)
        assert (got["total2"], got["used2"]) == (total, used)
        assert got["temp"] == got["temp_v"] == f["temperature"]
        assert got["power_mw"] == round(f["power"] * 1000)
        # POWER_INSTANT and POWER_AVERAGE: unsigned int milliwatts, per-entry success.
        assert got["fv"] == [[186, 0, 1, round(f["power"] * 1000)], [185, 0, 1, round(f["power"] * 1000)]]
        assert (got["util"], got["mem_busy"]) == (f["utilization"], f["memory_busy"])
        assert got["sm"] == got["graphics"] == f["sm_clock"]
        assert got["mem_clock"] == f["memory_clock"]
        assert got["fan"] == f["fan"]
        assert got["energy_mj"] == round(f["energy"] * 1000)


def test_unknown_field_ids_fail_per_entry_while_the_call_succeeds(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        fv = N.nvmlDeviceGetFieldValues(h, [9999, N.NVML_FI_DEV_POWER_INSTANT, 1, 0])
        print(json.dumps([[v.fieldId, v.nvmlReturn] for v in fv]))
    """), sim_paths.nvml_env("constant"))
    # As a real driver answers: ids outside the defined range are invalid (2), a defined
    # field the device lacks is not supported (3).
    assert out == [[9999, 2], [186, 0], [1, 3], [0, 2]]


def test_lost_gpu_raises_gpu_is_lost_for_that_device_only(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
        before = [N.nvmlDeviceGetTemperature(h, 0) for h in hs]
        time.sleep(1.2)   # the scenario loses GPU 1 at t = 1.0 s
        after = []
        for h in hs:
            try:
                after.append(N.nvmlDeviceGetTemperature(h, 0))
            except N.NVMLError as e:
                after.append(err(e))
        try:
            N.nvmlDeviceGetHandleByIndex(1)
            again = "ok"
        except N.NVMLError as e:
            again = err(e)
        try:
            N.nvmlDeviceGetUUID(hs[1])
            uuid = "ok"
        except N.NVMLError as e:
            uuid = err(e)
        print(json.dumps({"before": before, "after": after, "again": again, "uuid": uuid,
                          "count": N.nvmlDeviceGetCount()}))
    """), sim_paths.nvml_env("nvidia-lost"))
    assert out["before"] == [60, 62]
    assert out["after"] == [60, "NVMLError_GpuIsLost"]
    assert out["again"] == "NVMLError_GpuIsLost"
    assert out["uuid"] == "NVMLError_GpuIsLost"
    assert out["count"] == 2


def test_unsupported_fields_raise_not_supported(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        res = {}
        for i in range(2):
            h = N.nvmlDeviceGetHandleByIndex(i)
            for name, fn in (("fan", N.nvmlDeviceGetFanSpeed),
                             ("energy", N.nvmlDeviceGetTotalEnergyConsumption),
                             ("power", N.nvmlDeviceGetPowerUsage)):
                try:
                    res[f"{i}.{name}"] = fn(h)
                except N.NVMLError as e:
                    res[f"{i}.{name}"] = err(e)
            fv = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])
            res[f"{i}.fv_energy"] = fv[0].nvmlReturn
        time.sleep(2.1)   # GPU 1 loses its power reading at t = 2.0 s
        h = N.nvmlDeviceGetHandleByIndex(1)
        try:
            res["1.power_later"] = N.nvmlDeviceGetPowerUsage(h)
        except N.NVMLError as e:
            res["1.power_later"] = err(e)
        res["1.fv_power_later"] = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_POWER_INSTANT])[0].nvmlReturn
        print(json.dumps(res))
    """), sim_paths.nvml_env("nvidia-unsupported"))
    assert out["0.fan"] == "NVMLError_NotSupported"
    assert out["0.energy"] == "NVMLError_NotSupported"
    assert out["0.fv_energy"] == 3
    assert out["0.power"] == 120000
    assert out["1.fan"] == 35
    assert isinstance(out["1.energy"], int) and out["1.fv_energy"] == 0
    assert out["1.power"] == 130000
    assert out["1.power_later"] == "NVMLError_NotSupported"
    assert out["1.fv_power_later"] == 3


def test_init_failure_raises_driver_not_loaded(run_reader):
    out, _ = run_reader(nvml("""
        try:
            N.nvmlInit()
            print(json.dumps("initialised"))
        except N.NVMLError as e:
            print(json.dumps([err(e), e.value, str(e)]))
    """), sim_paths.nvml_env("init-failure"))
    assert out == ["NVMLError_DriverNotLoaded", 9, "Driver Not Loaded"]


def test_calls_before_init_and_after_shutdown_are_uninitialized(run_reader):
    out, _ = run_reader(nvml("""
        import ctypes
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        n = ctypes.c_uint()
        before = lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
        N.nvmlInit(); N.nvmlInit()          # reference counted, like the driver's
        N.nvmlShutdown()
        middle = lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
        N.nvmlShutdown()
        after = lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
        print(json.dumps([before, middle, after, lib.nvmlShutdown()]))
    """), sim_paths.nvml_env("constant"))
    assert out == [1, 0, 1, 1]


def test_event_wait_max_ms_makes_a_long_wait_time_out_early(sim_out):
    # EGS_SIM_EVENT_WAIT_MAX_MS (the suite sets 50): a 5 s wait returns its timeout well before
    # the XID due at t = 1 s, which the next uncapped-length waits then deliver.
    import subprocess
    import sys

    code = nvml("""
        N.nvmlInit()
        s = N.nvmlEventSetCreate()
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
        got = []
        try:
            N.nvmlEventSetWait_v2(s, 5000)
            got.append("event")
        except N.NVMLError as e:
            got.append(err(e))
        waits = 0
        while True:
            waits += 1
            try:
                got.append(N.nvmlEventSetWait_v2(s, 5000).eventData)
                break
            except N.NVMLError as e:
                assert err(e) == "NVMLError_Timeout", err(e)
        got.append(waits > 1)
        print(json.dumps(got))
    """)
    env = dict(sim_paths.nvml_env("nvidia-xid"), EGS_SIM_EVENT_WAIT_MAX_MS="50")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["NVMLError_Timeout", 79, True]


def test_xid_events_arrive_at_their_scenario_time_in_order(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        h0 = N.nvmlDeviceGetHandleByIndex(0)
        h1 = N.nvmlDeviceGetHandleByIndex(1)
        s = N.nvmlEventSetCreate()
        N.nvmlDeviceRegisterEvents(h0, N.nvmlEventTypeXidCriticalError, s)
        N.nvmlDeviceRegisterEvents(h1, N.nvmlEventTypeXidCriticalError, s)
        got = []
        def wait(ms):
            try:
                d = N.nvmlEventSetWait_v2(s, ms)
                got.append([d.eventType, d.eventData, N.nvmlDeviceGetUUID(d.device),
                            d.gpuInstanceId == 0xFFFFFFFF])
            except N.NVMLError as e:
                got.append(err(e))
        wait(300)       # XID 79 is due at t = 1 s: nothing yet
        wait(5000)
        wait(5000)
        wait(200)       # nothing more in the scenario
        N.nvmlEventSetFree(s)
        print(json.dumps(got))
    """), sim_paths.nvml_env("nvidia-xid"))
    uuid0 = nvidia_gpus("nvidia-xid")[0]["uuid"]
    assert out == ["NVMLError_Timeout", [8, 79, uuid0, True], [8, 13, uuid0, True],
                   "NVMLError_Timeout"]


def test_events_raised_before_registration_are_not_delivered(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        time.sleep(1.1)                 # XID 79 (t = 1 s) happens before anyone listens
        s = N.nvmlEventSetCreate()
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), N.nvmlEventTypeXidCriticalError, s)
        d = N.nvmlEventSetWait_v2(s, 5000)
        print(json.dumps(d.eventData))
    """), sim_paths.nvml_env("nvidia-xid"))
    assert out == 13


def test_event_registration_accepts_defined_types_and_refuses_others(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        s = N.nvmlEventSetCreate()
        res = []
        for types in (N.nvmlEventTypeAll, 1 << 40):
            try:
                N.nvmlDeviceRegisterEvents(h, types, s)
                res.append("ok")
            except N.NVMLError as e:
                res.append(err(e))
        print(json.dumps([res, N.nvmlDeviceGetSupportedEventTypes(h)]))
    """), sim_paths.nvml_env("nvidia-xid"))
    assert out == [["ok", "NVMLError_NotSupported"], 0xff9f]


def test_call_latency_and_slow_fault_show_in_field_value_latency(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
        lat = lambda h: N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_POWER_INSTANT])[0].latencyUsec
        early = [lat(h) for h in hs]
        time.sleep(1.05)
        late = [lat(h) for h in hs]
        print(json.dumps([early, late]))
    """), sim_paths.nvml_env("slow-calls"))
    assert out == [[2000, 2000], [2000, 22000]]


def test_versioned_structs_check_their_version_word(run_reader):
    out, _ = run_reader(nvml("""
        import ctypes
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        t = N.c_nvmlTemperature_v1_t()
        t.version = 0x0100000B
        temperature = N.nvmlLib.nvmlDeviceGetTemperatureV(h, ctypes.byref(t))
        try:
            N.nvmlDeviceGetMemoryInfo(h, version=0x01000028)
            memory = 0
        except N.NVMLError as e:
            memory = e.value
        print(json.dumps([temperature, memory]))
    """), sim_paths.nvml_env("constant"))
    # ARGUMENT_VERSION_MISMATCH for the temperature struct, FUNCTION_NOT_FOUND for memory:
    # what driver 580.159.04 answers (native/sim/conformance/).
    assert out == [25, 13]


def test_handle_by_pci_bus_id_accepts_the_forms_the_driver_accepts(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        forms = ["00000000:00:09.0", "00000000:00:09.0".lower(), "0000:00:09.0", "00:09.0"]
        res = [N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId(f)) for f in forms]
        try:
            N.nvmlDeviceGetHandleByPciBusId("0000:00:1f.0")
            res.append("found")
        except N.NVMLError as e:
            res.append(err(e))
        print(json.dumps(res))
    """), sim_paths.nvml_env("constant"))
    assert out == [1, 1, 1, 1, "NVMLError_NotFound"]


def test_waveforms_move_as_the_scenario_says(run_reader, tmp_path):
    scenario = tmp_path / "waves.toml"
    scenario.write_text(textwrap.dedent("""
        [[gpu]]
        vendor = "nvidia"
        [gpu.fields]
        temperature = { wave = "step", before = 40, after = 80, at = 0.6 }
        utilization = { wave = "ramp", from = 0, to = 100, duration = 1000 }
        fan = { wave = "sequence", values = [10, 20, 30], interval = 1000 }
        power = { wave = "sine", mean = 100, amplitude = 50, period = 0.4 }
        memory_busy = 0
    """))
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        t0 = N.nvmlDeviceGetTemperature(h, 0)
        util0 = N.nvmlDeviceGetUtilizationRates(h).gpu
        fan0 = N.nvmlDeviceGetFanSpeed(h)
        powers = []
        for _ in range(40):
            powers.append(N.nvmlDeviceGetPowerUsage(h))
            time.sleep(0.02)
        e1 = N.nvmlDeviceGetTotalEnergyConsumption(h)
        time.sleep(0.3)
        e2 = N.nvmlDeviceGetTotalEnergyConsumption(h)
        print(json.dumps({"t0": t0, "t1": N.nvmlDeviceGetTemperature(h, 0), "util0": util0,
                          "fan0": fan0, "pmin": min(powers), "pmax": max(powers),
                          "e1": e1, "e2": e2}))
    """), sim_paths.nvml_env(scenario))
    assert out["t0"] == 40 and out["t1"] == 80          # the step happened at t = 0.6 s
    assert out["util0"] == 0                            # 1000 s ramp barely started
    assert out["fan0"] == 10                            # first value of the sequence
    assert 50_000 <= out["pmin"] < 80_000 and 120_000 < out["pmax"] <= 150_000
    assert 0 < out["e1"] < out["e2"]                    # the energy counter only grows


BAD_SCENARIOS = [
    ("[sim]\nbogus = 1\n", 2, "unknown key 'bogus' in [sim]"),
    ("[[gpu]]\nvendor = \"nvidia\"\n[gpu.fields]\ntemperature = { wave = \"sine\", mean = 3 }\n",
     4, "needs 'amplitude'"),
    ("[[gpu]]\nname = \"unterminated\n", 2, "unterminated string"),
    ("[gpus]\n", 1, "unknown table [gpus]"),
    ("[[gpu]]\n[[gpu.faults]]\nat = 1\nkind = \"xid\"\n\n[[gpu]]\n", 6, "needs code"),
    ("[[gpu]]\nvendor = \"intel\"\n", 2, "vendor must be"),
    ("[[gpu]]\n[gpu.fields]\nfan = \"off\"\n", 3, "\"unsupported\""),
    ("[[gpu]]\nmemory_total_mib = 1.5\n", 2, "must be an integer"),
    ("[[gpu]]\nname = \"a\"\nname = \"b\"\n", 3, "duplicate key 'name'"),
    ("temperature = 3\n", 1, "outside any table"),
    ("[[gpu]]\npci_bus_id = \"nonsense\"\n", 2, "pci_bus_id must look like"),
]


@pytest.mark.parametrize("text,line,message", BAD_SCENARIOS)
def test_bad_scenario_fails_init_naming_file_and_line(run_reader, tmp_path, text, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out, stderr = run_reader(nvml("""
        try:
            N.nvmlInit()
            print(json.dumps("initialised"))
        except N.NVMLError as e:
            print(json.dumps(err(e)))
    """), sim_paths.nvml_env(path))
    assert out == "NVMLError_Unknown"
    assert f"{path}:{line}: " in stderr
    assert message in stderr


def test_missing_scenario_file_fails_init_with_its_path(run_reader, tmp_path):
    path = tmp_path / "absent.toml"
    env = sim_paths.nvml_env()
    env["EGS_SIM_SCENARIO"] = str(path)
    out, stderr = run_reader(nvml("""
        try:
            N.nvmlInit()
            print(json.dumps("initialised"))
        except N.NVMLError as e:
            print(json.dumps(err(e)))
    """), env)
    assert out == "NVMLError_Unknown"
    assert str(path) in stderr and "cannot open" in stderr


def test_without_a_scenario_the_builtin_default_has_one_nvidia_gpu(run_reader):
    out, _ = run_reader(nvml("""
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        print(json.dumps([N.nvmlDeviceGetCount(), N.nvmlDeviceGetName(h)]))
    """), sim_paths.nvml_env(None))
    assert out == [1, "Tesla P100-PCIE-16GB"]


NEWER_SYMBOLS = ["nvmlInit_v2", "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2",
                 "nvmlDeviceGetTemperatureV", "nvmlDeviceGetMemoryInfo_v2",
                 "nvmlDeviceGetFieldValues"]
OLDER_SYMBOLS = ["nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
                 "nvmlDeviceGetTemperature", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage"]


def test_legacy_build_lacks_only_the_newer_versioned_symbols(sim_out):
    full = ctypes.CDLL(str(sim_paths.NVML_LIB))
    legacy = ctypes.CDLL(str(sim_paths.NVML_LEGACY_LIB))
    for name in NEWER_SYMBOLS:
        assert hasattr(full, name), name
        assert not hasattr(legacy, name), name
    for name in OLDER_SYMBOLS:
        assert hasattr(legacy, name), name


def test_legacy_build_serves_readers_through_the_older_symbols(run_reader):
    out, _ = run_reader(nvml("""
        import ctypes
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert lib.nvmlInit() == 0
        n = ctypes.c_uint(); h = ctypes.c_void_p(); t = ctypes.c_uint()
        assert lib.nvmlDeviceGetCount(ctypes.byref(n)) == 0
        assert lib.nvmlDeviceGetHandleByIndex(0, ctypes.byref(h)) == 0
        assert lib.nvmlDeviceGetTemperature(h, 0, ctypes.byref(t)) == 0
        print(json.dumps([n.value, t.value]))
    """), sim_paths.nvml_env("constant", legacy=True))
    assert out == [2, nvidia_gpus("constant")[0]["fields"]["temperature"]]


def test_concurrent_queries_and_event_waits_are_safe(run_reader):
    out, _ = run_reader(nvml("""
        import threading
        N.nvmlInit()
        hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(N.nvmlDeviceGetCount())]
        errors, events = [], []
        def sample():
            try:
                for _ in range(1500):
                    for h in hs:
                        N.nvmlDeviceGetTemperatureV(h, 0)
                        N.nvmlDeviceGetFieldValues(h, [186])
                        N.nvmlDeviceGetMemoryInfo(h)
            except Exception as e:
                errors.append(repr(e))
        def listen():
            s = N.nvmlEventSetCreate()
            for h in hs:
                N.nvmlDeviceRegisterEvents(h, N.nvmlEventTypeXidCriticalError, s)
            for _ in range(2):
                events.append(N.nvmlEventSetWait_v2(s, 5000).eventData)
            N.nvmlEventSetFree(s)
        threads = [threading.Thread(target=sample) for _ in range(3)] + [threading.Thread(target=listen)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(json.dumps({"errors": errors, "events": events}))
    """), sim_paths.nvml_env("nvidia-xid"), timeout=60)
    assert out == {"errors": [], "events": [79, 13]}


def test_marker_symbol_tells_the_simulator_from_a_real_driver(run_reader):
    out, _ = run_reader(nvml("""
        import ctypes
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        lib.egs_sim_nvml_scenario.restype = ctypes.c_char_p
        before = lib.egs_sim_nvml_scenario()
        N.nvmlInit()
        print(json.dumps([before, lib.egs_sim_nvml_scenario().decode()]))
    """), sim_paths.nvml_env("constant"))
    assert out == [None, str(sim_paths.scenario("constant"))]
