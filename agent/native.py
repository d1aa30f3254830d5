"""The one Python wrapper of the native telemetry core (`agent._native`, built from native/).

The C core samples NVML and AMD SMI on its own thread and hands back values in the
catalogue's units (W, J, bytes, degrees C, MHz, percent); this module names them with the
catalogue's metric names (`agent.metrics`), derives `gpu_memory_used_percent`, and turns C
status codes into exceptions in one place (`_check`). Nothing here runs per sample: Python only sees drained aggregates, ring blocks
and events.

Fields come in two tiers (native/egs_core.h): those named in `slow_fields` (`FIELD_GROUPS`) at
`slow_hz`, the rest at `hz` (`Core.slow_metrics`). A drain may hold no record of a
slow metric when no slow tick fell in its interval, and a ring sample holds None for a slow
metric on the ticks that did not read it: "not sampled", never an older value repeated.

This module is the wrapper of the C core only: AMD hosts without the AMD SMI library are read
through pyamdgpuinfo by `agent.sources.amdgpuinfo`, on top of this Core.
"""
from __future__ import annotations

import logging
import math
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agent import libraries, metrics

try:
    from agent._native import ffi, lib
except ImportError as e:  # pragma: no cover - only when the extension was never built
    raise ImportError(f"agent._native is not built ({e}); run `make native`") from None

# Field index (EGS_F_*) -> catalogue metric; the core's values are in the metric's unit.
FIELDS: tuple[str, ...] = (
    "gpu_utilization_percent",
    "gpu_memory_busy_percent",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_temperature_celsius",
    "gpu_power_watts",
    "gpu_sm_clock_mhz",
    "gpu_memory_clock_mhz",
    "gpu_energy_joules_total",
    "gpu_fan_speed_percent",
)
assert len(FIELDS) == lib.EGS_NFIELDS
assert all(name in metrics.BY_NAME for name in FIELDS)
MEMORY_PERCENT = "gpu_memory_used_percent"
_USED, _TOTAL = lib.EGS_F_MEMORY_USED, lib.EGS_F_MEMORY_TOTAL
assert _TOTAL == _USED + 1  # drain() pairs them by offset
# `gpu.slow_fields` names (agent.config.GPU_FIELD_GROUPS) -> the core's fields: a pair read by
# one call is one name, so the tiers never split it.
FIELD_GROUPS: dict[str, tuple[int, ...]] = {
    "utilization": (lib.EGS_F_UTILIZATION, lib.EGS_F_MEMORY_BUSY),
    "memory": (_USED, _TOTAL),
    "temperature": (lib.EGS_F_TEMPERATURE,),
    "power": (lib.EGS_F_POWER,),
    "sm_clock": (lib.EGS_F_SM_CLOCK,),
    "memory_clock": (lib.EGS_F_MEMORY_CLOCK,),
    "energy": (lib.EGS_F_ENERGY,),
    "fan": (lib.EGS_F_FAN,),
}
assert sorted(f for group in FIELD_GROUPS.values() for f in group) == list(range(lib.EGS_NFIELDS))


def slow_mask(groups: Any) -> int:
    """The core's `slow_fields` bits for `gpu.slow_fields` names; ValueError names an unknown one."""
    mask = 0
    for name in groups:
        if name not in FIELD_GROUPS:
            raise ValueError(f"unknown GPU field {name!r}; the fields are {', '.join(FIELD_GROUPS)}")
        for f in FIELD_GROUPS[name]:
            mask |= 1 << f
    return mask


def slow_metrics(mask: int) -> frozenset[str]:
    """The catalogue metrics read at slow_hz for a `slow_fields` mask (the derived memory
    percent goes with used and total memory)."""
    names = {name for f, name in enumerate(FIELDS) if mask & (1 << f)}
    if mask & (1 << _USED):
        names.add(MEMORY_PERCENT)
    return frozenset(names)
# struct egs_stats as laid out by the C compiler (native alignment).
_STATS_LAYOUT = struct.Struct("@IiQddddddQ")
assert _STATS_LAYOUT.size == ffi.sizeof("struct egs_stats")

