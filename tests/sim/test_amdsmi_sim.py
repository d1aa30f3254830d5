"""The simulated libamd_smi.so, read by AMD's official `amdsmi` Python package in a subprocess.

`import amdsmi` binds ~184 symbols with ctypes and fails if any is missing, so every test here
also proves the stub generation is complete.
"""
import ctypes
import subprocess
import sys
import textwrap
import tomllib

import pytest

import sim_paths

PRELUDE = """
import json, sys, time
import amdsmi as A
def code(e):
    return e.get_error_code() if isinstance(e, A.AmdSmiLibraryException) else repr(e)
EDGE, CURRENT = A.AmdSmiTemperatureType.EDGE, A.AmdSmiTemperatureMetric.CURRENT
"""


def amd(code: str) -> str:
    return PRELUDE + textwrap.dedent(code)


def amd_gpus(name):
    with open(sim_paths.scenario(name), "rb") as f:
        return [g for g in tomllib.load(f)["gpu"] if g.get("vendor") == "amd"]


def test_amdsmi_imports_and_reads_the_constant_scenario(run_reader):
    out, _ = run_reader(amd("""
        A.amdsmi_init()
        res = []
        for h in A.amdsmi_get_processor_handles():
            res.append({
                "type": A.amdsmi_get_processor_type(h)["processor_type"],
                "uuid": A.amdsmi_get_gpu_device_uuid(h),
                "bdf": A.amdsmi_get_gpu_device_bdf(h),
                "asic": A.amdsmi_get_gpu_asic_info(h),
                "temp": A.amdsmi_get_temp_metric(h, EDGE, CURRENT),
                "activity": A.amdsmi_get_gpu_activity(h),
                "vram": A.amdsmi_get_gpu_vram_usage(h),
                "power": A.amdsmi_get_power_info(h),
                "gfx": A.amdsmi_get_clock_info(h, A.AmdSmiClkType.GFX)["clk"],
                "mem": A.amdsmi_get_clock_info(h, A.AmdSmiClkType.MEM)["clk"],
                "energy": A.amdsmi_get_energy_count(h),
                "driver": A.amdsmi_get_gpu_driver_info(h),
            })
        A.amdsmi_shut_down()
        print(json.dumps(res))
    """), sim_paths.amdsmi_env("constant"))
    expected = amd_gpus("constant")
    assert len(out) == len(expected) == 1
    got, want = out[0], expected[0]
    f = want["fields"]
    assert got["type"] == "AMDSMI_PROCESSOR_TYPE_AMD_GPU"
    assert got["uuid"] == want["uuid"]
    assert got["bdf"] == want["pci_bus_id"][4:].lower()          # amdsmi prints a 4-digit domain
    assert got["asic"]["market_name"] == want["name"]
    assert got["asic"]["vendor_id"] == "0x1002"
    assert got["temp"] == f["temperature"]
    assert got["activity"]["gfx_activity"] == f["utilization"]
    assert got["activity"]["umc_activity"] == f["memory_busy"]
    assert got["vram"] == {"vram_total": want["memory_total_mib"], "vram_used": f["memory_used_mib"]}
    assert got["power"]["socket_power"] == f["power"]
    assert got["power"]["current_socket_power"] == f["power"]
    assert (got["gfx"], got["mem"]) == (f["sm_clock"], f["memory_clock"])
    assert got["driver"]["driver_name"] == "amdgpu"
    with open(sim_paths.scenario("constant"), "rb") as fh:
        assert got["driver"]["driver_version"] == tomllib.load(fh)["sim"]["amd_driver_version"]
    energy_j = got["energy"]["energy_accumulator"] * got["energy"]["counter_resolution"] / 1e6
    assert energy_j == pytest.approx(f["energy"], rel=1e-6)


def test_handles_follow_the_count_then_array_idiom(run_reader):
    out, _ = run_reader(amd("""
        import ctypes
        from amdsmi import amdsmi_wrapper as W
        A.amdsmi_init()
        n = ctypes.c_uint32(0)
        assert W.amdsmi_get_socket_handles(ctypes.byref(n), None) == 0
        total = n.value
        arr = (W.amdsmi_socket_handle * 1)()
        n.value = 1                               # room for one: gets one
        rc = W.amdsmi_get_socket_handles(ctypes.byref(n), arr)
        infos = [A.amdsmi_get_socket_info(s) for s in A.amdsmi_get_socket_handles()]
        print(json.dumps([total, rc, n.value, infos]))
    """), sim_paths.amdsmi_env("amd-two"))
    assert out == [2, 0, 1, ["0000:03:00.0", "0000:04:00.0"]]


def test_lost_gpu_reports_not_found_for_that_device_only(run_reader):
    out, _ = run_reader(amd("""
        A.amdsmi_init()
        hs = A.amdsmi_get_processor_handles()
        before = [A.amdsmi_get_temp_metric(h, EDGE, CURRENT) for h in hs]
        time.sleep(1.7)   # amd-two loses its second GPU at t = 1.5 s
        after = []
        for h in hs:
            try:
                after.append(A.amdsmi_get_power_info(h)["socket_power"])
            except A.AmdSmiLibraryException as e:
                after.append(code(e))
        print(json.dumps([before[0], after, len(A.amdsmi_get_processor_handles())]))
    """), sim_paths.amdsmi_env("amd-two"))
    assert out == [64, [105, 31], 2]      # 31: AMDSMI_STATUS_NOT_FOUND


def test_init_failure_reports_driver_not_loaded(run_reader):
    out, _ = run_reader(amd("""
        try:
            A.amdsmi_init()
            print(json.dumps("initialised"))
        except A.AmdSmiLibraryException as e:
            print(json.dumps(code(e)))
    """), sim_paths.amdsmi_env("init-failure"))
    assert out == 34      # AMDSMI_STATUS_DRIVER_NOT_LOADED, translated from NVML's 9


