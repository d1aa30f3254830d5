"""The simulators' struct sizes (their _Static_asserts) equal the official readers' ctypes
definitions, so a size written in C by hand cannot drift from what pynvml and amdsmi pass."""
import ctypes
import re

import pynvml

import sim_paths

ASSERT = re.compile(r"_Static_assert\(sizeof\((\w+)\) == (\d+)")

# C typedef in the simulator -> the reader's ctypes class.
NVML = {"nvmlPciInfo_t": "nvmlPciInfo_t", "nvmlFieldValue_t": "c_nvmlFieldValue_t",
        "nvmlTemperature_t": "c_nvmlTemperature_v1_t", "nvmlMemory_v2_t": "c_nvmlMemory_v2_t",
        "nvmlMemory_t": "c_nvmlMemory_t", "nvmlUtilization_t": "c_nvmlUtilization_t",
        "nvmlEventData_t": "c_nvmlEventData_t", "nvmlSample_t": "c_nvmlSample_t",
        "nvmlProcessInfo_v2_t": "c_nvmlProcessInfo_v2_t",
        "nvmlProcessUtilizationSample_t": "c_nvmlProcessUtilizationSample_t",
        "nvmlProcessUtilizationInfo_v1_t": "c_nvmlProcessUtilizationInfo_v1_t",
        "nvmlProcessesUtilizationInfo_t": "c_nvmlProcessesUtilizationInfo_v1_t",
        "nvmlGpmMetric_t": "c_nvmlGpmMetric_t", "nvmlGpmSupport_t": "c_nvmlGpmSupport_t"}


class ProcessInfoV1(ctypes.Structure):
    """The record of the unversioned nvmlDevice*RunningProcesses, which pynvml no longer
    defines (it calls _v3): pid and usedGpuMemory, in C's alignment."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


# Layouts the reader lacks, defined here.
NVML_LOCAL = {"nvmlProcessInfo_v1_t": ProcessInfoV1}


def asserted(source: str) -> dict:
    return {name: int(size) for name, size in ASSERT.findall((sim_paths.SIM_SRC / source).read_text())}


def test_nvml_struct_sizes_match_pynvml():
    sizes = asserted("sim_nvml.c")
    assert set(sizes) == set(NVML) | set(NVML_LOCAL)
    for c_name, py_name in NVML.items():
        assert sizes[c_name] == ctypes.sizeof(getattr(pynvml, py_name)), c_name
    for c_name, struct in NVML_LOCAL.items():
        assert sizes[c_name] == ctypes.sizeof(struct), c_name


def test_amdsmi_struct_sizes_match_the_wrapper(run_reader):
    sizes = asserted("sim_amdsmi.c")
    assert len(sizes) >= 7
    out, _ = run_reader(f"""
import ctypes, json
from amdsmi import amdsmi_wrapper as W
print(json.dumps({{name: ctypes.sizeof(getattr(W, name)) for name in {sorted(sizes)!r}}}))
""", sim_paths.amdsmi_env("constant"))
    assert out == sizes
