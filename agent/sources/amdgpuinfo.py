"""AMD GPUs read through pyamdgpuinfo (libdrm) on hosts without the AMD SMI library.

pyamdgpuinfo is an optional dependency: where it is missing, or finds no GPU, the AMD backend
stays as the native core reports it and its detail says why. `CoreWithFallback` is the native
core (`agent.native.Core`) plus this sampler, which it starts when AMD is wanted and the core
found AMD SMI unavailable: its devices follow the core's in the global index, with
`source == "pyamdgpuinfo"`, and drains, rings and the AMD backend's description include them.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from agent import metrics
from agent.native import FIELDS, MEMORY_PERCENT, Backend, Core, Device, FieldStats, RingBlock

FALLBACK_HZ = 1.0


class AmdgpuFallback:
    """AMD GPUs read through libdrm (pyamdgpuinfo) when AMD SMI is not installed.

    Slower and narrower than AMD SMI (no memory-busy, energy or fan figures), so it runs in
    Python at a low rate; its accumulators have the same meaning as the core's.
    """

    FIELDS = ("gpu_utilization_percent", "gpu_memory_used_bytes", "gpu_memory_total_bytes",
              "gpu_temperature_celsius", "gpu_power_watts", "gpu_sm_clock_mhz", "gpu_memory_clock_mhz")

    def __init__(self, first_index: int, hz: float, ring_len: int):
        self.first_index, self.hz, self.ring_len = first_index, hz, ring_len
        self.gpus: list[Any] = []
        self.devices: list[Device] = []
        self.detail = ""
        self._lock = threading.Lock()
        self._acc: dict[tuple[int, str], list[float]] = {}
        self._errors: dict[tuple[int, str], int] = {}
        self._error_text: dict[str, str] = {}  # metric -> the latest failure, by _read
        self._last_error: dict[tuple[int, str], str] = {}
        self._ring: dict[int, list[tuple[float, dict[str, float | None]]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> bool:
        try:
            import pyamdgpuinfo
        except ImportError as e:
            self.detail = f"pyamdgpuinfo fallback unavailable ({e})"
            return False
        try:
            count = pyamdgpuinfo.detect_gpus()
            self.gpus = [pyamdgpuinfo.get_gpu(i) for i in range(count)]
        except (OSError, RuntimeError) as e:  # no /dev/dri, no permission on the render node
            self.detail = f"pyamdgpuinfo fallback (libdrm) found no AMD GPU ({e})"
            return False
        if not self.gpus:
            self.detail = "pyamdgpuinfo fallback (libdrm) found no AMD GPU"
            return False
        unsupported = frozenset(set(metrics.GPU_METRICS) - set(self.FIELDS) - {MEMORY_PERCENT})
        for i, gpu in enumerate(self.gpus):
            self.devices.append(Device(
                index=self.first_index + i, vendor="amd", uuid="", name=gpu.name or "AMD GPU",
                pci_bus_id=gpu.pci_slot or "", state="ok", unsupported=unsupported,
                vendor_index=i, source="pyamdgpuinfo"))
        self.detail = f"pyamdgpuinfo fallback (libdrm), {self.hz:g} Hz, {len(self.gpus)} device(s)"
        self._thread = threading.Thread(target=self._run, name="egs-amdgpu-fallback", daemon=True)
        self._thread.start()
        return True

    def _read(self, gpu: Any) -> dict[str, float | None]:
        readers = {
            "gpu_utilization_percent": lambda: gpu.query_load() * 100.0,
            "gpu_memory_used_bytes": gpu.query_vram_usage,
            "gpu_memory_total_bytes": lambda: gpu.memory_info["vram_size"],
            "gpu_temperature_celsius": gpu.query_temperature,
            "gpu_power_watts": gpu.query_power,
            "gpu_sm_clock_mhz": lambda: gpu.query_sclk() / 1e6,
            "gpu_memory_clock_mhz": lambda: gpu.query_mclk() / 1e6,
        }
        out: dict[str, float | None] = {}
        for name, read in readers.items():
            try:
                value = read()
                out[name] = None if value is None else float(value)
            except (RuntimeError, OSError, TypeError, KeyError) as e:
                out[name] = None
                self._error_text[name] = f"{type(e).__name__}: {e}"
        return out

    def _run(self) -> None:
        period = 1.0 / self.hz
        deadline = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            for i, gpu in enumerate(self.gpus):
                values = self._read(gpu)
                with self._lock:
                    for name, v in values.items():
                        key = (i, name)
                        if v is None:
                            self._errors[key] = self._errors.get(key, 0) + 1
                            self._last_error[key] = self._error_text.pop(name, "no value")
                            continue
                        a = self._acc.get(key)
                        if a is None:
                            self._acc[key] = [1, v, v, v, v, now, now]
                        else:
                            a[0] += 1
                            a[1] += v
                            a[2] = min(a[2], v)
                            a[3] = max(a[3], v)
                            a[4], a[6] = v, now
                    ring = self._ring.setdefault(i, [])
                    ring.append((now, values))
                    del ring[:-self.ring_len]
            deadline += period
            self._stop.wait(max(0.0, deadline - time.monotonic()))

    def drain(self) -> list[FieldStats]:
        with self._lock:
            acc, errors, texts = self._acc, self._errors, self._last_error
            self._acc, self._errors, self._last_error = {}, {}, {}
        out = []
        for (i, name), (count, total, lo, hi, last, first_ts, last_ts) in acc.items():
            out.append(FieldStats(self.first_index + i, name, int(count), total / count, lo, hi,
                                  last, first_ts, last_ts, errors.get((i, name), 0), texts.get((i, name), "")))
        # A metric none of whose reads succeeded is left out here (unlike the core's records):
        # its failures only show once a read of it works again.
        return out

    def ring(self, i: int, since: float | None) -> RingBlock:
        with self._lock:
            rows = [r for r in self._ring.get(i, []) if since is None or r[0] > since]
        values: dict[str, list[float | None]] = {name: [] for name in FIELDS}
        values[MEMORY_PERCENT] = []
        for _, row in rows:
            for name in values:
                values[name].append(row.get(name))
            used, total = row.get("gpu_memory_used_bytes"), row.get("gpu_memory_total_bytes")
            values[MEMORY_PERCENT][-1] = used / total * 100.0 if used is not None and total else None
        return RingBlock(self.first_index + i, [r[0] for r in rows], values)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


class CoreWithFallback(Core):
    """The native core, and AMD GPUs through pyamdgpuinfo where AMD SMI is unavailable."""

    def __init__(self, *args: Any, fallback_hz: float = FALLBACK_HZ, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fallback_hz = min(float(fallback_hz), self.hz)
        self._fallback: AmdgpuFallback | None = None
        self._fallback_detail = ""

    def start(self) -> "CoreWithFallback":
        super().start()
        with self._lock:
            self._fallback, self._fallback_detail = None, ""
            if self.amd and super().backends["amd"].state == "unavailable":
                fallback = AmdgpuFallback(self._ndev, self.fallback_hz, self.ring_len)
                if fallback.open():
                    self._fallback = fallback
                self._fallback_detail = fallback.detail
        return self

    def stop(self) -> None:
        super().stop()
        with self._lock:
            if self._fallback is not None:
                self._fallback.close()

    @property
    def backends(self) -> dict[str, Backend]:
        out = super().backends
        amd = out["amd"]
        if self._fallback_detail:
            state, ndev = amd.state, amd.devices
            if self._fallback is not None:
                state, ndev = "ok", len(self._fallback.devices)
            out["amd"] = Backend(name=amd.name, state=state, detail=f"{amd.detail}; {self._fallback_detail}",
                                 library=amd.library, driver_version=amd.driver_version,
                                 symbols=amd.symbols, devices=ndev, status=amd.status)
        return out

    def devices(self) -> list[Device]:
        out = super().devices()
        if self._fallback is not None:
            out.extend(self._fallback.devices)
        return out

    def drain(self) -> list[FieldStats]:
        out = super().drain()
        if self._fallback is not None:
            out.extend(self._fallback.drain())
        return out

    def ring(self, gpu: int, since: float | None = None) -> RingBlock:
        if self._fallback is not None and gpu >= self._ndev:
            return self._fallback.ring(gpu - self._ndev, since)
        return super().ring(gpu, since)
