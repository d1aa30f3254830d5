"""One name per meaning wherever data leaves the agent or the collector (docs/exposition.md).

The agent's `/metrics`, the collector's remote write and OTLP all name a metric the same way:
the catalogue name (`agent.metrics`, already in base units with `_total` for counters) in the
`egs_` namespace, e.g. `gpu_temperature_celsius` -> `egs_gpu_temperature_celsius`. Labels are
the point's own (`gpu`, `uuid`, `vendor`, `model`, `nic`, ...) and the agent's configured
labels; off the node `host` names the agent's host id.

A label name from a config or a batch that Prometheus would refuse is made valid the way
Prometheus' own relabelling does it (every other character -> `_`, a leading digit gets `_`
in front), and an agent label that collides with a label the exposition sets itself (`host`,
or one of the point's) is kept as `exported_<name>`, as a scrape with honor_labels = false
does. These two functions are the only place that decides a series' name and labels.
"""
from __future__ import annotations

import re

NAMESPACE = "egs"
HOST_LABEL = "host"

# The companions of a metric in a store that keeps the agent's per-interval aggregate (remote
# write): the metric's own name carries the interval's last value, which is what a scrape
# of the agent would have seen; these carry the rest of the aggregate, per interval, not
# cumulative (docs/exposition.md, "Aggregates").
AGGREGATE_SUFFIXES = {"min": "_min", "max": "_max", "sum": "_sum", "count": "_count"}

_NAME_OK = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_OK = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_BAD_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def series_name(metric: str) -> str:
    """The exposed name of catalogue metric `metric`."""
    name = f"{NAMESPACE}_{metric}"
    if not _NAME_OK.fullmatch(name):
        name = NAMESPACE + "_" + _LABEL_BAD_CHAR.sub("_", metric)
    return name


def label_name(key: str) -> str:
    """`key` as a valid Prometheus label name (reserved `__` names get one more `_`-free prefix)."""
    if _LABEL_OK.fullmatch(key) and not key.startswith("__"):
        return key
    name = _LABEL_BAD_CHAR.sub("_", key) or "_"
    if name[0].isdigit():
        name = "_" + name
    if name.startswith("__"):
        name = "x" + name  # `__` names are Prometheus' own (__name__, __address__, ...)
    return name


def series_labels(point_labels: dict[str, str], agent_labels: dict[str, str] | None = None,
                  host: str | None = None) -> dict[str, str]:
    """The labels of one exposed series: the point's, the agent's configured ones, and
    `host` off the node. The point's and `host` win a collision; the agent label that lost
    is kept as `exported_<name>`."""
    out = {label_name(k): v for k, v in point_labels.items()}
    if host is not None:
        out[HOST_LABEL] = host
    for key, value in (agent_labels or {}).items():
        name = label_name(key)
        if name in out and out[name] != value:
            name = "exported_" + name
        out.setdefault(name, value)
    return out