BACKENDS = {"nvidia": lib.EGS_BACKEND_NVIDIA, "amd": lib.EGS_BACKEND_AMD}
_BACKEND_STATES = {lib.EGS_BSTATE_UNAVAILABLE: "unavailable", lib.EGS_BSTATE_OK: "ok",
                   lib.EGS_BSTATE_ERROR: "error"}
_EVENT_KINDS = {lib.EGS_EVENT_XID: "xid", lib.EGS_EVENT_LOST: "lost", lib.EGS_EVENT_AMD: "amd"}
_VENDORS = {lib.EGS_BACKEND_NVIDIA: "nvidia", lib.EGS_BACKEND_AMD: "amd"}
# How the core reads each field of a device (egs_core.h, EGS_PATH_*): the driver's sample
# buffer, one batched call for several fields, a call of its own, or not at all.
PATHS = {lib.EGS_PATH_NONE: "none", lib.EGS_PATH_CALL: "call", lib.EGS_PATH_BATCH: "batch",
         lib.EGS_PATH_BUFFER: "buffer"}

# Raw samples kept per GPU at most, whatever hz x ring_seconds asks: 88 bytes each, so the
# ring of one GPU stays under 24 MiB (about 4.5 minutes at 1 kHz, an hour at 72 Hz).
RING_MAX_SAMPLES = 1 << 18
# Ring slots per second per GPU that driver sample buffers add beside the ticks' own (a
# buffered sample gets a slot with its own timestamp): the simulated driver's buffers fill
# about 24 a second (power every 50 ms, utilisation every 1/6 s, clocks every 100 ms, equal
# timestamps sharing a slot); a real driver's periods were not measured here (no GPU), and a
# faster one makes the ring hold less than ring_seconds, never more memory. The ring is
# resident from the start (prefaulted), so this is RSS: 8 GPUs x 60 s x 25 x 88 B = 1 MiB.
BUFFER_SLOTS_PER_S = 25
SLOW_HZ = 1.0  # the slow tier's default rate (config key gpu.slow_hz)
# The per-process pass's default rate: one pass every 5 s, the workload pass's default interval
# (workload.interval). The lists are costlier calls (three per NVIDIA GPU a pass, one per AMD
# GPU), so they are not read at the slow tier's rate.
PROCESS_HZ = 0.2
# The health pass's default rate: every 10 s (config key gpu.health_interval). Five calls per
# NVIDIA GPU a pass: clock-event reasons, one field-values call for ECC / retired pages /
# remapped rows / PCIe replays / NVLink, the enforced power limit, PCIe TX and RX; a driver
# without nvmlDeviceGetFieldValues makes up to nine calls for those fields instead of one (no
# NVLink); a GPU in MIG mode adds its MIG reads and, with GPM, two calls per GPU instance
# (egs_core.h, struct egs_mig). Seven per AMD GPU: ECC totals, power cap, bad-page count and
# threshold, compute and memory partition modes, the gpu_metrics table (throttle status). A
# call that answers NOT_SUPPORTED is not made again on that device.
HEALTH_HZ = 0.1
# Health signals (egs_core.h EGS_H_*), by index; the catalogue's metrics are made of them in
# agent.sources.gpu.
HEALTH: tuple[str, ...] = (
    "clock_reasons", "ecc_corrected_volatile", "ecc_uncorrected_volatile", "ecc_corrected_aggregate",
    "ecc_uncorrected_aggregate", "retired_pages_sbe", "retired_pages_dbe", "retired_pages_pending",
    "remapped_rows_correctable", "remapped_rows_uncorrectable", "row_remap_pending", "row_remap_failure",
    "power_limit_watts", "pcie_tx_bytes_per_second", "pcie_rx_bytes_per_second", "pcie_replays",
    "nvlink_tx_bytes", "nvlink_rx_bytes", "bad_pages", "bad_page_threshold",
)
assert len(HEALTH) == lib.EGS_NHEALTH
_PLIST_STATES = {lib.EGS_PLIST_NONE: "none", lib.EGS_PLIST_OK: "ok", lib.EGS_PLIST_UNSUPPORTED: "unsupported",
                 lib.EGS_PLIST_ERROR: "error", lib.EGS_PLIST_LOST: "lost"}
