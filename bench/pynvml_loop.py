"""The pynvml side of bench/sampler.py, runnable alone on a host with a real driver.

Makes the same NVML calls per device as the native core (utilisation, memory v2, temperature
V, POWER_INSTANT field value, SM and memory clocks, energy, fan where supported) ROUNDS times
and prints one JSON line: the thread CPU ns per field value, and the last values read.
usage: python bench/pynvml_loop.py ROUNDS
"""
import json
import sys
import time

import pynvml


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    pynvml.nvmlInit()
    devs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    fan_ok = []
    for h in devs:
        try:
            pynvml.nvmlDeviceGetFanSpeed(h)
            fan_ok.append(True)
        except pynvml.NVMLError_NotSupported:
            fan_ok.append(False)
    fid = [pynvml.NVML_FI_DEV_POWER_INSTANT]
    last = {}
    reads = 0
    t0 = time.thread_time_ns()
    for _ in range(rounds):
        for i, h in enumerate(devs):
            u = pynvml.nvmlDeviceGetUtilizationRates(h)
            m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            t = pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU)
            p = pynvml.nvmlDeviceGetFieldValues(h, fid)[0].value.uiVal
            sm = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
            mem = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
            e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            f = pynvml.nvmlDeviceGetFanSpeed(h) if fan_ok[i] else None
            reads += 9 + fan_ok[i]
            last[i] = {"utilization": u.gpu, "memory_busy": u.memory, "memory_used": m.used,
                       "memory_total": m.total, "temperature": t, "power_mw": p, "sm_clock": sm,
                       "memory_clock": mem, "energy_mj": e, "fan": f}
    ns = time.thread_time_ns() - t0
    print(json.dumps({"gpus": len(devs), "reads": reads, "ns_per_read": ns / reads, "last": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
