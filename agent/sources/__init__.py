"""Sources of figures: one module per source behind `agent.sources.base.Source`.

`SOURCES` is the registry the daemon builds them from, in order: a source may read what one
before it collected in the same tick (health reads the GPU source's devices and faults).
"""

SOURCES: tuple[str, ...] = (
    "agent.sources.gpu:build",
    "agent.sources.host:build",
    "agent.workload.source:build",   # reads the GPU source's devices (docs/workloads.md)
    "agent.sources.health:build",
)
