"""The component contract: how features plug into the daemon, and how the daemon keeps them.

A component is a feature the daemon runs beside its sources (alarms, the flight recorder,
NIC tuning, the stream to the collector). It is registered as a "module:function" string in
`agent.daemon.COMPONENTS`; the function is `build(cfg, ctx) -> Component | list | None` (None:
switched off; a list: components built together, each in its own slot). `Component` below is
the contract, `Context` what a component gets, `Slot` how the daemon runs one: a component
that raises in any call is marked failed, logged once, and retried with a backoff.

Every call comes from the daemon's main loop (events emitted from other threads are queued
and delivered there), so a component needs no locking against the daemon.
"""
from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from agent.events import Event
from agent.windows import Windows

log = logging.getLogger("egs-agent")


@runtime_checkable
class Component(Protocol):
    """What every component has. Optional methods, looked up by name when the daemon needs
    them: `grpc_services() -> list[callable(server)]` (its own services on the local API),
    `on_event(event)` (every Event the daemon emits), `on_buckets(buckets)` (each closed
    1-second bucket set, each bucket handed out once), `reload(cfg)` (SIGHUP with a valid
    file; without it the component keeps its settings until restart)."""

    name: str  # its key in `status --json`

    def start(self) -> None: ...

    def stop(self) -> None:
        """Idempotent and bounded in time."""

    def tick(self, now: float) -> None:
        """About once a second, after the sources were collected into the windows; returns
        quickly (long work belongs on the component's own thread)."""

    def status(self) -> Any:
        """JSON-ready; shown under the component's name in `status --json`."""


OPTIONAL_METHODS = ("grpc_services", "on_event", "on_buckets", "reload")


@dataclass
class Context:
    """What a component gets from the daemon."""

    windows: Windows
    core: Any  # agent.native.Core, or None when GPUs are off or the core is not built
    emit: Callable[[Event], None]
    state_dir: Path
    clock: Callable[[], float]
    host_id: str
    labels: dict[str, str]
    log: logging.Logger
    simulated: bool = False
    # status_of(name): another component's `status()` (None when absent or failed); main
    # loop only, like the components' own calls. The outbox sends the NIC state with it.
    status_of: Callable[[str], Any] = lambda name: None
    # gpu_devices(): the GPU source's devices as of this tick's collection (agent.native.Device:
    # index, uuid, vendor, name, state, lost_reason, ...). Read it rather than core.devices():
    # the source already walked the core this tick.
    gpu_devices: Callable[[], list] = lambda: []
    # gpu_health(): the health source's per-GPU health as of its latest collection (the list
    # `status --json` shows under "health"); any thread.
    gpu_health: Callable[[], list] = lambda: []
    # gpu_status(): the per-GPU list `status --json` shows under "gpus" (a metric is None when
    # unsupported, lost or stale), assembled when called; any thread.
    gpu_status: Callable[[], list] = lambda: []
    # source_status(): each source's status as `status --json` "sources" shows it (the GPU
    # source's carries the sampler's figures); any thread.
    source_status: Callable[[], dict] = lambda: {}


# A failed component is stopped and started again after 1 s, then 2, 4, ... up to 5 minutes
# (the shape of systemd's and gRPC's restart backoff); once it has run this long without
# failing, its next failure starts the backoff from 1 s again.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
RETRY_RESET_AFTER_S = RETRY_MAX_S


