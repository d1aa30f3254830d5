"""What a scrape (or an OTLP export) sees: the daemon's live state as metric families.

Nothing is copied ahead of time: every call reads the windows (one lock hold for all the
series), the GPU source's per-GPU view and the figures the exporter component publishes
once a tick, and names them with `agent.exposition` (the one naming module). The rules
that make a value fit to expose are the same as `status --json`'s:

- a GPU metric comes from the GPU source's per-GPU status, so it is absent (no series)
  when the metric is unsupported, when the GPU is lost, or when it has had no sample for
  longer than its staleness bound; a lost GPU shows as `egs_gpu_lost 1` and
  `egs_gpu_health_state 3`, never as its last good values;
- any other series is absent once it has had no sample for `stale_s` (a NIC that went
  away, a source that stopped answering).

Threads: `families()` runs on the HTTP server's threads (or OTLP's export thread); it reads
only the locked windows, the GPU source's immutable per-collection snapshot and the dict
the component replaces whole every tick.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

from agent.exposition import series_labels, series_name
from agent.metrics import BY_NAME, GPU_METRICS, Metric, register

GPU_LABELS = ("gpu", "uuid", "vendor", "model")
_GPU_METRICS = frozenset(GPU_METRICS)

# The agent's own figures, beside the catalogue's (one name per meaning: OTLP and remote
# write name them the same way).
SAMPLER_RATE = register(Metric(
    "agent_sampler_rate_hertz", "hertz",
    "Ticks per second the native GPU sampler achieved since start (its target is gpu.hz).", scope="agent"))
SAMPLER_LATE = register(Metric(
    "agent_sampler_late_ticks_total", "ticks",
    "Sampler ticks that started late since the agent started.", kind="counter", scope="agent"))
WINDOW_SERIES = register(Metric(
    "agent_windows_series", "series", "Series the windows hold (metric and label set).", scope="agent"))
WINDOW_LATE = register(Metric(
    "agent_windows_late_samples_total", "samples",
    "Samples that arrived for a second already handed to the stream.", kind="counter", scope="agent"))
SOURCE_UP = register(Metric(
    "agent_source_up", "boolean", "1 while the source (label source) collects, 0 when it failed or is "
    "unavailable.", scope="agent"))
ALARM_ACTIVE = register(Metric(
    "alarm_active", "boolean", "1 for every rule and label set whose alarm is not ok; label state says "
    "which (pending, firing, ...), rule names the rule.", scope="agent"))


class Family(NamedTuple):
    """One exposed metric: its catalogue entry, exposed name and samples (labels, value)."""

    metric: Metric
    name: str
    samples: list[tuple[dict[str, str], float]]


@dataclass
class LiveState:
    """Where a scrape reads from: the daemon's, or a test's stand-ins."""

    windows: Any                                   # agent.windows.Windows
    gpu_status: Callable[[], list[dict]]           # the per-GPU list of status --json "gpus"
    clock: Callable[[], float]
    agent_labels: Callable[[], dict[str, str]] = dict
    own: Callable[[], dict[str, list]] | None = None  # metric -> [(labels, value)]; None: the published
    gpu_health: Callable[[], list[dict]] = list    # status --json "health"
    stale_s: float = 10.0
    host: str = ""
    _label_cache: dict = field(default_factory=dict, repr=False)
    _published: dict = field(default_factory=dict, repr=False)
    generation: int = 0

    @classmethod
    def from_context(cls, ctx: Any, stale_s: float) -> "LiveState":
        """The daemon's live state, as a component's `ctx` (agent.components.Context) gives it."""
        return cls(windows=ctx.windows, gpu_status=ctx.gpu_status, clock=ctx.clock,
                   agent_labels=lambda: ctx.labels, gpu_health=ctx.gpu_health, stale_s=stale_s,
                   host=ctx.host_id)

    def publish(self, ctx: Any) -> None:
        """Main loop only (a component's tick): gather the agent's own figures from what only
        the main loop may read, and replace the published dict whole. Each publish starts a
        new `generation`: the windows do not change again until the next tick's collection."""
        self._published = own_figures(ctx.windows.stats(), ctx.source_status(), ctx.status_of("stream"),
                                      ctx.status_of("alarms"))
        self.generation += 1

    def own_figures(self) -> dict[str, list]:
        return self.own() if self.own is not None else self._published

    def labels(self, point: dict[str, str], extra: dict[str, str], extra_key: tuple | None = None) -> dict[str, str]:
        """`agent.exposition.series_labels`, remembered per label set: the same few hundred
        label sets come back every scrape, as the same dict objects (never changed), which
        is what lets the encoder remember each series' rendered prefix."""
        key = (tuple(point.items()), tuple(extra.items()) if extra_key is None else extra_key)
        out = self._label_cache.get(key)
        return out if out is not None else self.remember(key, lambda: series_labels(point, extra))

    def remember(self, key: tuple, make: Callable[[], dict[str, str]]) -> dict[str, str]:
        """The label dict for `key`, made once."""
        out = self._label_cache.get(key)
        if out is None:
            if len(self._label_cache) > 10_000:  # label churn (NICs come and go): start over
                self._label_cache.clear()
            out = self._label_cache[key] = make()
        return out


def metric_of(name: str) -> Metric:
    """The catalogue entry of `name`; a metric someone forgot to register is still exposed,
    as an untyped gauge with a help line saying so."""
    found = BY_NAME.get(name)
    return found if found is not None else Metric(name, "", f"{name} (not in the catalogue).", scope="agent")


def gpu_labels(g: dict) -> dict[str, str]:
    return {"gpu": str(g["index"]), "uuid": g["uuid"], "vendor": g["vendor"], "model": g["name"]}


def families(state: LiveState, gpus: list[dict] | None = None) -> list[Family]:
    """Every metric of the live state with its egs_ name, sorted by name; `gpus` is
    `state.gpu_status()` when the caller has it already."""
    now = state.clock()
    extra = dict(state.agent_labels())
    extra_key = tuple(extra.items())
    by_metric: dict[str, list[tuple[dict[str, str], float]]] = {}
    labels_of, isfinite = state.labels, math.isfinite  # this loop runs for every series of every scrape

    for g in state.gpu_status() if gpus is None else gpus:
        labels = labels_of(gpu_labels(g), extra, extra_key)
        for metric, value in g["metrics"].items():
            if value is not None and isfinite(value):
                by_metric.setdefault(metric, []).append((labels, float(value)))
    readings = [(metric, labels, value) for metric, labels, value, ts in state.windows.latest_all()
                if metric not in _GPU_METRICS and now - ts <= state.stale_s]
    readings += [(metric, labels, value) for metric, samples in state.own_figures().items()
                 for labels, value in samples]
    for metric, labels, value in readings:
        if value is not None and isfinite(value):
            by_metric.setdefault(metric, []).append((labels_of(labels, extra, extra_key), float(value)))
    return [Family(metric_of(m), series_name(m), samples) for m, samples in sorted(by_metric.items())]


def own_figures(windows_stats: dict, sources: dict[str, dict], stream: dict | None,
                alarms: Iterable[dict] | None) -> dict[str, list]:
    """The agent's own figures, from what the main loop may read once a tick: the windows'
    counters, the sources' status (the GPU source's carries the sampler's), the outbox's
    `status()["metrics"]` and the alarms component's non-ok states."""
    out: dict[str, list] = {
        WINDOW_SERIES.name: [({}, windows_stats.get("series", 0))],
        WINDOW_LATE.name: [({}, windows_stats.get("late_samples", 0))],
        SOURCE_UP.name: [({"source": name}, 1.0 if s.get("state") == "ok" else 0.0)
                         for name, s in sorted(sources.items())],
    }
    sampler = (sources.get("gpu") or {}).get("sampler")
    if sampler:
        out[SAMPLER_RATE.name] = [({}, sampler.get("achieved_hz"))]
        out[SAMPLER_LATE.name] = [({}, sampler.get("late_ticks"))]
    for name, value in ((stream or {}).get("metrics") or {}).items():
        out[name] = [({}, value)]
    active = []
    for a in alarms or ():
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        active.append(({**labels, "rule": str(a.get("rule")), "state": str(a.get("state"))}, 1.0))
    out[ALARM_ACTIVE.name] = active
    return out
