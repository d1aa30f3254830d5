"""The `[workload]` configuration section: per-process and per-workload attribution
(docs/workloads.md), declared beside the code that uses it."""
from __future__ import annotations

from agent.config import Key, Section, _nonempty
from agent.workload import metrics as _metrics  # noqa: F401  (registers the per-workload metrics, so rules can name them)
from agent.workload.attribution import DEFAULT_TOP_N
from agent.workload.kubelet import DEFAULT_SOCKET

MAX_TOP_N = 100


SECTIONS = [
    Section("workload", "Which processes and workloads use each GPU (see docs/workloads.md).", {
        "enabled": Key(True, bool, "Run the attribution pass and report the per-workload metrics."),
        "interval": Key("5s", (str, int, float), "Time between attribution passes (1s..1h): the process "
                        "lists are costlier calls than the GPU's own figures.", duration=True, min=1, max=3600),
        "top_n": Key(DEFAULT_TOP_N, int, f"Processes per GPU kept as rows, by GPU memory (1..{MAX_TOP_N}); the "
                     "rest are summed as workload=\"other\". Bounds the series per GPU to top_n + 1.",
                     min=1, max=MAX_TOP_N),
        "procfs": Key("/proc", str, "procfs root the processes are read from (the host's /proc when the "
                      "agent runs in a container, e.g. /host/proc).", check=_nonempty),
        "drm_fdinfo": Key(True, bool, "Read DRM fdinfo for GPUs whose library gives no per-process figures."),
        "kubelet_socket": Key(DEFAULT_SOCKET, str, "The kubelet's pod-resources socket; empty: do not ask. "
                              "An absent socket is not an error."),
        "kubelet_refresh": Key("30s", (str, int, float), "How long the kubelet's answer is used before it is "
                               "asked again (1s..1h).", duration=True, min=1, max=3600),
    }),
]
