"""The GPU source: the native core's per-second aggregates, as samples for the windows.

The core's C thread samples every field at `gpu.hz`; once a tick this source drains one
(count, mean, min, max, last, errors) record per (device, metric) and turns it into a `Sample`
labelled gpu/uuid/vendor/model. That is all Python ever does with GPU readings, so its cost
is the number of devices × fields, whatever the rate.

It also keeps what a reading can say besides its value: failed reads (counted per GPU and
metric, shown in `status --json` and as the `gpu_read_errors_total` counter), how long each
metric has gone without a sample (a metric past its staleness bound is shown as null and
named in `stale`, never as its last good value), and the core's fault events (XID, lost,
AMD events), drained every tick so the C queue never overflows and handed on as this tick's
`Event(kind="gpu")`s (`gpu_event`): the health source reads them, the daemon emits them.

The core's health pass (clock-event reasons, ECC, retired pages, remapped rows, power limit,
PCIe; MIG instances; AMD partition modes) comes out as readings at its own time when a new one
is there (`health_samples`, `mig_samples`, `partition_samples`); the latest per GPU stays in
`health_readings` for the health source and as `signals` / `mig` / `partition` in `gpu_status`.

Missing vendor libraries are not failures: the core reports those backends as
`unavailable` with the reason, and this source stays up with no devices. If the native
extension itself is not built, both backends are reported unavailable with that reason.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple, Protocol

from agent.events import Event
from agent.metrics import GPU_METRICS, Metric, register
from agent.sources.base import Sample, Source

log = logging.getLogger("egs-agent")

VENDORS = ("nvidia", "amd")

GPU_READ_ERRORS = register(Metric(
    "gpu_read_errors_total", "errors",
    "Reads of one GPU metric that failed (other than not supported) since the agent started; "
    "labelled gpu/uuid/vendor/model and metric.", kind="counter"))

# The shortest staleness bound: one late tick of the daemon or a slow drain must not blank
# a metric that is being read.
MIN_STALE_S = 10.0
# A metric is stale after this many of its sampling periods without a sample.
STALE_PERIODS = 3.0


def stale_bound(hz: float) -> float:
    """Seconds without a sample after which a metric read at `hz` is stale:
    max(MIN_STALE_S, STALE_PERIODS / hz), i.e. max(10 s, 3 / hz)."""
    return max(MIN_STALE_S, STALE_PERIODS / hz) if hz > 0 else MIN_STALE_S


class ReadState(NamedTuple):
    """What the latest collection knew about reads, handed whole to other threads (an
    immutable snapshot: `gpu_status` may run on a gRPC thread while the main loop collects)."""

    now: float                                   # the collection's time (the daemon's clock)
    last_seen: dict[tuple[int, str], float]      # (gpu, metric) -> collection time of its last sample
    watched_since: dict[int, float]              # gpu -> collection time it was first seen
    errors: dict[tuple[int, str], int]           # (gpu, metric) -> failed reads since start
    last_error: dict[tuple[int, str], str]       # (gpu, metric) -> the latest error text, if given


_NO_READS = ReadState(0.0, {}, {}, {}, {})


# NVML's clock-event reason bits (nvmlClocksEventReason*, from pynvml) -> the `reason` label of
# gpu_clock_event_active.
CLOCK_REASONS: dict[str, int] = {
    "gpu_idle": 0x1, "applications_clocks": 0x2, "sw_power_cap": 0x4, "hw_slowdown": 0x8, "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20, "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
    "display_clocks": 0x100,
}
# The reasons an AMD GPU's mask can hold (native/amdsmi.c am_read_throttle maps the kernel's
# ASIC-independent throttler bits to these two): only these get a series on AMD.
AMD_CLOCK_REASONS = ("sw_power_cap", "sw_thermal_slowdown")
# The core's health signals (agent.native.HEALTH) -> catalogue metric (agent.metrics, scope
# "gpu_health"); clock_reasons becomes one gpu_clock_event_active series per reason.
HEALTH_METRICS: dict[str, str] = {
    "ecc_corrected_volatile": "gpu_ecc_corrected_volatile_total",
    "ecc_uncorrected_volatile": "gpu_ecc_uncorrected_volatile_total",
    "ecc_corrected_aggregate": "gpu_ecc_corrected_aggregate_total",
    "ecc_uncorrected_aggregate": "gpu_ecc_uncorrected_aggregate_total",
    "retired_pages_sbe": "gpu_retired_pages_sbe", "retired_pages_dbe": "gpu_retired_pages_dbe",
    "retired_pages_pending": "gpu_retired_pages_pending",
    "remapped_rows_correctable": "gpu_remapped_rows_correctable",
    "remapped_rows_uncorrectable": "gpu_remapped_rows_uncorrectable",
    "row_remap_pending": "gpu_row_remap_pending", "row_remap_failure": "gpu_row_remap_failed",
    "power_limit_watts": "gpu_power_limit_watts",
    "pcie_tx_bytes_per_second": "gpu_pcie_tx_bytes_per_second",
    "pcie_rx_bytes_per_second": "gpu_pcie_rx_bytes_per_second",
    "pcie_replays": "gpu_pcie_replays_total",
    "nvlink_tx_bytes": "gpu_nvlink_tx_bytes_total", "nvlink_rx_bytes": "gpu_nvlink_rx_bytes_total",
    "bad_pages": "gpu_bad_pages", "bad_page_threshold": "gpu_bad_pages_threshold",
}
CLOCK_EVENT = "gpu_clock_event_active"


def health_samples(values: dict[str, float | None], labels: dict[str, str], ts: float,
                   reason_labels: dict[str, dict[str, str]] | None = None) -> list[Sample]:
    """One health read's samples: every signal the GPU gives (None: no sample), the clock-event
    mask as one 0/1 series per reason (on AMD only the reasons it can give, AMD_CLOCK_REASONS).
    `reason_labels` caches the per-reason label dicts."""
    out = [Sample.reading(metric, labels, float(values[name]), ts)
           for name, metric in HEALTH_METRICS.items() if values.get(name) is not None]
    mask = values.get("clock_reasons")
    if mask is not None:
        bits = int(mask)
        amd = labels.get("vendor") == "amd"
        for reason, bit in CLOCK_REASONS.items():
            if amd and reason not in AMD_CLOCK_REASONS:
                continue
            rl = reason_labels.get(reason) if reason_labels is not None else None
            if rl is None:
                rl = {**labels, "reason": reason}
                if reason_labels is not None:
                    reason_labels[reason] = rl
            out.append(Sample.reading(CLOCK_EVENT, rl, 1.0 if bits & bit else 0.0, ts))
    return out


# A MIG device's figures (`agent.native.MigInstance` attribute) -> the child-device series.
MIG_METRICS = {
    "memory_used_bytes": "gpu_mig_memory_used_bytes", "memory_total_bytes": "gpu_mig_memory_total_bytes",
    "graphics_util_percent": "gpu_mig_graphics_utilization_percent",
    "sm_util_percent": "gpu_mig_sm_utilization_percent", "sm_occupancy_percent": "gpu_mig_sm_occupancy_percent",
    "dram_bw_util_percent": "gpu_mig_dram_bandwidth_utilization_percent",
}


def mig_samples(instances: Any, labels: dict[str, str], ts: float) -> list[Sample]:
    """The MIG GPU instances of one GPU (`agent.native.MigInstance`) as child devices: memory
    used and total and the GPU instance's GPM utilisation (`MIG_METRICS`; a figure that is
    None has no sample), labelled with the parent's labels plus gpu_instance, compute_instance
    and mig_uuid."""
    out = []
    for m in instances:
        child = {**labels, "gpu_instance": str(m.instance), "compute_instance": str(m.compute_instance),
                 "mig_uuid": m.uuid}
        for attr, metric in MIG_METRICS.items():
            value = getattr(m, attr, None)
            if value is not None:
                out.append(Sample.reading(metric, child, float(value), ts))
    return out


def partition_samples(partition: dict[str, str | None] | None, labels: dict[str, str], ts: float) -> list[Sample]:
    """An AMD GPU's partition modes (`HealthReading.partition`) as the info gauge
    gpu_partition_info = 1 with labels compute_partition / memory_partition for the modes
    given; nothing when none is."""
    given = {f"{kind}_partition": mode for kind, mode in (partition or {}).items() if mode}
    return [Sample.reading("gpu_partition_info", {**labels, **given}, 1.0, ts)] if given else []


def gpu_event(event: Any, labels: dict[str, str] | None) -> Event:
    """The daemon's `Event(kind="gpu")` for one core event (`agent.native.CoreEvent`: kind
    "xid" | "lost" | "amd", gpu, code, ts, detail). The core's kind goes in `data.event`;
    `labels` are the GPU's sample labels (just `gpu` when the device is unknown)."""
    return Event("gpu", float(event.ts), dict(labels) if labels else {"gpu": str(event.gpu)},
                 {"event": event.kind, "gpu": int(event.gpu), "code": int(event.code),
                  "detail": event.detail or ""})


