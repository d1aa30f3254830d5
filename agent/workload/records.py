"""What the per-process sources hand the attribution pass, and the interface they implement.

A source (`ProcessSource`) answers, for the GPUs the daemon knows (`GpuRef`), which processes
use them and how much (`GpuProcess`). Three kinds feed it:

- the vendor libraries through the C core: NVML's compute and graphics process lists with
  used memory and per-process SM / memory / encoder / decoder utilisation, AMD SMI's process
  list (source names "nvml" and "amdsmi");
- the kernel's DRM fdinfo (`agent.workload.fdinfo`, source "drm-fdinfo") where the vendor
  library gives nothing per process (AMD without AMD SMI, Intel).

A figure a source does not have is None, never 0: a process NVML lists without a
utilisation sample has `sm_percent=None`, and the metrics leave it out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

SOURCE_NAMES = ("nvml", "amdsmi", "drm-fdinfo")


@dataclass(frozen=True)
class GpuRef:
    """A GPU as the daemon knows it. `pci_bus_id` is how DRM fdinfo's `drm-pdev` is matched
    (any case, with or without the 8-digit NVML domain: see `normalise_bus_id`)."""

    index: int
    uuid: str
    pci_bus_id: str = ""
    vendor: str = ""
    model: str = ""

    def labels(self) -> dict[str, str]:
        """The GPU's series labels, as the GPU source gives them (agent.metrics.GPU_LABELS)."""
        return {"gpu": str(self.index), "uuid": self.uuid, "vendor": self.vendor, "model": self.model}


@dataclass(frozen=True)
class GpuProcess:
    """One process on one GPU, as one source saw it in one pass."""

    gpu_index: int
    gpu_uuid: str
    pid: int                               # in the PID namespace of the procfs the agent reads
    source: str                            # one of SOURCE_NAMES
    used_memory_bytes: int | None = None
    sm_percent: float | None = None        # share of the GPU's SM / graphics engine time
    mem_percent: float | None = None       # share of the memory controller's time
    enc_percent: float | None = None
    dec_percent: float | None = None
    kind: str | None = None                # NVML: "compute" | "graphics" | "compute+graphics"


class ProcessSourceError(Exception):
    """A source could not answer this pass (library error, procfs unreadable). The pass carries
    on with the other sources and reports this text as the source's detail."""


class ProcessSource(Protocol):
    """The interface of a per-process source. `processes` is called once per attribution pass,
    from the daemon's thread; it may keep state between calls (utilisation from counter
    differences) but must bound it by the processes it saw last."""

    name: str

    def processes(self, gpus: Sequence[GpuRef]) -> list[GpuProcess]: ...


def normalise_bus_id(bus_id: str) -> str:
    """A PCI address as `dddd:bb:dd.f`, lower case. NVML writes `00000000:3B:00.0` (8-digit
    domain, upper case), the kernel `0000:3b:00.0`; both name the same device."""
    text = bus_id.strip().lower()
    domain, sep, rest = text.partition(":")
    if not sep or ":" not in rest:
        return text
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return text
