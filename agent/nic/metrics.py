"""The NIC tuning's metrics, added to the catalogue (agent/metrics.py) on import.

Labelled by `nic`; the help strings are their documentation.
"""
from __future__ import annotations

from agent.metrics import Metric, register

QUEUES_CURRENT = register(Metric(
    "nic_queues_current", "queues",
    "Queue pairs in use on the NIC: combined channels, or the smaller of rx and tx.", scope="nic"))
QUEUES_MAX = register(Metric(
    "nic_queues_max", "queues", "Most queue pairs the NIC offers (set on the cloud side).", scope="nic"))
QUEUES_REQUIRED = register(Metric(
    "nic_queues_required", "queues",
    "Queue pairs the instance type needs for its rated packets per second (absent: no requirement).",
    scope="nic"))
DRIFTS = register(Metric(
    "nic_queue_drifts_total", "drifts",
    "Times the NIC's channels, IRQ affinity or XPS left the tuned state after it held.",
    kind="counter", scope="nic"))


def values(row: dict) -> dict[str, float]:
    """metric name -> value for one interface row of a manager pass; unknowns are left out."""
    out: dict[str, float] = {}
    if row.get("queues") is not None:
        out[QUEUES_CURRENT.name] = float(row["queues"])
    if row.get("max_queues") is not None:
        out[QUEUES_MAX.name] = float(row["max_queues"])
    if row.get("required") is not None:
        out[QUEUES_REQUIRED.name] = float(row["required"])
    out[DRIFTS.name] = float(sum(row.get("drifts", {}).values()))
    return out
