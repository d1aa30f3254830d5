"""The interface every source implements, and what a source hands the daemon.

A source (the GPU core, the host) is read once per daemon tick. It returns `Sample`s: one
metric for one label set, summarising what it saw since its last collection (count, sum,
min, max, last). The daemon folds them into the windows. Keeping aggregates rather than
raw readings is what lets the GPU core sample at 1 kHz while Python still only touches
one record per (device, metric) per second.

A source that raises is marked failed with the error and the others carry on (the same
rule node_exporter applies to its collectors): `collect_safely` is that rule, in one place.

Sources are registered like the daemon's components: `agent.sources.SOURCES` lists
"module:function" factories, `build(cfg, ctx) -> Source | None` (None: switched off), built
and collected in that order; `ctx` (`SourceContext`) holds the sources built before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Sample(NamedTuple):
    """One metric for one label set over the last interval. `ts` is the interval's end.

    A NamedTuple (immutable, like the frozen dataclass it was) because a couple of hundred are
    made every tick, and a frozen dataclass costs several times more to construct."""

    metric: str
    labels: dict[str, str]
    count: int
    sum: float
    min: float
    max: float
    last: float
    ts: float

    @classmethod
    def reading(cls, metric: str, labels: dict[str, str], value: float, ts: float) -> "Sample":
        """A single reading (what the host source produces)."""
        value = float(value)
        return cls(metric, labels, 1, value, value, value, value, ts)


class SourceContext(NamedTuple):
    """What a source factory gets: the sources built before it, by name, and how to make the
    native core (the daemon's, or a test's stand-in)."""

    sources: dict[str, "Source"]
    core_factory: Any = None


@dataclass
class SourceStatus:
    state: str = "starting"  # starting | ok | failed | stopped | disabled
    last_error: str | None = None
    last_duration_s: float | None = None
    last_success: float | None = None  # unix seconds
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error,
                "last_duration_s": self.last_duration_s, "last_success": self.last_success,
                **self.detail}


class Source:
    """Base class: subclasses set `name` and implement `collect`; start/stop are optional.

    A source with something to tell besides samples (the GPU source's faults, the health
    source's changes) puts the `agent.events.Event`s of a collection in `tick_events`; the
    daemon emits them once every source was collected, and a source later in the order may
    read an earlier one's (the health source reads the GPU source's)."""

    name = "source"

    def __init__(self) -> None:
        self.status = SourceStatus()
        self.tick_events: list = []  # this collection's events (reset before each)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def collect(self, now: float) -> list[Sample]:
        raise NotImplementedError


def collect_safely(source: Source, now: float, log=None) -> list[Sample]:
    """Collect from one source; a failure is recorded on it and yields no samples.

    The state flips are logged once per change, not once per second, so a source that stays
    broken does not flood the journal.
    """
    started = time.perf_counter()
    before = source.status.state
    source.tick_events = []
    try:
        samples = source.collect(now)
    except Exception as e:  # a source's bug must not stop the daemon or the other sources
        source.status.state = "failed"
        source.status.last_error = f"{type(e).__name__}: {e}"
        source.status.last_duration_s = time.perf_counter() - started
        if log is not None and (before != "failed" or source.status.last_error != getattr(source, "_last_logged", None)):
            log.error("source %s failed: %s", source.name, source.status.last_error)
            source._last_logged = source.status.last_error
        return []
    source.status.last_duration_s = time.perf_counter() - started
    source.status.last_success = now
    if source.status.state in ("starting", "failed"):
        if before == "failed" and log is not None:
            log.info("source %s recovered", source.name)
        source.status.state = "ok"
        source._last_logged = None
    return samples
