"""The per-workload metrics, added to the catalogue (agent/metrics.py) on import.

One series per GPU and workload: labels `gpu`, `uuid`, `vendor`, `model` (the GPU's), and
`workload`, `workload_kind` (+ `namespace`, `pod`, `container` when the kubelet named them).
Per GPU there are at most `top_n` workloads (from its `top_n` processes by GPU memory) plus
`workload="other"` for the rest, and no label carries a PID (docs/workloads.md). A figure no
source gave (no per-process utilisation on this GPU) is left out, never 0. The help strings
are the metrics' documentation.
"""
from __future__ import annotations

from agent.metrics import Metric, register
from agent.sources.base import Sample
from agent.workload.attribution import Snapshot

MEMORY_USED = register(Metric(
    "gpu_workload_memory_used_bytes", "bytes",
    "GPU memory used by the workload's processes on this GPU (the GPU's top_n processes by memory; "
    "the rest summed as workload=\"other\").", scope="workload"))
SM_UTILIZATION = register(Metric(
    "gpu_workload_sm_utilization_percent", "percent",
    "Share of this GPU's SM (graphics/compute engine) time the workload's processes used over the "
    "driver's last sample period; absent where no source gives per-process utilisation.", scope="workload"))
PROCESSES = register(Metric(
    "gpu_workload_processes", "processes",
    "Processes of the workload using this GPU.", scope="workload"))


def samples(snapshot: Snapshot) -> list[Sample]:
    """The snapshot's series, one reading each at the snapshot's time."""
    out = []
    for g in snapshot.gpus:
        gpu_labels = g.gpu.labels()
        for w in g.workloads:
            labels = {**gpu_labels, **w.labels}
            out.append(Sample.reading(PROCESSES.name, labels, w.processes, snapshot.ts))
            if w.used_memory_bytes is not None:
                out.append(Sample.reading(MEMORY_USED.name, labels, w.used_memory_bytes, snapshot.ts))
            if w.sm_percent is not None:
                out.append(Sample.reading(SM_UTILIZATION.name, labels, w.sm_percent, snapshot.ts))
    return out
