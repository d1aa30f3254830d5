#!/usr/bin/env python3
"""Record how an NVML library behaves on the edge cases the simulator imitates.

Run it once against a real driver and once against the simulator and compare the two JSON
documents: return codes for bad arguments, short buffers, versioned structs, unknown field
ids, unsupported event types and waits that time out; string formats (UUID, PCI bus ids,
NVML version) and error strings. Values (temperatures, names) naturally differ; the shapes
and codes should not.

    python native/sim/nvml_probe.py                         # whatever libnvidia-ml.so.1 loads
    LD_LIBRARY_PATH=build/sim/nvml python native/sim/nvml_probe.py
"""
import ctypes
import json
import re
import sys

import pynvml as N


def code(fn, *args):
    """The NVML return code of fn(*args): 0 or the NVMLError value."""
    try:
        fn(*args)
        return 0
    except N.NVMLError as e:
        return e.value


def shape(s: str) -> str:
    """A string with its hex digits and decimal digits blanked, to compare formats."""
    return re.sub(r"[0-9]", "9", re.sub(r"[a-f]", "x", re.sub(r"[A-F]", "X", s)))


def edge_cases(lib, h) -> dict:
    """Return codes for malformed or unusual calls, made through the raw library."""
    out = {}

    def memory_v2(version):
        m = N.c_nvmlMemory_v2_t()
        m.version = version
        return lib.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(m))

    def temperature_v(version, sensor=0):
        t = N.c_nvmlTemperature_v1_t()
        t.version = version
        t.sensorType = sensor
        return lib.nvmlDeviceGetTemperatureV(h, ctypes.byref(t))

    for name, version in [("v2_ok", 0x02000028), ("v1_size28", 0x01000028),
                          ("v2_size20", 0x02000020), ("v3_size28", 0x03000028), ("v0", 0)]:
        out["mem_" + name] = memory_v2(version)
    for name, version in [("v1_ok", 0x0100000C), ("v1_sizeB", 0x0100000B),
                          ("v2_sizeC", 0x0200000C), ("v0", 0)]:
        out["temp_" + name] = temperature_v(version)
    out["tempV_sensor1"] = temperature_v(0x0100000C, 1)
    out["temp_sensor1"] = lib.nvmlDeviceGetTemperature(h, 1, ctypes.byref(ctypes.c_uint()))
    for clock_type in (3, 4, 5, 99):
        out[f"clock_{clock_type}"] = lib.nvmlDeviceGetClockInfo(h, clock_type, ctypes.byref(ctypes.c_uint()))

    # Per-entry codes for ids at the edges of the defined range (the values are device data).
    ids = [0, 185, 186, N.NVML_FI_MAX, N.NVML_FI_MAX + 1, 9999]
    out["fv_edge_ids"] = [[v.fieldId, v.nvmlReturn] for v in N.nvmlDeviceGetFieldValues(h, ids)]
    out["fv_neg_count"] = lib.nvmlDeviceGetFieldValues(h, ctypes.c_int(-1),
                                                       ctypes.byref(N.c_nvmlFieldValue_t()))

    bus_id = N.nvmlDeviceGetPciInfo_v3(h).busId
    d = N.c_nvmlDevice_t()
    for label, text in [("canonical", bus_id), ("lower", bus_id.lower()),
                        ("short_domain", bus_id[4:]), ("no_domain", bus_id[9:])]:
        out["bus_" + label] = lib.nvmlDeviceGetHandleByPciBusId_v2(text.encode(), ctypes.byref(d))

    name = N.nvmlDeviceGetName(h)
    out["name_exact_len"] = lib.nvmlDeviceGetName(h, ctypes.create_string_buffer(len(name)),
                                                  ctypes.c_uint(len(name)))
    out["name_len_plus1"] = lib.nvmlDeviceGetName(h, ctypes.create_string_buffer(len(name) + 1),
                                                  ctypes.c_uint(len(name) + 1))
    out["uuid_len0"] = lib.nvmlDeviceGetUUID(h, ctypes.create_string_buffer(1), ctypes.c_uint(0))

    s = N.nvmlEventSetCreate()
    out["register_twice"] = [lib.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(8), s),
                             lib.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(8), s)]
    event = N.c_nvmlEventData_t()
    out["wait0"] = lib.nvmlEventSetWait_v2(s, ctypes.byref(event), ctypes.c_uint(0))
    out["wait_null_data"] = lib.nvmlEventSetWait_v2(s, None, ctypes.c_uint(0))
    out["register_all"] = lib.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(N.nvmlEventTypeAll), s)
    out["supported_event_types"] = hex(N.nvmlDeviceGetSupportedEventTypes(h))
    N.nvmlEventSetFree(s)

    out["count_null"] = lib.nvmlDeviceGetCount_v2(None)
    out["nested_init_then_shutdown"] = [lib.nvmlInit_v2(), lib.nvmlShutdown()]
    return out


