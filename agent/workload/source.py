"""The attribution as a daemon source (agent.sources.base.Source): a pass every
`workload.interval`, its series as samples, its document for `status --json` (`workloads`).
Registered in `agent.sources.SOURCES` after the GPU source, whose devices it reads
(docs/workloads.md, "Wiring").
"""
from __future__ import annotations

import threading
from typing import Sequence

from agent.config import parse_duration
from agent.sources.base import Sample, Source
from agent.workload import metrics
from agent.workload.attribution import Attributor, Snapshot
from agent.workload.fdinfo import DrmFdinfoSource
from agent.workload.kubelet import PodResources
from agent.workload.records import GpuRef, ProcessSource
from agent.workload.vendor import covered_vendors, vendor_sources


def gpu_refs(devices) -> list[GpuRef]:
    """GpuRefs of the GPU source's devices (agent.native.Device) that are not lost."""
    return [GpuRef(d.index, d.uuid, d.pci_bus_id, d.vendor, d.name) for d in devices if d.state == "ok"]


class WorkloadSource(Source):
    name = "workload"

    def __init__(self, settings, gpu_source=None, vendor_sources: Sequence[ProcessSource] = (),
                 attributor: Attributor | None = None):
        super().__init__()
        self.settings = settings
        self.gpu_source = gpu_source
        self.interval = parse_duration(settings.interval)
        self.fdinfo: DrmFdinfoSource | None = None
        if attributor is None:
            sources = list(vendor_sources)
            if settings.drm_fdinfo:
                self.fdinfo = DrmFdinfoSource(settings.procfs)
                sources.append(self.fdinfo)
            kubelet = (PodResources(settings.kubelet_socket, refresh_s=parse_duration(settings.kubelet_refresh))
                       if settings.kubelet_socket else None)
            attributor = Attributor(sources, settings.procfs, settings.top_n, kubelet)
        self.attributor = attributor
        self._last_pass: float | None = None
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        if self.attributor.kubelet is not None:
            self.attributor.kubelet.close()

    def native_core(self):
        """The GPU source's core when it is the native one (it has process lists), else None."""
        core = getattr(self.gpu_source, "core", None)
        return core if hasattr(core, "processes") else None

    def listed_vendors(self) -> tuple[str, ...]:
        """Vendors whose process lists come from the core: the DRM fdinfo walk (which costs per
        open file on the host) leaves their GPUs alone."""
        core = self.native_core()
        return covered_vendors(core) if core is not None else ()

    def gpus(self) -> list[GpuRef]:
        return gpu_refs(self.gpu_source.devices) if self.gpu_source is not None else []

    def collect(self, now: float) -> list[Sample]:
        if self._last_pass is not None and now - self._last_pass < self.interval:
            return []
        self._last_pass = now
        if self.fdinfo is not None:
            self.fdinfo.skip_vendors = frozenset(self.listed_vendors())
        snapshot = self.attributor.run(self.gpus())
        with self._lock:
            self._snapshot = snapshot
        self.status.detail = {"sources": snapshot.sources, "pass_s": round(snapshot.duration_s, 6)}
        return metrics.samples(snapshot)

    def document(self) -> dict | None:
        """The latest pass as the `workloads` key of `status --json` (None before the first);
        any thread may call it."""
        with self._lock:
            return self._snapshot.to_dict() if self._snapshot is not None else None


def build(cfg, ctx) -> WorkloadSource | None:
    """The workload source, or None when `workload.enabled` is false. The vendor process lists
    (NVML, AMD SMI, read by the C core on its own period) go first, DRM fdinfo after them."""
    settings = cfg.workload
    if not settings.enabled:
        return None
    source: WorkloadSource | None = None

    def core():
        return source.native_core() if source is not None else None

    source = WorkloadSource(settings, ctx.sources.get("gpu"), vendor_sources=vendor_sources(core))
    return source
