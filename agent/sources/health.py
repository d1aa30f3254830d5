"""The health source: GPU health (ok, degraded, failed or lost), with the reasons and since when.

It reads what the GPU source collected this tick: the fault events (`Event(kind="gpu")`: XID
errors from NVML's event API, AMD SMI event notifications, devices that stopped answering)
and the device list. From them it keeps a health state per GPU, and yields like any source:
gauges for the windows (`gpu_lost`, `gpu_xid_critical`, `gpu_health_state`,
`gpu_xid_errors_total`, which the built-in alarm rules watch there like any metric) and
events (the GPU's fault events as they came, then an `Event(kind="health")` per change).

It also reads the GPU source's latest health signals (`SIGNALS`: row remap or page
retirement pending, remap failure, uncorrectable ECC, thermal or power-brake slowdown, AMD bad
pages at their threshold), each a
reason that holds while its condition does; `gpu_health_signal_failed` / `_degraded` are their
gauges.

Recovery (docs/alarms.md, "Health"): an XID is an event, not a state of the hardware, so its
effect on health lasts `hold` seconds after the latest occurrence and then lapses; the
gauge goes back to 0, the built-in rule resolves, and the XID stays in the GPU's history and
in `gpu_xid_errors_total`. A lost GPU stays lost until the core reports the device answering
again (after a reset or a driver reload).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agent.config import Key, Section, parse_duration
from agent.events import Event
from agent.metrics import Metric, register
from agent.sources.base import Sample, Source

log = logging.getLogger("egs-agent.health")

SECTIONS = [
    Section("health", "GPU health from XID errors and lost devices.", {
        "xid_hold": Key("15m", (str, int, float), "How long a critical XID keeps a GPU degraded/failed after its last occurrence "
                        "(a duration or seconds, 1s..1d).", duration=True, min=1, max=86400),
    }),
]

STATES = ("ok", "degraded", "failed", "lost")  # ascending gravity

# Health effect of the XIDs NVIDIA's catalogue tells operators to act on, from "XID Errors"
# (https://docs.nvidia.com/deploy/xid-errors/) and its resolution buckets: a reset or RMA
# (failed), or a GPU that works on with its memory or links impaired (degraded). Every other
# XID (13 graphics engine exception, 31 memory page fault, 43 stopped processing, ...) is
# usually the application's fault: reported as an event, health unchanged.
CRITICAL_XIDS: dict[int, tuple[str, str]] = {
    48: ("failed", "double-bit ECC error"),
    63: ("degraded", "ECC page retirement or row remapping recorded"),
    64: ("failed", "ECC page retirement or row remapping failed"),
    74: ("failed", "NVLink error"),
    79: ("failed", "GPU has fallen off the bus"),
    92: ("degraded", "high single-bit ECC error rate"),
    94: ("degraded", "contained ECC error"),
    95: ("failed", "uncontained ECC error"),
}
XID_NAMES: dict[int, str] = {
    13: "graphics engine exception", 31: "GPU memory page fault", 43: "GPU stopped processing",
    45: "preemptive cleanup", 61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt", 68: "video processor exception",
    119: "GSP RPC timeout", 120: "GSP error",
    **{code: name for code, (_, name) in CRITICAL_XIDS.items()},
}

# AMD SMI event notifications (amdsmi_evt_notification_type_t) that say something about the
# GPU's health; the others (process start/end, queue eviction, migration) are routine.
AMD_EVENTS: dict[int, tuple[str, str]] = {
    1: ("info", "VM fault"),
    2: ("degraded", "thermal throttling"),
    3: ("degraded", "GPU reset in progress"),
    4: ("recovered", "GPU reset completed"),
}
AMD_PRE_RESET, AMD_POST_RESET = 3, 4

GPU_LOST = register(Metric("gpu_lost", "boolean", "1 while the GPU does not answer its driver (lost), else 0."))
GPU_XID_CRITICAL = register(Metric(
    "gpu_xid_critical", "boolean",
    "1 from a critical XID until its hold period passes without another, else 0."))
GPU_HEALTH_STATE = register(Metric(
    "gpu_health_state", "state", "Health as a number: 0 ok, 1 degraded, 2 failed, 3 lost."))
GPU_XID_TOTAL = register(Metric("gpu_xid_errors_total", "errors", "XID errors seen since the agent started.",
                                kind="counter"))
GPU_SIGNAL_DEGRADED = register(Metric(
    "gpu_health_signal_degraded", "boolean",
    "1 while a health signal degrades the GPU (row remap or page retirement pending, thermal or power-brake "
    "slowdown), else 0."))
GPU_SIGNAL_FAILED = register(Metric(
    "gpu_health_signal_failed", "boolean",
    "1 while a health signal fails the GPU (row remap failure, uncorrectable ECC errors), else 0."))
METRICS = (GPU_LOST.name, GPU_XID_CRITICAL.name, GPU_HEALTH_STATE.name, GPU_XID_TOTAL.name,
           GPU_SIGNAL_DEGRADED.name, GPU_SIGNAL_FAILED.name)

# Clock-event reason bits (nvmlClocksEventReason*) that make a GPU degraded while they hold.
THERMAL_SLOWDOWN = 0x20 | 0x40     # software and hardware thermal slowdown
POWER_BRAKE_SLOWDOWN = 0x80        # hardware power brake (the board's external power signal)


def _flag(v: dict, name: str) -> bool:
    x = v.get(name)
    return x is not None and x >= 1


def _count(v: dict, name: str) -> float:
    x = v.get(name)
    return x if x is not None else 0.0


def _reasons(v: dict) -> int:
    x = v.get("clock_reasons")
    return int(x) if x is not None else 0


# The health signals' conditions, from NVIDIA's guidance ("GPU Memory Error Management": a
# pending row remap or page retirement needs a GPU reset; a remap failure or an uncorrectable
# error needs the GPU taken out of service; thermal and power-brake slowdowns cut the clocks
# while they hold): (name, effect, active(values), detail(values)). Each holds while its
# condition does, read again on every health read (agent.native.HEALTH_HZ).
SIGNALS: tuple[tuple[str, str, Callable[[dict], bool], Callable[[dict], str]], ...] = (
    ("row_remap_failure", "failed", lambda v: _flag(v, "row_remap_failure"),
     lambda v: "row remapping failed: the GPU needs service"),
    ("ecc_uncorrected", "failed", lambda v: _count(v, "ecc_uncorrected_volatile") > 0,
     lambda v: f"uncorrectable ECC errors: {int(_count(v, 'ecc_uncorrected_volatile'))} since the driver loaded"),
    ("row_remap_pending", "degraded", lambda v: _flag(v, "row_remap_pending"),
     lambda v: "row remapping pending: reset needed"),
    ("retired_pages_pending", "degraded", lambda v: _flag(v, "retired_pages_pending"),
     lambda v: "page retirement pending: reset needed"),
    ("thermal_slowdown", "degraded", lambda v: bool(_reasons(v) & THERMAL_SLOWDOWN),
     lambda v: "thermal slowdown: clocks held down (" + ("hardware" if _reasons(v) & 0x40 else "software") + ")"),
    ("power_brake_slowdown", "degraded", lambda v: bool(_reasons(v) & POWER_BRAKE_SLOWDOWN),
     lambda v: "power-brake slowdown: clocks held down by the board's power brake"),
    # AMD's RAS guidance: a GPU whose retired (bad) pages reach the driver's threshold is bad
    # and to be replaced. A threshold of 0 means the driver retires no pages (amdgpu's
    # bad_page_threshold=0): nothing to compare with.
    ("bad_page_threshold", "failed",
     lambda v: _count(v, "bad_page_threshold") > 0 and _count(v, "bad_pages") >= _count(v, "bad_page_threshold"),
     lambda v: f"bad pages at the threshold ({int(_count(v, 'bad_pages'))} of {int(_count(v, 'bad_page_threshold'))}):"
               " the GPU should be replaced"),
)


def classify_xid(code: int) -> tuple[str, str]:
    """(effect, name): effect is 'failed', 'degraded' or 'info'."""
    effect, name = CRITICAL_XIDS.get(code, ("info", XID_NAMES.get(code, "unlisted XID")))
    return effect, name


@dataclass
class Reason:
    kind: str  # "xid" | "amd" | "lost" | "signal"
    effect: str  # "degraded" | "failed" | "lost"
    detail: str
    since: float
    last_seen: float
    code: int | str | None = None   # the XID or AMD event code; the signal's name
    count: int = 1
    until: float | None = None  # when it lapses; None: until the device answers again

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "effect": self.effect, "code": self.code, "detail": self.detail,
                "since": self.since, "last_seen": self.last_seen, "count": self.count, "until": self.until}


@dataclass
class GpuHealth:
    gpu: int
    labels: dict[str, str]
    state: str = "ok"
    since: float = 0.0
    reasons: dict[tuple, Reason] = field(default_factory=dict)  # active, keyed (kind, code)
    xid_total: int = 0
    last_xid: dict[str, Any] | None = None

    def worst(self) -> str:
        return max((r.effect for r in self.reasons.values()), key=STATES.index, default="ok")

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "labels": dict(self.labels), "state": self.state, "since": self.since,
                "reasons": [r.to_dict() for r in self.reasons.values()], "xid_total": self.xid_total,
                "last_xid": self.last_xid}


class Health:
    """Per-GPU health from fault events. `observe(events, devices, now)` returns the health
    Events to emit; `samples(now)` the gauges."""

    def __init__(self, hold_s: float = 900.0, labels_of: Callable[[int], dict[str, str]] | None = None):
        self.hold_s = hold_s
        self._labels_of = labels_of or (lambda gpu: {"gpu": str(gpu)})
        self.gpus: dict[int, GpuHealth] = {}

    def _gpu(self, index: int, now: float) -> GpuHealth:
        g = self.gpus.get(index)
        if g is None:
            g = self.gpus[index] = GpuHealth(index, self._labels_of(index), since=now)
        return g

    def know(self, devices: Iterable[Any], now: float) -> None:
        """Register devices (`agent.native.Device`: index, uuid, vendor, name) so every GPU
        has a health state and gauges from the start, not only after its first fault."""
        for d in devices:
            # The same labels the GPU source gives its samples, so events and alarms match.
            self._gpu(d.index, now).labels = {
                "gpu": str(d.index), "uuid": d.uuid, "vendor": d.vendor, "model": d.name}

    def observe(self, events: Iterable[Event], devices: Iterable[Any] | None, now: float) -> list[Event]:
        """Fold GPU fault events (`Event(kind="gpu")`: `data.event` "xid" | "lost" | "amd",
        `data.gpu`, `data.code`, `data.detail`) and the devices' current states into health;
        lapse XIDs past their hold. Returns the health events to emit."""
        out: list[Event] = []
        devices = list(devices or ())
        self.know(devices, now)
        for ev in events:
            d = ev.data
            kind, gpu, code, detail = d["event"], int(d["gpu"]), int(d.get("code") or 0), d.get("detail") or ""
            g = self._gpu(gpu, now)
            ts = float(ev.ts or now)
            if kind == "xid":
                out += self._xid(g, code, ts, detail)
            elif kind == "lost":
                out += self._lost(g, ts, detail or "device stopped answering")
            elif kind == "amd" and code in AMD_EVENTS:
                out += self._amd(g, code, ts, detail)
            elif kind == "amd":
                # Routine notifications (process start/end, queue eviction, ...) or codes newer
                # than this table: no health effect, but not dropped unseen.
                log.info("GPU %d: AMD SMI event %d not known to affect health (%s); health unchanged",
                         gpu, code, detail or "no detail")
            else:
                log.warning("GPU %d: fault event of unknown kind %r (code %s) ignored by health", gpu, kind, code)
        for d in devices:
            g = self.gpus[d.index]
            lost = d.state == "lost"
            if lost and ("lost", None) not in g.reasons:
                out += self._lost(g, now, d.lost_reason or "device reported lost")
            elif not lost and ("lost", None) in g.reasons:
                del g.reasons[("lost", None)]
                out += self._settle(g, now, "device answers again")
        for g in self.gpus.values():
            lapsed = [k for k, r in g.reasons.items() if r.until is not None and r.until <= now]
            for k in lapsed:
                r = g.reasons.pop(k)
                out += self._settle(g, now, f"{r.detail} lapsed: none for {self.hold_s:g}s")
        return out

    def observe_signals(self, readings: Iterable[Any], now: float) -> list[Event]:
        """Fold the GPUs' latest health reads (`agent.native.HealthReading`: gpu, ts, values)
        into health: each of SIGNALS holds while its condition does. Returns the health
        events (one per signal that starts or ends)."""
        out: list[Event] = []
        for h in readings:
            g = self._gpu(h.gpu, now)
            ts = float(h.ts or now)
            for name, effect, active, detail in SIGNALS:
                key = ("signal", name)
                on = active(h.values)
                if on and key not in g.reasons:
                    text = detail(h.values)
                    g.reasons[key] = Reason("signal", effect, text, ts, ts, name)
                    out += self._restate(g, ts, {"kind": "signal", "code": name, "effect": effect, "detail": text})
                elif on:
                    g.reasons[key].last_seen = ts
                elif key in g.reasons:
                    r = g.reasons.pop(key)
                    out += self._settle(g, ts, f"{r.detail}: cleared")
        return out

    def _xid(self, g: GpuHealth, code: int, ts: float, detail: str) -> list[Event]:
        effect, name = classify_xid(code)
        g.xid_total += 1
        g.last_xid = {"code": code, "name": name, "effect": effect, "ts": ts, "detail": detail}
        cause = {"kind": "xid", "code": code, "name": name, "effect": effect, "detail": detail}
        if effect == "info":
            # Not a health change, but an operator looking into a GPU wants to see it.
            return [self._event(g, ts, g.state, cause)]
        self._hold_reason(g, "xid", code, effect, f"XID {code}: {name}", ts)
        return self._restate(g, ts, cause)

    def _amd(self, g: GpuHealth, code: int, ts: float, detail: str) -> list[Event]:
        effect, name = AMD_EVENTS[code]
        cause = {"kind": "amd", "code": code, "name": name, "effect": effect, "detail": detail}
        if effect == "recovered":
            g.reasons.pop(("amd", AMD_PRE_RESET), None)
        elif effect != "info":
            # Like an XID, it lapses after the hold unless repeated (or, for a reset, completed).
            self._hold_reason(g, "amd", code, effect, f"AMD event: {name}", ts)
        return self._restate(g, ts, cause)

    def _hold_reason(self, g: GpuHealth, kind: str, code: int, effect: str, detail: str, ts: float) -> None:
        """Add the reason, or refresh it: it lapses `hold_s` after its latest occurrence."""
        r = g.reasons.get((kind, code))
        if r is None:
            g.reasons[(kind, code)] = Reason(kind, effect, detail, ts, ts, code, 1, ts + self.hold_s)
        else:
            r.last_seen, r.count, r.until = ts, r.count + 1, ts + self.hold_s

    def _restate(self, g: GpuHealth, ts: float, cause: dict) -> list[Event]:
        """Recompute the GPU's state from its reasons; one event with the cause either way."""
        previous = g.state
        g.state = g.worst()
        if g.state != previous:
            g.since = ts
        return [self._event(g, ts, previous, cause)]

    def _lost(self, g: GpuHealth, ts: float, detail: str) -> list[Event]:
        g.reasons[("lost", None)] = Reason("lost", "lost", detail, ts, ts)
        previous = g.state
        g.state = g.worst()
        if g.state == previous:
            return []
        g.since = ts
        return [self._event(g, ts, previous, {"kind": "lost", "detail": detail})]

    def _settle(self, g: GpuHealth, now: float, why: str) -> list[Event]:
        previous = g.state
        g.state = g.worst()
        if g.state == previous:
            return []
        g.since = now
        return [self._event(g, now, previous, {"kind": "recovered", "detail": why})]

    def _event(self, g: GpuHealth, ts: float, previous: str, cause: dict[str, Any]) -> Event:
        return Event("health", ts, dict(g.labels), {
            "state": g.state, "previous": previous, "cause": cause,
            "reasons": [r.to_dict() for r in g.reasons.values()]})

    # --- the gauges ----------------------------------------------------------------------------
    def value(self, metric: str, g: GpuHealth) -> float:
        if metric == GPU_LOST.name:
            return 1.0 if ("lost", None) in g.reasons else 0.0
        if metric == GPU_XID_CRITICAL.name:
            return 1.0 if any(r.kind == "xid" for r in g.reasons.values()) else 0.0
        if metric == GPU_HEALTH_STATE.name:
            return float(STATES.index(g.state))
        if metric == GPU_XID_TOTAL.name:
            return float(g.xid_total)
        if metric in (GPU_SIGNAL_DEGRADED.name, GPU_SIGNAL_FAILED.name):
            effect = "degraded" if metric == GPU_SIGNAL_DEGRADED.name else "failed"
            return 1.0 if any(r.kind == "signal" and r.effect == effect for r in g.reasons.values()) else 0.0
        raise KeyError(metric)

    def samples(self, now: float) -> list[Sample]:
        """Every GPU's gauges as of `now`, one reading each."""
        return [Sample.reading(metric, g.labels, self.value(metric, g), now)
                for g in self.gpus.values() for metric in METRICS]

    def status(self) -> list[dict[str, Any]]:
        return [self.gpus[i].to_dict() for i in sorted(self.gpus)]