_PUTIL = {lib.EGS_PUTIL_NONE: "none", lib.EGS_PUTIL_SAMPLES: "samples", lib.EGS_PUTIL_COUNTERS: "counters"}


# --- errors ------------------------------------------------------------------------------

class NativeError(Exception):
    """A call into the native core failed."""


class InvalidArgument(NativeError):
    """An index or buffer the core rejected."""


class OutOfMemory(NativeError):
    pass


class StateError(NativeError):
    """The call does not fit the core's lifecycle (e.g. start while running)."""


class ThreadError(NativeError):
    """The sampler or event thread could not be created."""


class BufferTooSmall(NativeError):
    pass


_ERRORS: dict[int, type[NativeError]] = {
    lib.EGS_E_INVALID: InvalidArgument,
    lib.EGS_E_NOMEM: OutOfMemory,
    lib.EGS_E_STATE: StateError,
    lib.EGS_E_THREAD: ThreadError,
    lib.EGS_E_SIZE: BufferTooSmall,
}


def _check(rc: int, what: str) -> None:
    """The one place a core status becomes an exception."""
    if rc != lib.EGS_OK:
        raise _ERRORS.get(rc, NativeError)(f"{what} failed with native status {rc}")


def _text(chars: Any) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


# --- values handed out ---------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    name: str                      # "nvidia" | "amd"
    state: str                     # ok | unavailable | error
    detail: str
    library: str
    driver_version: str = ""
    symbols: dict[str, str | None] = field(default_factory=dict)  # role -> symbol used
    devices: int = 0
    status: int = 0                # the vendor's own code when state is error


@dataclass(frozen=True)
class Device:
    index: int                     # global: NVIDIA first, then AMD
    vendor: str
    uuid: str
    name: str
    pci_bus_id: str
    state: str                     # ok | lost
    lost_reason: str = ""
    unsupported: frozenset[str] = frozenset()
    vendor_index: int = 0
    source: str = "native"         # or "pyamdgpuinfo"
    paths: dict[str, str] = field(default_factory=dict)  # metric -> PATHS value


class FieldStats(NamedTuple):
    """One (gpu, metric) over one drain interval. A tuple, not a dataclass: a drain builds
    devices x metrics of them, and frozen dataclasses cost several times more to construct.

    `errors` counts reads that failed (not "not supported"). When every read of the interval
    failed, `count` is 0 and mean, min, max, last and the timestamps are None: no data, never 0.
    `error` is the latest failure's text where the reader has one (the C core gives none)."""

    gpu: int
    metric: str
    count: int
    mean: float
    min: float
    max: float
    last: float
    first_ts: float
    last_ts: float
    errors: int = 0
    error: str = ""

    @property
    def sum(self) -> float:
        return self.mean * self.count


@dataclass(frozen=True)
class RingBlock:
    gpu: int
    timestamps: list[float]
    values: dict[str, list[float | None]]


@dataclass(frozen=True)
class CoreEvent:
    kind: str                      # "xid" | "lost" | "amd"
    gpu: int
    code: int
    ts: float
    detail: str


@dataclass(frozen=True)
class CoreProcess:
    """One process on one GPU as the vendor library listed it (egs_core.h, struct egs_process).
    A figure the library does not give is None."""

    pid: int
    compute: bool                  # NVIDIA: on the compute list
    graphics: bool                 # NVIDIA: on the graphics list
    used_memory_bytes: float | None
    sm_percent: float | None       # NVIDIA: mean of the driver's samples since the last pass
    mem_percent: float | None
    enc_percent: float | None
    dec_percent: float | None
    gfx_busy_ns: float | None      # AMD: engine busy-time counters, ns since the process started
    enc_busy_ns: float | None


@dataclass(frozen=True)
class ProcessList:
    """The latest per-process pass of one GPU. `state`: none (not read yet, or the pass is
    off), ok, unsupported (the library has no list for it), error (`status` and `detail`
    say why), lost. `utilization`: none, samples (NVML's per-process percentages), counters
    (AMD SMI's engine busy time: rates need two lists)."""

    gpu: int
    vendor: str
    uuid: str
    state: str
    ts: float
    processes: tuple[CoreProcess, ...] = ()
    utilization: str = "none"
    calls: int = 0
    status: int = 0
    detail: str = ""


