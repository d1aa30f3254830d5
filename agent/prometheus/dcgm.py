"""dcgm-exporter's names, labels and units for what the agent measures (`dcgm_names = true`).

Dashboards built on dcgm-exporter (NVIDIA's Grafana dashboard 12239 and thousands derived
from it) query its names; serving them from the agent's own readings makes those dashboards
work unchanged on NVIDIA and AMD hosts alike. Checked against dcgm-exporter's
`etc/default-counters.csv` (field, Prometheus type, unit in the help text) and
`internal/pkg/rendermetrics/render_metrics.go` (the label set of a GPU metric: `gpu`,
`UUID`, `pci_bus_id`, `device` = "nvidia<index>", `modelName`, `Hostname`), and
`internal/pkg/collector/gpu_collector.go` (XID errors also carry `err_code` and `err_msg`;
integer fields are printed as integers, the power draw as a float). The table with every
row and its conversion is in docs/prometheus.md.

Deviations, on purpose: `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` is declared `untyped`
rather than `counter`, because a counter's samples must end in `_total` in OpenMetrics
(which prometheus-client enforces) and dashboards query the bare name; the value is the
same monotonic millijoule count. `device` is "amd<index>" for AMD GPUs, which
dcgm-exporter never sees.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from agent.exposition import label_name

MIB = float(1 << 20)


class Field(NamedTuple):
    name: str                 # dcgm-exporter's metric name
    kind: str                 # the type we declare (prometheus-client's: gauge, unknown)
    help: str
    source: str               # catalogue metric it is computed from ("" for the XID code)
    convert: Callable[[dict], float | None]  # from the GPU's metrics (catalogue units) to DCGM's
    integer: bool = True      # dcgm-exporter prints DCGM_FT_INT64 fields as integers


def _scaled(metric: str, factor: float, integer: bool = True) -> Callable[[dict], float | None]:
    def convert(metrics: dict) -> float | None:
        value = metrics.get(metric)
        if value is None:
            return None
        value *= factor
        return float(math.floor(value + 0.5)) if integer else value
    return convert


def _fb_free(metrics: dict) -> float | None:
    used, total = metrics.get("gpu_memory_used_bytes"), metrics.get("gpu_memory_total_bytes")
    if used is None or total is None:
        return None
    return float(math.floor(max(0.0, total - used) / MIB))


def _fb_used(metrics: dict) -> float | None:
    used = metrics.get("gpu_memory_used_bytes")
    return None if used is None else float(math.floor(used / MIB))


FIELDS: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM (NVIDIA) or graphics (AMD) clock, MHz.",
          "gpu_sm_clock_mhz", _scaled("gpu_sm_clock_mhz", 1)),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock, MHz.", "gpu_memory_clock_mhz",
          _scaled("gpu_memory_clock_mhz", 1)),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU core (NVIDIA) or edge (AMD) temperature, degrees C.",
          "gpu_temperature_celsius", _scaled("gpu_temperature_celsius", 1)),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Board power draw, W.", "gpu_power_watts",
          _scaled("gpu_power_watts", 1, integer=False), integer=False),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "unknown",
          "Energy consumed since the driver was loaded, mJ (monotonic; untyped here, a counter in dcgm-exporter).",
          "gpu_energy_joules_total", _scaled("gpu_energy_joules_total", 1000)),
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization, %.", "gpu_utilization_percent",
          _scaled("gpu_utilization_percent", 1)),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory (controller) utilization, %.", "gpu_memory_busy_percent",
          _scaled("gpu_memory_busy_percent", 1)),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free, MiB.", "gpu_memory_total_bytes", _fb_free),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used, MiB.", "gpu_memory_used_bytes", _fb_used),
)
# The health signals (agent.metrics scope "gpu_health"), from status --json's per-GPU "signals"
# (the latest health read); names and units as DCGM's field list has them. Counters are
# declared `unknown` like the energy count, for the same reason.
FIELDS += (
    Field("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Clock-event (throttle) reasons, NVML's bit mask.",
          "gpu_clock_event_active", _scaled("clock_reasons", 1)),
    Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "unknown", "Single-bit volatile ECC errors.",
          "gpu_ecc_corrected_volatile_total", _scaled("gpu_ecc_corrected_volatile_total", 1)),
    Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "unknown", "Double-bit volatile ECC errors.",
          "gpu_ecc_uncorrected_volatile_total", _scaled("gpu_ecc_uncorrected_volatile_total", 1)),
    Field("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "unknown", "Single-bit persistent ECC errors.",
          "gpu_ecc_corrected_aggregate_total", _scaled("gpu_ecc_corrected_aggregate_total", 1)),
    Field("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "unknown", "Double-bit persistent ECC errors.",
          "gpu_ecc_uncorrected_aggregate_total", _scaled("gpu_ecc_uncorrected_aggregate_total", 1)),
    Field("DCGM_FI_DEV_RETIRED_SBE", "gauge", "Total number of retired pages due to single-bit errors.",
          "gpu_retired_pages_sbe", _scaled("gpu_retired_pages_sbe", 1)),
    Field("DCGM_FI_DEV_RETIRED_DBE", "gauge", "Total number of retired pages due to double-bit errors.",
          "gpu_retired_pages_dbe", _scaled("gpu_retired_pages_dbe", 1)),
    Field("DCGM_FI_DEV_RETIRED_PENDING", "gauge", "Number of pages pending retirement.",
          "gpu_retired_pages_pending", _scaled("gpu_retired_pages_pending", 1)),
    Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "gauge", "Number of remapped rows for correctable errors.",
          "gpu_remapped_rows_correctable", _scaled("gpu_remapped_rows_correctable", 1)),
    Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "gauge", "Number of remapped rows for uncorrectable errors.",
          "gpu_remapped_rows_uncorrectable", _scaled("gpu_remapped_rows_uncorrectable", 1)),
    Field("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether a row remap is pending (1) or not (0).",
          "gpu_row_remap_pending", _scaled("gpu_row_remap_pending", 1)),
    Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed (1) or not (0).",
          "gpu_row_remap_failed", _scaled("gpu_row_remap_failed", 1)),
    Field("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge", "Enforced power limit, W.", "gpu_power_limit_watts",
          _scaled("gpu_power_limit_watts", 1, integer=False), integer=False),
    Field("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "gauge", "PCIe TX throughput, KB/s.", "gpu_pcie_tx_bytes_per_second",
          _scaled("gpu_pcie_tx_bytes_per_second", 1e-3)),
    Field("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "gauge", "PCIe RX throughput, KB/s.", "gpu_pcie_rx_bytes_per_second",
          _scaled("gpu_pcie_rx_bytes_per_second", 1e-3)),
    Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "unknown", "Total number of PCIe retries.", "gpu_pcie_replays_total",
          _scaled("gpu_pcie_replays_total", 1)),
)
XID = Field("DCGM_FI_DEV_XID_ERRORS", "gauge", "Code of the last XID error seen (0: none since the agent started).",
            "", lambda metrics: None)


def dcgm_labels(g: dict, hostname: str, extra: dict[str, str]) -> dict[str, str]:
    """dcgm-exporter's label set for GPU `g` (an entry of status --json "gpus"), then the
    agent's labels (as dcgm-exporter appends its label fields)."""
    vendor = "nvidia" if g["vendor"] == "nvidia" else str(g["vendor"])
    labels = {"gpu": str(g["index"]), "UUID": g["uuid"], "pci_bus_id": g.get("pci_bus_id") or "",
              "device": f"{vendor}{g['index']}", "modelName": g["name"]}
    if hostname:
        labels["Hostname"] = hostname
    for key, value in extra.items():
        labels.setdefault(label_name(key), value)
    return labels