def main() -> int:
    out = {}
    N.nvmlInit()
    lib = N.nvmlLib
    h = N.nvmlDeviceGetHandleByIndex(0)
    out["nvml_version_shape"] = shape(N.nvmlSystemGetNVMLVersion())
    out["driver_version_shape"] = shape(N.nvmlSystemGetDriverVersion())
    out["uuid_shape"] = shape(N.nvmlDeviceGetUUID(h))
    pci = N.nvmlDeviceGetPciInfo_v3(h)
    out["pci_busId_shape"] = shape(pci.busId)
    out["pci_busIdLegacy_shape"] = shape(pci.busIdLegacy)
    out["pci_fields_agree"] = (int(pci.busId.split(":")[1], 16) == pci.bus)

    count = N.nvmlDeviceGetCount()
    handle = N.c_nvmlDevice_t()
    out["handle_index_out_of_range"] = lib.nvmlDeviceGetHandleByIndex_v2(count + 5, ctypes.byref(handle))
    out["handle_by_uuid_unknown"] = code(N.nvmlDeviceGetHandleByUUID, "GPU-00000000-0000-0000-0000-000000000000")

    small = ctypes.create_string_buffer(4)
    out["name_short_buffer"] = lib.nvmlDeviceGetName(h, small, ctypes.c_uint(4))
    out["uuid_short_buffer"] = lib.nvmlDeviceGetUUID(h, small, ctypes.c_uint(4))
    out["temperature_bad_sensor"] = code(N.nvmlDeviceGetTemperature, h, 7)
    out["temperatureV_ok"] = code(N.nvmlDeviceGetTemperatureV, h, 0)
    t = N.c_nvmlTemperature_v1_t()
    t.version = 0x0100000B   # wrong size in the version word
    out["temperatureV_bad_version"] = lib.nvmlDeviceGetTemperatureV(h, ctypes.byref(t))
    out["memory_v2_bad_version"] = code(N.nvmlDeviceGetMemoryInfo, h, 0x01000028)
    m1 = N.nvmlDeviceGetMemoryInfo(h)
    m2 = N.nvmlDeviceGetMemoryInfo(h, N.nvmlMemory_v2)
    out["memory_v1_used_plus_free_is_total"] = m1.used + m1.free == m1.total
    out["memory_v2_used_plus_free_plus_reserved_is_total"] = m2.used + m2.free + m2.reserved == m2.total
    out["clock_video"] = code(N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_VIDEO)
    out["clock_bad_type"] = code(N.nvmlDeviceGetClockInfo, h, 99)
    out["fan"] = code(N.nvmlDeviceGetFanSpeed, h)
    out["energy"] = code(N.nvmlDeviceGetTotalEnergyConsumption, h)

    fv = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_POWER_INSTANT, N.NVML_FI_DEV_POWER_AVERAGE,
                                        N.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 9999])
    out["field_values"] = [[v.fieldId, v.nvmlReturn, v.valueType if v.nvmlReturn == 0 else None]
                           for v in fv]
    out["field_values_zero_count"] = lib.nvmlDeviceGetFieldValues(h, ctypes.c_int(0), None)

    s = N.nvmlEventSetCreate()
    out["supported_event_types_has_xid"] = bool(N.nvmlDeviceGetSupportedEventTypes(h) & 0x8)
    out["register_xid"] = code(N.nvmlDeviceRegisterEvents, h, N.nvmlEventTypeXidCriticalError, s)
    out["register_bogus_bit"] = code(N.nvmlDeviceRegisterEvents, h, 1 << 40, s)
    out["wait_timeout"] = code(N.nvmlEventSetWait_v2, s, 50)
    N.nvmlEventSetFree(s)

    out["error_strings"] = {c: N.nvmlErrorString(c) for c in (1, 2, 3, 9, 10, 15, 999)}
    out.update(edge_cases(lib, h))
    N.nvmlShutdown()
    out["query_after_shutdown"] = code(N.nvmlDeviceGetCount)
    out["extra_shutdown"] = code(N.nvmlShutdown)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
