"""The metric catalogue: every name the agent emits, its unit and help text.

Names are in base units with a unit suffix, `_total` for counters (Prometheus' rules); the help
strings are the metric documentation. GPU metrics carry the labels gpu, uuid, vendor,
model; per-NIC metrics carry nic. Other modules refer to metrics by these names only.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    help: str
    kind: str = "gauge"  # or "counter"
    scope: str = "gpu"  # gpu, host, nic, agent


GPU_LABELS = ("gpu", "uuid", "vendor", "model")

CATALOGUE: tuple[Metric, ...] = (
    Metric("gpu_utilization_percent", "percent", "Share of the last driver sample period the graphics/compute engine was busy."),
    Metric("gpu_memory_busy_percent", "percent", "Share of the last driver sample period the memory controller was busy."),
    Metric("gpu_memory_used_bytes", "bytes", "Framebuffer (VRAM) in use."),
    Metric("gpu_memory_total_bytes", "bytes", "Framebuffer (VRAM) size."),
    Metric("gpu_memory_used_percent", "percent", "Framebuffer in use as a share of its size (the slides' 'GPU memory usage')."),
    Metric("gpu_temperature_celsius", "celsius", "GPU core (NVIDIA) or edge (AMD) temperature."),
    Metric("gpu_power_watts", "watts", "Board power draw."),
    Metric("gpu_sm_clock_mhz", "MHz", "SM (NVIDIA) or graphics (AMD) clock."),
    Metric("gpu_memory_clock_mhz", "MHz", "Memory clock."),
    Metric("gpu_energy_joules_total", "joules", "Energy consumed since the driver was loaded.", kind="counter"),
    Metric("gpu_fan_speed_percent", "percent", "Fan speed as a share of its maximum."),
    # GPU health signals (scope "gpu_health"): read by the core's health pass on its own period
    # (agent.native.HEALTH_HZ) and handed on as readings by the GPU source, labelled like the
    # GPU metrics; a GPU that does not give one has no series (never 0).
    Metric("gpu_clock_event_active", "boolean", "1 while the driver holds the clocks down for the reason in label "
           "reason (gpu_idle, applications_clocks, sw_power_cap, hw_slowdown, sync_boost, sw_thermal_slowdown, "
           "hw_thermal_slowdown, hw_power_brake_slowdown, display_clocks), else 0.", scope="gpu_health"),
    Metric("gpu_ecc_corrected_volatile_total", "errors", "Corrected (single-bit) ECC errors since the driver loaded.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_ecc_uncorrected_volatile_total", "errors", "Uncorrected (double-bit) ECC errors since the driver loaded.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_ecc_corrected_aggregate_total", "errors", "Corrected ECC errors over the GPU's life.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_ecc_uncorrected_aggregate_total", "errors", "Uncorrected ECC errors over the GPU's life.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_retired_pages_sbe", "pages", "Framebuffer pages retired for multiple single-bit ECC errors "
           "(NVIDIA before Ampere).", scope="gpu_health"),
    Metric("gpu_retired_pages_dbe", "pages", "Framebuffer pages retired for a double-bit ECC error (NVIDIA before Ampere).",
           scope="gpu_health"),
    Metric("gpu_retired_pages_pending", "boolean", "1 while a page retirement waits for the next reset.",
           scope="gpu_health"),
    Metric("gpu_remapped_rows_correctable", "rows", "Memory rows remapped for correctable errors (NVIDIA Ampere on).",
           scope="gpu_health"),
    Metric("gpu_remapped_rows_uncorrectable", "rows", "Memory rows remapped for uncorrectable errors.",
           scope="gpu_health"),
    Metric("gpu_row_remap_pending", "boolean", "1 while a row remap waits for a GPU reset.", scope="gpu_health"),
    Metric("gpu_row_remap_failed", "boolean", "1 when a row remap failed (the GPU needs service).",
           scope="gpu_health"),
    Metric("gpu_power_limit_watts", "watts", "Enforced board power limit.", scope="gpu_health"),
    Metric("gpu_pcie_tx_bytes_per_second", "bytes/s", "PCIe bytes sent by the GPU per second (the driver's "
           "last sample).", scope="gpu_health"),
    Metric("gpu_pcie_rx_bytes_per_second", "bytes/s", "PCIe bytes received by the GPU per second.", scope="gpu_health"),
    Metric("gpu_pcie_replays_total", "replays", "PCIe replays (link-level retransmissions) since the driver loaded.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_nvlink_tx_bytes_total", "bytes", "Data bytes the GPU sent over NVLink, all links (NVML's "
           "NVLINK_THROUGHPUT_DATA_TX counter, kept in KiB by the driver); no series without NVLink.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_nvlink_rx_bytes_total", "bytes", "Data bytes the GPU received over NVLink, all links.",
           kind="counter", scope="gpu_health"),
    Metric("gpu_bad_pages", "pages", "Framebuffer pages the driver retired as bad (AMD).", scope="gpu_health"),
    Metric("gpu_bad_pages_threshold", "pages", "Bad pages at which the driver considers the GPU bad and it should "
           "be replaced (AMD; gpu_bad_pages reaching it fails the GPU's health).", scope="gpu_health"),
    # MIG devices as child devices (scope "gpu_mig"): the parent GPU's labels plus
    # gpu_instance (the GPU instance id), compute_instance and mig_uuid; read on the health pass.
    Metric("gpu_mig_memory_used_bytes", "bytes", "Framebuffer in use in one MIG GPU instance (labels gpu_instance, "
           "compute_instance, mig_uuid; gpu and uuid are the parent GPU's).", scope="gpu_mig"),
    Metric("gpu_mig_memory_total_bytes", "bytes", "Framebuffer of one MIG GPU instance.", scope="gpu_mig"),
    # Their GPU instance's utilisation from NVML's GPM (Hopper on): the mean since the previous
    # health pass; none on an instance's first pass or without GPM. Compute instances of one GPU
    # instance share its figures.
    Metric("gpu_mig_graphics_utilization_percent", "percent", "Share of the time any graphics or compute work was "
           "active on one MIG GPU instance since the previous health read (GPM GRAPHICS_UTIL).", scope="gpu_mig"),
    Metric("gpu_mig_sm_utilization_percent", "percent", "Share of the MIG GPU instance's SMs that were busy "
           "(GPM SM_UTIL).", scope="gpu_mig"),
    Metric("gpu_mig_sm_occupancy_percent", "percent", "Warps resident on the MIG GPU instance's SMs as a share of "
           "the most they can hold (GPM SM_OCCUPANCY).", scope="gpu_mig"),
    Metric("gpu_mig_dram_bandwidth_utilization_percent", "percent", "DRAM bandwidth the MIG GPU instance used as "
           "a share of the maximum (GPM DRAM_BW_UTIL).", scope="gpu_mig"),
    # AMD partition modes (scope "gpu_partition"): 1, labelled with the GPU's labels plus
    # compute_partition and memory_partition (each only where the device gives it); health pass.
    Metric("gpu_partition_info", "", "AMD GPU partition modes: always 1, labels compute_partition (SPX, DPX, TPX, "
           "QPX, CPX) and memory_partition (NPS1, NPS2, NPS4, NPS8) where the device gives them.",
           scope="gpu_partition"),
    Metric("cpu_utilization_percent", "percent", "Host CPU busy time, all cores (label cpu for one core).", scope="host"),
    Metric("memory_used_percent", "percent", "Host memory in use (total minus available) as a share of the total.", scope="host"),
    Metric("net_rx_bytes_per_second", "bytes/s", "Bytes received per second.", scope="nic"),
    Metric("net_tx_bytes_per_second", "bytes/s", "Bytes sent per second.", scope="nic"),
    Metric("net_rx_packets_per_second", "packets/s", "Packets received per second.", scope="nic"),
    Metric("net_tx_packets_per_second", "packets/s", "Packets sent per second.", scope="nic"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
GPU_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOGUE if m.scope == "gpu")


def register(metric: Metric) -> Metric:
    """Add a metric declared elsewhere (load averages, NIC queue counts, spool drops...)."""
    existing = BY_NAME.get(metric.name)
    if existing is not None and existing != metric:
        raise ValueError(f"metric {metric.name} declared twice with different meanings")
    BY_NAME[metric.name] = metric
    return metric


def agent_metrics() -> list[str]:
    """What an agent reports (the collector's own figures, scope "collector", are not)."""
    return sorted(name for name, m in BY_NAME.items() if m.scope != "collector")


def unknown_hint(name: str, known) -> str:
    """For an error about an unknown metric: the closest known names, bounded (the catalogue
    has ~80 names; a message listing them all is too long to read)."""
    import difflib  # only for this message: not loaded by a daemon that never makes it

    known = sorted(known)
    name = str(name)[:200]
    close = [k for k in known if name and name in k][:5]  # "gpu_temp" -> gpu_temperature_celsius
    close += [k for k in difflib.get_close_matches(name, known, n=5, cutoff=0.5) if k not in close][:5 - len(close)]
    if close:
        return f"did you mean {', '.join(close)}? ({len(known)} metrics are known; docs/exposition.md)"
    return f"{len(known)} metrics are known, e.g. {', '.join(known[:6])}; docs/exposition.md"