@dataclass(frozen=True)
class MigInstance:
    """A MIG device of a GPU in MIG mode (a child device): its GPU instance id, MIG device
    UUID, memory in bytes (None where not given; the GPU instance's, shared by its compute
    instances) and compute instance id within the GPU instance; and its GPU instance's
    utilisation from GPM, percent, the mean since the previous health pass (`GPM`: None on an
    instance's first pass and where the GPU or driver has no GPM; shared by its compute
    instances)."""

    instance: int
    uuid: str
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    compute_instance: int = 0
    graphics_util_percent: float | None = None
    sm_util_percent: float | None = None
    sm_occupancy_percent: float | None = None
    dram_bw_util_percent: float | None = None


@dataclass(frozen=True)
class HealthReading:
    """One GPU's latest health read (egs_core.h, "Health signals"): `values` by HEALTH name,
    None where the device does not give it (never 0)."""

    gpu: int
    vendor: str
    uuid: str
    ts: float
    values: dict[str, float | None]
    calls: int = 0
    mig_mode: bool | None = None               # None: the library does not say (not MIG-capable)
    mig: tuple[MigInstance, ...] = ()
    # AMD: the partition modes, {"compute": "SPX".."CPX", "memory": "NPS1".."NPS8"}, each None
    # where the device does not say (NOT_SUPPORTED); None on NVIDIA.
    partition: dict[str, str | None] | None = None


def _unsupported_names(mask: int) -> frozenset[str]:
    names = {name for f, name in enumerate(FIELDS) if mask & (1 << f)}
    if mask & (1 << _USED | 1 << _TOTAL):
        names.add(MEMORY_PERCENT)
    return frozenset(names)


def _paths(paths: Any) -> dict[str, str]:
    out = {name: PATHS.get(paths[f], str(paths[f])) for f, name in enumerate(FIELDS)}
    # The derived percentage comes from the memory figures' path.
    out[MEMORY_PERCENT] = out["gpu_memory_used_bytes"]
    return out


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


# --- the core --------------------------------------------------------------------------------