class GpuCore(Protocol):
    """What the GPU source needs of the native core (`agent.native.Core`; tests give it
    stand-ins with the same surface)."""

    backends: dict[str, Any]      # name -> agent.native.Backend
    fallback_hz: float            # the rate of devices read through the pyamdgpuinfo fallback
    slow_metrics: frozenset[str]  # the metrics read at gpu.slow_hz (gpu.slow_fields)

    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def devices(self) -> list: ...           # agent.native.Device
    def drain(self) -> list: ...             # agent.native.FieldStats
    def events(self) -> list: ...            # agent.native.CoreEvent
    def sampler_stats(self) -> dict: ...


def default_core_factory(settings: Any, workload: Any = None):
    """The core for `[gpu]` (`settings`) and `[workload]` (the per-process pass's period)."""
    # The native extension may be missing on a bare checkout: ImportError, which start reports.
    from agent.sources.amdgpuinfo import CoreWithFallback

    return CoreWithFallback.from_settings(settings, workload)


class GpuSource(Source):
    name = "gpu"

    def __init__(self, settings: Any, core_factory: Callable[[Any], GpuCore] | None = None):
        super().__init__()
        self.settings = settings
        self.core_factory = core_factory or default_core_factory
        self.core: GpuCore | None = None
        self._why_no_core: str | None = None
        self._devices: list = []
        self._labels: dict[int, dict[str, str]] = {}
        self._identity: list[tuple] = []
        self._device_states: list[tuple] = []
        self._backends: dict[str, dict] | None = None  # cached: rebuilt when a device state changes
        self._last_seen: dict[tuple[int, str], float] = {}
        self._watched_since: dict[int, float] = {}
        self._errors: dict[tuple[int, str], int] = {}
        self._last_error: dict[tuple[int, str], str] = {}
        self._error_labels: dict[tuple[int, str], dict[str, str]] = {}
        self._reads = _NO_READS
        self._slow: frozenset[str] = frozenset()
        self._fallback_hz: float | None = None
        self._health_ts: dict[int, float] = {}                 # gpu -> ts of the last health read taken
        self._reason_labels: dict[int, dict[str, dict[str, str]]] = {}
        self.health_readings: dict[int, Any] = {}             # gpu -> latest agent.native.HealthReading

    def start(self) -> None:
        if not self.settings.enabled:
            self.status.state = "disabled"
            self._why_no_core = "gpu.enabled = false"
            return
        try:
            core = self.core_factory(self.settings)
        except ImportError as e:
            self.status.state = "unavailable"
            self._why_no_core = f"native core not built ({e}); run `make native`"
            return
        core.start()
        self.core = core
        self._slow = frozenset(core.slow_metrics)
        self._fallback_hz = core.fallback_hz
        self._refresh_devices()
        self.status.state = "ok" if self._devices else "unavailable"

    def stop(self) -> None:
        if self.core is not None:
            self.core.stop()

    def _refresh_devices(self) -> None:
        devices = list(self.core.devices())
        # The label dicts stay the same objects while the devices' identities do (they are
        # shared with every sample and series of the GPU): rebuilt only when one changed.
        identity = [(d.index, d.uuid, d.vendor, d.name) for d in devices]
        if identity != self._identity:
            self._labels = {d.index: {"gpu": str(d.index), "uuid": d.uuid, "vendor": d.vendor, "model": d.name}
                            for d in devices}
            self._identity = identity
            self._error_labels = {}
            self._reason_labels = {}
        states = [(d.index, d.state) for d in devices]
        if states != self._device_states:
            # Backends are described once at start; a device lost or back is the only thing
            # that changes what they say (their device counts, a fallback's detail).
            self._device_states = states
            self._backends = None
        self._devices = devices

    @property
    def devices(self) -> list:
        """The devices as of the latest collection (their state, lost reason, unsupported fields)."""
        return self._devices

    def staleness_bound(self, metric: str, device: Any = None) -> float:
        """Seconds a metric may go without a sample before status shows it null and stale:
        `stale_bound(rate)` = max(10 s, 3 / rate), the rate being `gpu.slow_hz` for the slow tier
        (`Core.slow_metrics`, from `gpu.slow_fields`) and for fields the device reads from
        the driver's sample buffers (`Device.paths`), `gpu.hz` for the others, and the
        core's `fallback_hz` for devices read through the pyamdgpuinfo fallback."""
        if device is not None and device.source == "pyamdgpuinfo" and self._fallback_hz:
            return stale_bound(float(self._fallback_hz))
        # A field read from the driver's sample buffer is fetched on the slow tier's ticks.
        buffered = device is not None and getattr(device, "paths", {}).get(metric) == "buffer"
        hz = float(self.settings.slow_hz if metric in self._slow or buffered else self.settings.hz)
        return stale_bound(hz)

    def collect(self, now: float) -> list[Sample]:
        if self.core is None:
            return []
        # Events first: the queue in C is bounded, and nothing else reads it.
        faults = self.core.events()
        stats = self.core.drain()
        # Device states change (lost) between drains; re-read them, it is one short C call.
        self._refresh_devices()
        self.tick_events = [gpu_event(e, self._labels.get(e.gpu)) for e in faults]
        for d in self._devices:
            self._watched_since.setdefault(d.index, now)
        out = []
        errors_changed = False
        for s in stats:
            labels = self._labels.get(s.gpu)
            if labels is None:
                continue
            if s.errors:
                key = (s.gpu, s.metric)
                self._errors[key] = self._errors.get(key, 0) + int(s.errors)
                text = s.error
                if text:
                    self._last_error[key] = text
                errors_changed = True
            if s.count <= 0 or s.mean is None:
                continue
            self._last_seen[(s.gpu, s.metric)] = now
            out.append(Sample(s.metric, labels, int(s.count), float(s.mean) * s.count, float(s.min),
                              float(s.max), float(s.last), float(s.last_ts)))
        out += self._error_samples(now)
        out += self._health_samples()
        self._reads = ReadState(now, dict(self._last_seen), dict(self._watched_since),
                                dict(self._errors) if errors_changed else self._reads.errors,
                                dict(self._last_error) if errors_changed else self._reads.last_error)
        self.status.state = "ok" if self._devices else "unavailable"
        self.status.detail = {"devices": len(self._devices), "sampler": self.core.sampler_stats()}
        return out

    def _health_samples(self) -> list[Sample]:
        """The health reads the core made since the last collection, as readings at their own
        time (`health_readings` keeps the latest per GPU for the health source). A stand-in
        core without `health` gives none."""
        read = getattr(self.core, "health", None)
        if read is None:
            return []
        out = []
        for h in read():
            labels = self._labels.get(h.gpu)
            if labels is None or self._health_ts.get(h.gpu) == h.ts:
                continue
            self._health_ts[h.gpu] = h.ts
            self.health_readings[h.gpu] = h
            out += health_samples(h.values, labels, h.ts, self._reason_labels.setdefault(h.gpu, {}))
            out += mig_samples(getattr(h, "mig", ()), labels, h.ts)
            out += partition_samples(getattr(h, "partition", None), labels, h.ts)
        return out

    def signals(self, gpu: int) -> dict[str, float | None]:
        """The GPU's latest health read by catalogue metric (None where it gives none; the raw
        clock-event mask as `clock_reasons`); {} before the first read or once it is stale
        (`stale_bound(health_hz)`: 30 s at the default 0.1 Hz)."""
        h = self.health_readings.get(gpu)
        # A read older than its staleness bound (a sampler held up in a hung call) says nothing.
        if h is None or time.time() - h.ts > stale_bound(float(getattr(self.core, "health_hz", 0.0))):
            return {}
        out: dict[str, float | None] = {metric: h.values.get(name) for name, metric in HEALTH_METRICS.items()}
        out["clock_reasons"] = h.values.get("clock_reasons")
        return out

    def mig(self, gpu: int) -> list[dict] | None:
        """The GPU's MIG instances as of its latest health read (None: not in MIG mode, or
        not known)."""
        h = self.health_readings.get(gpu)
        if h is None or not getattr(h, "mig_mode", None):
            return None
        return [{"gpu_instance": m.instance, "compute_instance": m.compute_instance, "mig_uuid": m.uuid,
                 **{attr: getattr(m, attr, None) for attr in MIG_METRICS}} for m in h.mig]

    def partition(self, gpu: int) -> dict[str, str | None] | None:
        """The AMD GPU's partition modes as of its latest health read ({"compute": "SPX",
        "memory": "NPS1"}, None for a mode the device does not give); None on NVIDIA or before
        the first read."""
        h = self.health_readings.get(gpu)
        partition = getattr(h, "partition", None)
        return dict(partition) if partition is not None else None

    def _error_samples(self, now: float) -> list[Sample]:
        """`gpu_read_errors_total`, one series per (GPU, metric) that has failed at least once
        (a counter from the first failure, so GPUs that read cleanly add no series)."""
        out = []
        for key, total in self._errors.items():
            labels = self._error_labels.get(key)
            if labels is None:
                base = self._labels.get(key[0])
                if base is None:
                    continue
                labels = self._error_labels[key] = {**base, "metric": key[1]}
            out.append(Sample.reading(GPU_READ_ERRORS.name, labels, float(total), now))
        return out

    # --- for Status --------------------------------------------------------------------------
    def backend_status(self) -> dict[str, dict]:
        """Each backend's state; built from the core once, then again only after a device's
        state changed (the core's backends are fixed at start otherwise). Main loop only."""
        if self.core is None:
            detail = self._why_no_core or "not started"
            return {v: {"state": "unavailable", "detail": detail} for v in VENDORS}
        if self._backends is None:
            out = {}
            for name, b in self.core.backends.items():
                out[name] = {"state": b.state, "detail": b.detail, "library": b.library,
                             "driver_version": b.driver_version, "symbols": dict(b.symbols)}
            self._backends = out
        return {name: dict(entry) for name, entry in self._backends.items()}

    @property
    def labels(self) -> dict[int, dict[str, str]]:
        """Each device's labels, by index, matching `devices`."""
        return self._labels

    @property
    def reads(self) -> ReadState:
        """The read errors and sample times as of the latest collection (an immutable snapshot)."""
        return self._reads

    def gpu_status(self, windows, devices: list | None = None,
                   labels: dict[int, dict[str, str]] | None = None, reads: ReadState | None = None,
                   now: float | None = None) -> list[dict]:
        """Per-GPU status from `devices`, their `labels` and `reads` (default: the latest
        collection's) and the windows, as of `now` (default: the latest collection's time).

        A metric is null when unsupported, when the GPU is lost, or when it has had no sample
        for longer than its staleness bound (`staleness_bound`); the stale ones are also named
        in `stale`. `read_errors` counts failed reads per metric since start (only metrics
        that failed), `last_errors` the latest error text where the core gave one.
        Any thread may call it: it only reads Python objects and the (locked) windows."""
        out = []
        labels_of = self._labels if labels is None else labels
        reads = self._reads if reads is None else reads
        now = reads.now if now is None else now
        for d in self._devices if devices is None else devices:
            labels = labels_of[d.index]
            unsupported = d.unsupported
            lost = d.state != "ok"
            since = reads.watched_since.get(d.index)
            metrics: dict[str, float | None] = {}
            stale = []
            for m in GPU_METRICS:
                if m in unsupported or lost:
                    metrics[m] = None
                    continue
                seen = reads.last_seen.get((d.index, m), since)
                if seen is not None and now - seen > self.staleness_bound(m, d):
                    metrics[m] = None
                    stale.append(m)
                else:
                    metrics[m] = windows.latest(m, labels)
            read_errors = {m: n for (gpu, m), n in reads.errors.items() if gpu == d.index}
            last_errors = {m: t for (gpu, m), t in reads.last_error.items() if gpu == d.index}
            out.append({"index": d.index, "uuid": d.uuid, "vendor": d.vendor, "name": d.name,
                        "pci_bus_id": d.pci_bus_id, "state": d.state, "lost_reason": d.lost_reason,
                        "unsupported": sorted(unsupported), "metrics": metrics, "stale": stale,
                        "paths": dict(getattr(d, "paths", {})),
                        "signals": {} if lost else self.signals(d.index),
                        "mig": None if lost else self.mig(d.index),
                        "partition": None if lost else self.partition(d.index),
                        "read_errors": dict(sorted(read_errors.items())),
                        "last_errors": dict(sorted(last_errors.items()))})
        return out


def build(cfg, ctx) -> GpuSource:
    """The GPU source (`agent.sources.SOURCES`); with `gpu.enabled = false` it reports itself
    disabled rather than being absent, so `status` says why there are no GPUs."""
    workload = getattr(cfg, "workload", None)
    return GpuSource(cfg.gpu, core_factory=ctx.core_factory
                     or (lambda settings: default_core_factory(settings, workload)))