class HealthSource(Source):
    """Health as a source, read after the GPU source in the same tick (`SOURCES` order).

    `gpus()` is the per-GPU health as of the latest collection (`status --json` "health",
    `egs-agent alarms`): a list built once per collection and never changed afterwards, so
    any thread may read it."""

    name = "health"

    def __init__(self, gpu: Source, hold_s: float):
        super().__init__()
        self.gpu = gpu
        self.health = Health(hold_s=hold_s)
        self._gpus: list[dict[str, Any]] = []
        self._seen: dict[int, float] = {}    # gpu -> ts of the health read folded last

    def collect(self, now: float) -> list[Sample]:
        # The faults themselves are the GPU source's events (the daemon emits those first).
        self.tick_events = self.health.observe(self.gpu.tick_events, self.gpu.devices, now)
        # The GPU source's latest health reads (none with a stand-in GPU source).
        readings = getattr(self.gpu, "health_readings", {})
        fresh = [h for h in readings.values() if self._seen.get(h.gpu) != h.ts]
        for h in fresh:
            self._seen[h.gpu] = h.ts
        self.tick_events += self.health.observe_signals(fresh, now)
        self._gpus = self.health.status()
        return self.health.samples(now)

    def gpus(self) -> list[dict[str, Any]]:
        return self._gpus


def build(cfg, ctx) -> HealthSource | None:
    """The health source, over the GPU source (`agent.sources.SOURCES`)."""
    gpu = ctx.sources.get("gpu")
    if gpu is None:
        return None
    return HealthSource(gpu, parse_duration(cfg.health.xid_hold))