@dataclass
class Slot:
    """A component and how it is doing, or why it is not there.

    A component that raises in any call is `failed`: it gets no further calls until its
    retry is due, when the daemon stops it and starts it again (`Daemon._retry_failed`); one
    that failed to build is built again. Each failure is logged once, with its cause."""

    spec: str
    component: Component | None = None
    state: str = "ok"  # ok | failed | off
    error: str | None = None
    busy_s: float = 0.0  # time spent in its calls from the main loop, for status and bench/
    calls: int = 0
    clock: Callable[[], float] = time.time
    attempts: int = 0  # failures in a row (reset after RETRY_RESET_AFTER_S of running)
    next_retry: float | None = None
    failed_at: float | None = None
    ok_since: float | None = None
    cfg: Any = None  # the config the component last got (at build, or its last reload)
    last_error: str | None = None  # the error it recovered from

    @property
    def name(self) -> str:
        return getattr(self.component, "name", None) or self.spec

    def call(self, what: str, *args) -> Any:
        """Call an (optional) method; an exception marks the component failed, logged once."""
        method = getattr(self.component, what, None)
        if method is None or self.state != "ok":
            return None
        started = time.perf_counter()
        try:
            return method(*args)
        except Exception as e:
            self.fail(what, e)
            return None
        finally:
            self.busy_s += time.perf_counter() - started
            self.calls += what == "tick"

    def fail(self, what: str, e: BaseException) -> None:
        now = self.clock()
        if self.ok_since is not None and now - self.ok_since >= RETRY_RESET_AFTER_S:
            self.attempts = 0
        self.attempts += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(self.attempts - 1, 32))
        self.state, self.error = "failed", f"{what}: {type(e).__name__}: {e}"
        self.failed_at, self.next_retry, self.ok_since = now, now + delay, None
        if self.attempts == 1:
            log.error("component %s failed in %s: %s: %s; the daemon carries on without it and retries in %gs",
                      self.name, what, type(e).__name__, e, delay, exc_info=e)
        else:
            log.error("component %s failed again in %s (attempt %d): %s: %s; next retry in %gs",
                      self.name, what, self.attempts, type(e).__name__, e, delay)

    def recovered(self, last_error: str | None = None) -> None:
        now = self.clock()
        self.last_error = last_error or self.error
        self.state, self.error, self.next_retry, self.ok_since = "ok", None, None, now
        log.info("component %s is running again after %d failure%s (last: %s)", self.name, self.attempts,
                 "" if self.attempts == 1 else "s", self.last_error)

    def status(self, now: float) -> dict:
        return {"state": self.state, "error": self.error, "last_error": self.last_error, "spec": self.spec,
                "busy_ms_per_tick": round(1000 * self.busy_s / self.calls, 3) if self.calls else None,
                "attempts": self.attempts,
                "failed_at": self.failed_at,
                "next_retry": self.next_retry,
                "next_retry_in_s": (round(max(0.0, self.next_retry - now), 3)
                                    if self.state == "failed" and self.next_retry is not None else None)}


def build_slots(spec: str, cfg: Any, ctx: Context, clock: Callable[[], float] = time.time,
                failed: Slot | None = None) -> list[Slot]:
    """The slots of one "module:function" spec: one per component it builds, or one saying
    it is off, or one failed slot (`failed` carries the earlier failures of a rebuild)."""
    slot = failed or Slot(spec, clock=clock)
    try:
        module_name, _, function = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), function or "build")
        built = factory(cfg, ctx)
        if built is None:
            return [Slot(spec, state="off", clock=clock)]
        components = list(built) if isinstance(built, (list, tuple)) else [built]  # built together, one slot each
        for component in components:
            if not isinstance(component, Component):
                missing = [m for m in ("name", "start", "stop", "tick", "status") if not hasattr(component, m)]
                raise TypeError(f"{type(component).__name__} is not a component: it has no {', '.join(missing)}")
    except Exception as e:
        slot.component = None
        slot.fail("build", e)
        return [slot]
    return [Slot(spec, component, clock=clock, cfg=cfg, attempts=slot.attempts if failed else 0)
            for component in components]


def build_components(specs: tuple[str, ...], cfg: Any, ctx: Context,
                     clock: Callable[[], float] = time.time) -> list[Slot]:
    slots = []
    for spec in specs:
        slots += build_slots(spec, cfg, ctx, clock)
    return slots