class Core:
    """Native GPU sampling: NVML and AMD SMI on a C thread, drained as aggregates."""

    def __init__(self, nvml_library: str | None = None, amdsmi_library: str | None = None,
                 hz: float = 10.0, ring_seconds: float = 60.0, nvidia: bool = True,
                 amd: bool = True, events: bool = True, slow_hz: float | None = None,
                 batch: bool = True, buffers: bool = True, process_hz: float = PROCESS_HZ,
                 health_hz: float = HEALTH_HZ, slow_fields: Any = None, event_wait_ms: int | None = None):
        """`slow_hz` is the slow tier's rate (None: SLOW_HZ, or hz when hz is lower); the
        core reads it every round(hz / slow_hz) ticks of the `hz` grid. `slow_fields` names
        the fields on that tier (`FIELD_GROUPS`; None: the daemon's default,
        `agent.config.DEFAULT_SLOW_FIELDS`); `slow_metrics` is what that makes slow. `batch` and
        `buffers` allow the BATCH and BUFFER paths (PATHS): off, every field is read by a
        call of its own, as before they existed. `process_hz` is the per-process pass's rate
        (`processes()`; 0: no pass; above `hz`: `hz`), `health_hz` the health pass's
        (`health()`), likewise. `event_wait_ms` is the event thread's longest wait in the
        libraries (None: EGS_EVENT_WAIT_MS, 500): an event ends a wait at once, so it only sets
        how often the idle thread wakes and how long `stop()` may wait for it."""
        if not hz > 0:
            raise ValueError(f"hz must be positive, got {hz!r}")
        if slow_hz is None:
            slow_hz = min(SLOW_HZ, float(hz))
        if not 0 < slow_hz <= hz:
            raise ValueError(f"slow_hz must be > 0 and <= hz ({hz!r}), got {slow_hz!r}")
        if ring_seconds < 0:
            raise ValueError(f"ring_seconds must not be negative, got {ring_seconds!r}")
        process_hz = min(float(process_hz), float(hz))
        if not process_hz >= 0:
            raise ValueError(f"process_hz must not be negative, got {process_hz!r}")
        self.process_hz = process_hz
        health_hz = min(float(health_hz), float(hz))
        if not health_hz >= 0:
            raise ValueError(f"health_hz must not be negative, got {health_hz!r}")
        self.health_hz = health_hz
        if event_wait_ms is None:
            event_wait_ms = lib.EGS_EVENT_WAIT_MS
        if not 1 <= event_wait_ms <= lib.EGS_EVENT_WAIT_MAX:
            raise ValueError(f"event_wait_ms must be 1..{lib.EGS_EVENT_WAIT_MAX}, got {event_wait_ms!r}")
        self.event_wait_ms = int(event_wait_ms)
        self.nvml_library = nvml_library or os.environ.get(libraries.NVML_ENV) or libraries.NVML_LIBRARY
        self.amdsmi_library = (amdsmi_library or os.environ.get(libraries.AMDSMI_ENV)
                               or libraries.default_amdsmi_library())
        if slow_fields is None:
            from agent.config import DEFAULT_SLOW_FIELDS
            slow_fields = DEFAULT_SLOW_FIELDS
        self.slow_fields = tuple(slow_fields)
        self._slow_mask = slow_mask(self.slow_fields)
        self.slow_metrics = slow_metrics(self._slow_mask)
        self.hz, self.slow_hz, self.ring_seconds = float(hz), float(slow_hz), float(ring_seconds)
        self.nvidia, self.amd, self.want_events = bool(nvidia), bool(amd), bool(events)
        self.batch, self.buffers = bool(batch), bool(buffers)
        slots_per_s = self.hz + (BUFFER_SLOTS_PER_S if self.buffers else 0)
        self.ring_len = min(RING_MAX_SAMPLES, int(math.ceil(slots_per_s * self.ring_seconds)))
        # cffi keeps these alive as long as the config struct refers to them.
        self._paths = (ffi.new("char[]", self.nvml_library.encode()),
                       ffi.new("char[]", self.amdsmi_library.encode()))
        cfg = ffi.new("struct egs_config *", {
            "nvml_library": self._paths[0], "amdsmi_library": self._paths[1],
            "nvidia": int(self.nvidia), "amd": int(self.amd), "hz": self.hz,
            "slow_hz": self.slow_hz, "slow_fields": self._slow_mask, "ring_len": self.ring_len, "events": int(self.want_events),
            "event_wait_ms": self.event_wait_ms,
            "no_batch": int(not self.batch), "no_buffers": int(not self.buffers),
            "process_hz": self.process_hz, "health_hz": self.health_hz})
        out = ffi.new("struct egs_core **")
        _check(lib.egs_core_new(cfg, out), "egs_core_new")
        self._core = ffi.gc(out[0], lib.egs_core_free)
        self._lock = threading.Lock()  # start and stop against each other
        self._ndev = 0
        # gpu -> its latest HealthReading: the daemon asks every tick and the pass comes every
        # gpu.health_interval, so a read whose time has not moved is handed back unconverted.
        self._health: dict[int, HealthReading] = {}
        self._described: dict[int, tuple[bytes, Device]] = {}  # devices(): index -> (C bytes, Device)

    @classmethod
    def from_config(cls, cfg: Any) -> "Core":
        """From a loaded agent.config (env overrides already applied by load())."""
        return cls.from_settings(cfg.gpu, getattr(cfg, "workload", None))

    @classmethod
    def from_settings(cls, g: Any, workload: Any = None) -> "Core":
        """From the `[gpu]` section (the health pass every `gpu.health_interval`, none when
        "off") and the `[workload]` one: the per-process pass every `workload.interval` while
        `workload.enabled`, none otherwise (no process-list call is made); without a
        `[workload]` section, at PROCESS_HZ."""
        from agent.config import health_interval_seconds, parse_duration

        health_s = health_interval_seconds(g.health_interval)
        if workload is None:
            process_hz = PROCESS_HZ
        else:
            process_hz = 1.0 / parse_duration(workload.interval) if workload.enabled else 0.0
        return cls(nvml_library=g.nvml_library, amdsmi_library=g.amdsmi_library or None,
                   hz=g.hz, slow_hz=g.slow_hz, slow_fields=g.slow_fields, ring_seconds=g.ring_seconds, nvidia=g.nvidia,
                   amd=g.amd, process_hz=process_hz, health_hz=1.0 / health_s if health_s else 0.0)

    # -- lifecycle --
    def start(self) -> "Core":
        with self._lock:
            _check(lib.egs_core_start(self._core), "egs_core_start")
            n = ffi.new("unsigned int *")
            _check(lib.egs_device_count(self._core, n), "egs_device_count")
            self._ndev = n[0]
            self._health = {}
            self._described = {}
        return self

    def stop(self) -> None:
        """Idempotent; device and backend descriptions stay readable afterwards."""
        with self._lock:
            _check(lib.egs_core_stop(self._core), "egs_core_stop")
        abandoned = self.sampler_stats()["abandoned_threads"]
        if abandoned:
            # A vendor call never returned (a GPU gone from the bus can do that): the core
            # left its thread behind rather than hang the daemon's shutdown; see egs_core.h.
            logging.getLogger("egs-agent").warning(
                "native core: %d thread(s) stuck in a vendor library call were abandoned at stop; "
                "the core cannot be restarted in this process", abandoned)

    def running(self) -> bool:
        return bool(lib.egs_core_running(self._core))

    def __enter__(self) -> "Core":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- descriptions --
    @property
    def backends(self) -> dict[str, Backend]:
        out = {}
        info = ffi.new("struct egs_backend_info *")
        sym = ffi.new("struct egs_symbol_info *")
        for name, bid in BACKENDS.items():
            _check(lib.egs_backend_get(self._core, bid, info), "egs_backend_get")
            symbols: dict[str, str | None] = {}
            for i in range(info.nsymbols):
                if lib.egs_backend_symbol(self._core, bid, i, sym) == lib.EGS_OK:
                    symbols[_text(sym.role)] = _text(sym.symbol) or None
            out[name] = Backend(name=name, state=_BACKEND_STATES[info.state], detail=_text(info.detail),
                                library=_text(info.library), driver_version=_text(info.driver_version),
                                symbols=symbols, devices=info.ndevices, status=info.status)
        return out

    def devices(self) -> list[Device]:
        """Every device as the core sees it now (the daemon asks every tick, for a device
        lost meanwhile). A device whose C description did not change since the last call is
        the same `Device` object: decoding its strings and tables was most of the cost."""
        out = []
        info = ffi.new("struct egs_device_info *")
        raw = ffi.buffer(info)
        for i in range(self._ndev):
            _check(lib.egs_device_get(self._core, i, info), "egs_device_get")
            key = bytes(raw)
            seen = self._described.get(i)
            if seen is not None and seen[0] == key:
                out.append(seen[1])
                continue
            out.append(Device(
                index=info.index, vendor=_VENDORS[info.backend], uuid=_text(info.uuid),
                name=_text(info.name), pci_bus_id=_text(info.pci_bus_id),
                state="lost" if info.state == lib.EGS_DSTATE_LOST else "ok",
                lost_reason=_text(info.lost_reason), unsupported=_unsupported_names(info.unsupported),
                vendor_index=info.vendor_index, paths=_paths(info.paths)))
            self._described[i] = (key, out[-1])
        return out

    # -- data --
    def drain(self) -> list[FieldStats]:
        """Everything accumulated since the previous drain, per (gpu, metric) with count > 0
        or errors > 0; a record of failed reads only has count 0 and None for its values."""
        cap = max(1, self._ndev * lib.EGS_NFIELDS)
        n = ffi.new("unsigned int *")
        buf = ffi.new("struct egs_stats[]", cap)
        _check(lib.egs_drain(self._core, buf, cap, n), "egs_drain")
        # One C-level unpack of the whole block; per-field cdata access costs ~10x more.
        rows = _STATS_LAYOUT.iter_unpack(ffi.buffer(buf, n[0] * _STATS_LAYOUT.size))
        out: list[FieldStats] = []
        used_total: dict[int, list] = {}
        for dev, f, count, total, lo, hi, last, first_ts, last_ts, errors in rows:
            if count == 0:
                if errors:  # every read failed: no values, but the failures must be seen
                    out.append(FieldStats(dev, FIELDS[f], 0, None, None, None, None, None, None, errors))
                continue
            out.append(FieldStats(dev, FIELDS[f], count, total / count, lo, hi, last, first_ts, last_ts, errors))
            if f == _USED or f == _TOTAL:
                used_total.setdefault(dev, [None, None])[f - _USED] = out[-1]
        for dev, (used, total) in used_total.items():
            if used is None or total is None or total.last <= 0:
                continue
            scale = 100.0 / total.last
            out.append(used._replace(metric=MEMORY_PERCENT, mean=used.mean * scale,
                                     min=used.min * scale, max=used.max * scale,
                                     last=used.last * scale))
        return out

    def ring(self, gpu: int, since: float | None = None) -> RingBlock:
        """Raw samples of one GPU newer than `since` (unix s), oldest first; None = not read."""
        cap = max(1, self.ring_len)
        ts = ffi.new("double[]", cap)
        vals = ffi.new("double[]", cap * lib.EGS_NFIELDS)
        n = ffi.new("unsigned int *")
        _check(lib.egs_ring_read(self._core, gpu, -math.inf if since is None else since,
                                 ts, vals, cap, n), f"egs_ring_read(gpu {gpu})")
        count = n[0]
        flat = ffi.unpack(vals, count * lib.EGS_NFIELDS)
        nf = lib.EGS_NFIELDS
        values: dict[str, list[float | None]] = {}
        for f, name in enumerate(FIELDS):
            values[name] = [_nan_to_none(v) for v in flat[f::nf]]
        used, total = values["gpu_memory_used_bytes"], values["gpu_memory_total_bytes"]
        values[MEMORY_PERCENT] = [u / t * 100.0 if u is not None and t else None
                                  for u, t in zip(used, total)]
        return RingBlock(gpu, ffi.unpack(ts, count), values)

    def events(self) -> list[CoreEvent]:
        """Events queued since the previous call, oldest first."""
        out: list[CoreEvent] = []
        buf = ffi.new("struct egs_event[]", 64)
        n = ffi.new("unsigned int *")
        while True:
            _check(lib.egs_events_read(self._core, buf, 64, n), "egs_events_read")
            for k in range(n[0]):
                e = buf[k]
                out.append(CoreEvent(_EVENT_KINDS.get(e.kind, str(e.kind)), e.device, e.code, e.ts,
                                     _text(e.detail)))
            if n[0] < 64:
                return out

    def processes(self, vendor: str | None = None) -> list[ProcessList]:
        """The latest process list of every GPU of the core (of one backend, "nvidia" or
        "amd", when `vendor` is given), as the sampler's last per-process pass left it."""
        out = []
        info = ffi.new("struct egs_device_info *")
        plist = ffi.new("struct egs_process_list *")
        n = ffi.new("unsigned int *")
        cap = 64
        buf = ffi.new("struct egs_process[]", cap)
        for i in range(self._ndev):
            _check(lib.egs_device_get(self._core, i, info), "egs_device_get")
            name = _VENDORS[info.backend]
            if vendor is not None and name != vendor:
                continue
            rc = lib.egs_processes_read(self._core, i, plist, buf, cap, n)
            while rc == lib.EGS_E_SIZE:
                cap = n[0] * 2
                buf = ffi.new("struct egs_process[]", cap)
                rc = lib.egs_processes_read(self._core, i, plist, buf, cap, n)
            _check(rc, "egs_processes_read")
            procs = tuple(CoreProcess(
                pid=p.pid, compute=bool(p.kinds & lib.EGS_PROC_COMPUTE), graphics=bool(p.kinds & lib.EGS_PROC_GRAPHICS),
                used_memory_bytes=_nan_to_none(p.used_memory), sm_percent=_nan_to_none(p.sm),
                mem_percent=_nan_to_none(p.mem), enc_percent=_nan_to_none(p.enc), dec_percent=_nan_to_none(p.dec),
                gfx_busy_ns=_nan_to_none(p.gfx_ns), enc_busy_ns=_nan_to_none(p.enc_ns))
                for p in (buf[k] for k in range(n[0])))
            out.append(ProcessList(gpu=info.index, vendor=name, uuid=_text(info.uuid),
                                   state=_PLIST_STATES.get(plist.state, str(plist.state)), ts=plist.ts,
                                   processes=procs, utilization=_PUTIL.get(plist.utilization, "none"),
                                   calls=plist.calls, status=plist.status, detail=_text(plist.detail)))
        return out

    def health(self) -> list[HealthReading]:
        """The latest health read of every GPU of the core that has had one (the same object
        again while no newer read was made: treat it as read-only)."""
        out = []
        info = ffi.new("struct egs_device_info *")
        h = ffi.new("struct egs_health *")
        for i in range(self._ndev):
            _check(lib.egs_device_get(self._core, i, info), "egs_device_get")
            _check(lib.egs_health_read(self._core, i, h), "egs_health_read")
            if h.ts == 0:
                continue
            known = self._health.get(info.index)
            if known is not None and known.ts == h.ts:
                out.append(known)
                continue
            migs = tuple(MigInstance(m.instance, _text(m.uuid), _nan_to_none(m.memory_used), _nan_to_none(m.memory_total),
                                     m.compute_instance, _nan_to_none(m.graphics_util), _nan_to_none(m.sm_util),
                                     _nan_to_none(m.sm_occupancy), _nan_to_none(m.dram_bw_util))
                         for m in (h.migs[k] for k in range(h.nmig)))
            vendor = _VENDORS[info.backend]
            partition = ({"compute": _text(h.compute_partition) or None, "memory": _text(h.memory_partition) or None}
                         if vendor == "amd" else None)
            reading = HealthReading(info.index, vendor, _text(info.uuid), h.ts,
                                    {name: _nan_to_none(h.values[k]) for k, name in enumerate(HEALTH)}, h.calls,
                                    None if h.mig < 0 else bool(h.mig), migs, partition)
            self._health[info.index] = reading
            out.append(reading)
        return out

    def sampler_stats(self) -> dict[str, float | int]:
        """The sampler's counters. `reads` (field values read) = `reads_fast` + `reads_slow`,
        `buffered_reads` of them samples out of driver buffers; `slow_ticks` of the `ticks`
        read the slow tier, one grid slot in `slow_every`; `idle_slots` are grid slots the
        sampler did not wake for, nothing being due on them (`achieved_hz` counts them as kept:
        (ticks + idle_slots) / elapsed_s). `library_calls` is the vendor
        calls the sampler made, and `library_calls_per_gpu_per_s` that over the GPUs it
        started with and the elapsed time."""
        s = ffi.new("struct egs_sampler_stats *")
        _check(lib.egs_sampler_get(self._core, s), "egs_sampler_get")
        per_gpu_s = (s.calls / self._ndev / s.elapsed_s) if self._ndev and s.elapsed_s > 0 else 0.0
        return {"ticks": s.ticks, "late_ticks": s.late_ticks, "idle_slots": s.idle_slots, "reads": s.reads,
                "reads_fast": s.reads_fast, "reads_slow": s.reads_slow, "slow_ticks": s.slow_ticks,
                "slow_every": s.slow_every, "target_slow_hz": self.hz / s.slow_every,
                "tick_late_p99_us": s.tick_late_p99_us, "thread_cpu_s": s.thread_cpu_s,
                "elapsed_s": s.elapsed_s, "achieved_hz": s.achieved_hz, "target_hz": self.hz,
                "read_s": s.read_s, "fold_s": s.fold_s, "fold_p50_us": s.fold_p50_us,
                "tick_work_p50_us": s.tick_work_p50_us,
                "events_dropped": s.events_dropped, "abandoned_threads": s.abandoned_threads,
                "library_calls": s.calls, "buffered_reads": s.buffered_reads,
                "library_calls_per_gpu_per_s": per_gpu_s, "process_passes": s.process_passes,
                "process_calls": s.process_calls, "process_s": s.process_s, "process_cpu_s": s.process_cpu_s,
                "health_passes": s.health_passes, "health_calls": s.health_calls}