def _remember(key: tuple, make):
    return make()


def dcgm_families(gpus: list[dict], health: list[dict], hostname: str, extra: dict[str, str],
                  remember=_remember) -> list[tuple[Field, list[tuple[dict[str, str], float]]]]:
    """(field, samples) for every DCGM field with at least one value. A lost GPU, or a metric
    it does not support or that went stale, has no sample (status --json shows it null).
    `remember(key, make)` may hand back the label dict made for the same key before
    (`LiveState.remember`)."""
    out = []
    extra_key = tuple(extra.items())
    keys = {g["index"]: ("dcgm", g["index"], g["uuid"], g.get("pci_bus_id"), g["vendor"], g["name"], hostname,
                         extra_key) for g in gpus}
    labels_of = {g["index"]: remember(keys[g["index"]], lambda g=g: dcgm_labels(g, hostname, extra)) for g in gpus}
    # The GPU's metrics and its latest health signals (status --json "signals"), by name.
    figures = {g["index"]: {**g["metrics"], **g["signals"]} if g.get("signals") else g["metrics"] for g in gpus}
    for f in FIELDS:
        samples = []
        for g in gpus:
            value = f.convert(figures[g["index"]])
            if value is not None and math.isfinite(value):
                samples.append((labels_of[g["index"]], value))
        if samples:
            out.append((f, samples))
    xid = []
    last = {h["gpu"]: h.get("last_xid") for h in health}
    for g in gpus:
        code = (last.get(g["index"]) or {}).get("code") or 0
        name = (last.get(g["index"]) or {}).get("name") or "none"
        base = labels_of[g["index"]]
        labels = remember(keys[g["index"]] + (code, name), lambda: {**base, "err_code": str(code), "err_msg": name})
        xid.append((labels, float(code)))
    if xid:
        out.append((XID, xid))
    return out