def test_unsupported_fields_and_engines(run_reader, tmp_path):
    scenario = tmp_path / "amd-unsupported.toml"
    scenario.write_text(textwrap.dedent("""
        [[gpu]]
        vendor = "amd"
        [gpu.fields]
        power = "unsupported"
        memory_busy = "unsupported"
        temperature = 50
        [[gpu.faults]]
        at = 0.5
        kind = "unsupported"
        field = "temperature"
    """))
    out, _ = run_reader(amd("""
        A.amdsmi_init()
        h = A.amdsmi_get_processor_handles()[0]
        res = {"activity": A.amdsmi_get_gpu_activity(h)}
        for name, fn in (("power", lambda: A.amdsmi_get_power_info(h)),
                         ("energy", lambda: A.amdsmi_get_energy_count(h)),
                         ("hotspot", lambda: A.amdsmi_get_temp_metric(h, A.AmdSmiTemperatureType.HOTSPOT, CURRENT)),
                         ("temp", lambda: A.amdsmi_get_temp_metric(h, EDGE, CURRENT))):
            try:
                res[name] = fn()
            except A.AmdSmiLibraryException as e:
                res[name] = code(e)
        time.sleep(0.6)
        try:
            res["temp_later"] = A.amdsmi_get_temp_metric(h, EDGE, CURRENT)
        except A.AmdSmiLibraryException as e:
            res["temp_later"] = code(e)
        print(json.dumps(res))
    """), sim_paths.amdsmi_env(scenario))
    assert out["activity"]["umc_activity"] == "N/A"    # the reader's rendering of 0xFFFF
    assert out["activity"]["gfx_activity"] == 0
    assert out["power"] == 2 and out["energy"] == 2     # AMDSMI_STATUS_NOT_SUPPORTED
    assert out["hotspot"] == 2
    assert out["temp"] == 50 and out["temp_later"] == 2


def test_event_notification_delivers_scenario_events(run_reader, tmp_path):
    scenario = tmp_path / "amd-events.toml"
    scenario.write_text(textwrap.dedent("""
        [[gpu]]
        vendor = "amd"
        [[gpu.faults]]
        at = 0.5
        kind = "xid"
        code = 3            # GPU_PRE_RESET
        [[gpu.faults]]
        at = 0.6
        kind = "xid"
        code = 2            # THERMAL_THROTTLE: not in the mask below
    """))
    out, _ = run_reader(amd("""
        A.amdsmi_init()
        h = A.amdsmi_get_processor_handles()[0]
        reader = A.AmdSmiEventReader(h, [A.AmdSmiEvtNotificationType.GPU_PRE_RESET])
        got = []
        for timeout in (100, 3000, 500):
            try:
                got.append([(e["event"], e["message"]) for e in reader.read(timeout)])
            except A.AmdSmiLibraryException as e:
                got.append(code(e))
        reader.stop()
        print(json.dumps(got))
    """), sim_paths.amdsmi_env(scenario))
    assert out[0] == 40                                 # AMDSMI_STATUS_NO_DATA before t = 0.5 s
    assert out[1] == [["GPU_PRE_RESET", "GPU_PRE_RESET@t=0.500"]]
    assert out[2] == 40                                 # the masked-out event never arrives


def test_cpu_only_init_enumerates_no_gpu(run_reader):
    out, _ = run_reader(amd("""
        A.amdsmi_init(A.AmdSmiInitFlags.INIT_AMD_CPUS)
        print(json.dumps(len(A.amdsmi_get_processor_handles())))
    """), sim_paths.amdsmi_env("amd-two"))
    assert out == 0


def test_bad_scenario_fails_init_naming_file_and_line(run_reader, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[gpu]]\nvendor = "amd"\n[[gpu.faults]]\nat = 1\nkind = "xid"\ncode = 79\n')
    out, stderr = run_reader(amd("""
        try:
            A.amdsmi_init()
            print(json.dumps("initialised"))
        except A.AmdSmiLibraryException as e:
            print(json.dumps(code(e)))
    """), sim_paths.amdsmi_env(path))
    assert out == 18      # AMDSMI_STATUS_INIT_ERROR
    assert f"egs-sim: libamd_smi: {path}:6: " in stderr
    assert "AMD SMI event type" in stderr


def test_status_strings_and_calls_outside_init(sim_out):
    lib = ctypes.CDLL(str(sim_paths.AMDSMI_LIB))
    text = ctypes.c_char_p()
    assert lib.amdsmi_status_code_to_string(31, ctypes.byref(text)) == 0
    assert b"NOT_FOUND" in text.value
    count = ctypes.c_uint32()
    assert lib.amdsmi_get_socket_handles(ctypes.byref(count), None) == 32   # NOT_INIT
    assert lib.amdsmi_get_gpu_metrics_header_info(None, None) == 2         # a generated stub


def test_generated_stubs_are_up_to_date():
    result = subprocess.run([sys.executable, str(sim_paths.SIM_SRC / "gen_amdsmi_stubs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_marker_symbol_names_the_scenario(run_reader):
    out, _ = run_reader(amd("""
        from amdsmi import amdsmi_wrapper as W
        import ctypes
        lib = W._libraries["libamd_smi.so"]
        lib.egs_sim_amdsmi_scenario.restype = ctypes.c_char_p
        A.amdsmi_init()
        print(json.dumps(lib.egs_sim_amdsmi_scenario().decode()))
    """), sim_paths.amdsmi_env(None))
    assert out == "(built-in)"
