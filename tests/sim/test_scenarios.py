"""The shipped scenario files: each one loads in both simulated libraries, and the demo and
benchmark hosts have the shape the other rooms rely on."""
import math
import tomllib

import pytest

import sim_paths

SCENARIOS = sorted(p.stem for p in sim_paths.SCENARIOS.glob("*.toml"))

INIT_BOTH = """
import json
import pynvml as N
res = {}
try:
    N.nvmlInit()
    res["nvidia"] = N.nvmlDeviceGetCount()
except N.NVMLError as e:
    res["nvidia"] = ["error", e.value]
import amdsmi as A
try:
    A.amdsmi_init()
    res["amd"] = len(A.amdsmi_get_processor_handles())
except A.AmdSmiLibraryException as e:
    res["amd"] = ["error", e.get_error_code()]
print(json.dumps(res))
"""


def load(name):
    with open(sim_paths.scenario(name), "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", SCENARIOS)
def test_shipped_scenario_loads_in_both_libraries(run_reader, name):
    data = load(name)
    env = sim_paths.amdsmi_env(name, base=sim_paths.nvml_env(name))
    out, stderr = run_reader(INIT_BOTH, env)
    vendors = [g.get("vendor", "nvidia") for g in data.get("gpu", [])]
    init_error = data.get("sim", {}).get("init_error", 0)
    if init_error:
        assert out == {"nvidia": ["error", init_error], "amd": ["error", 34]}
    else:
        assert out == {"nvidia": vendors.count("nvidia"), "amd": vendors.count("amd")}
    assert "egs-sim" not in stderr


def test_demo_gpu0_crosses_70_celsius_about_20_seconds_in():
    gpu0 = load("two-nvidia-one-amd")["gpu"][0]
    wave = gpu0["fields"]["temperature"]
    assert wave["wave"] == "ramp"
    crossing = wave["duration"] * (70 - wave["from"]) / (wave["to"] - wave["from"])
    assert 15 <= crossing <= 30
    assert [g.get("vendor") for g in load("two-nvidia-one-amd")["gpu"]] == ["nvidia", "nvidia", "amd"]


def test_eight_nvidia_has_eight_distinct_lively_gpus():
    gpus = load("eight-nvidia")["gpu"]
    assert len(gpus) == 8
    assert len({g["uuid"] for g in gpus}) == 8 and len({g["pci_bus_id"] for g in gpus}) == 8
    catalogue = {"temperature", "power", "utilization", "memory_busy", "memory_used_mib",
                 "sm_clock", "memory_clock", "fan"}
    for g in gpus:
        assert catalogue <= set(g["fields"]), g["uuid"]
        assert "unsupported" not in g["fields"].values()


def test_sine_power_energy_is_the_integral_of_power(run_reader, tmp_path):
    """Energy without an explicit field integrates the power wave exactly."""
    path = tmp_path / "energy.toml"
    path.write_text('[[gpu]]\n[gpu.fields]\npower = { wave = "sine", mean = 100, amplitude = 50, period = 2 }\n')
    out, _ = run_reader("""
import json, time
import pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
t0 = time.monotonic()
samples = []
for _ in range(6):
    samples.append([time.monotonic() - t0, N.nvmlDeviceGetTotalEnergyConsumption(h)])
    time.sleep(0.25)
print(json.dumps(samples))
""", sim_paths.nvml_env(path))
    # Between two reads the counter grows by the wave's integral over that span (mJ); the
    # span's position is known to within the reader's own timing, so compare the total growth
    # with the mean power (100 W) over the whole span, which the sine can shift by at most
    # amplitude * period / pi = 31.8 J.
    (ta, ea), (tb, eb) = out[0], out[-1]
    growth_j = (eb - ea) / 1000
    assert abs(growth_j - 100 * (tb - ta)) <= 50 * 2 / math.pi + 5
    assert all(b[1] >= a[1] for a, b in zip(out, out[1:]))
