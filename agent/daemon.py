"""The node daemon: wires sources, windows, feature components and the local API.

One main loop, about once a second on the wall-clock second: collect every source into the
windows (GPU, host, then health, which reads what the GPU source saw), emit the sources'
events (GPU faults, health changes), hand the closed 1-second buckets to the components,
tick the components, publish an update to `Watch` clients, hand the main loop's parts of
the `Status` document over (`agent.api.status`: it is assembled when asked for, at most
once a tick), and tell systemd we are alive. Data flows one way: sources -> windows and
events -> components -> events; no component feeds a source or another component.
The GPU hot path never runs here (it is the native core's C thread); this loop touches one
aggregate per (device, metric) per second, which is why its CPU does not grow with the
sampling rate.

Sources are registered in `agent.sources.SOURCES`; features (alarms, the flight recorder, NIC
tuning, the stream to the collector) plug in as components, listed in `COMPONENTS` as
"module:function" strings. Each factory is `build(cfg, ctx)` and returns None (off), a list
of components that belong together (alarms and the recorder, which share a gRPC service), or an
object with `name`, `start()`, `stop()`, `tick(now)`, `status()`, and optionally
`grpc_services()`, `on_event(event)`, `on_buckets(buckets)`, `reload(cfg)`
(docs/internals.md, "Components"). A component that fails to build, start or tick is logged
and shown as failed in `status`; the daemon keeps serving everything else, and retries the
component (stop, start; or build again) after 1 s, 2 s, 4 s, ... up to 5 minutes, showing its
attempts and next retry in `status --json` under "components".

Threads: components' `tick`, `status`, `on_event` and `on_buckets` are all called from the
main loop's thread (events emitted from other threads are queued and delivered there), so a
component needs no locking against the daemon. The gRPC server reads only what the main loop
publishes (the parts of the Status document that come from the core and the components), the
(locked) windows and the sources' status objects (`agent.api.server.AgentView`); it never
calls the core or a component.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent import __version__
from agent import config as config_mod
from agent.api.status import StatusDocument
from agent.components import Context, Slot, build_components, build_slots
from agent.events import Event
from agent.sources import SOURCES
from agent.sources.base import Source, SourceContext, collect_safely
from agent.systemd import sd_notify, setup_logging, simulated_env, watchdog_interval
from agent.windows import Bucket, Windows

# Feature components, "module:function"; each room adds its own line.
COMPONENTS: tuple[str, ...] = (
    "agent.nic.component:build",
    "agent.alarms.component:build",  # the "alarms" and "recorder" components, one gRPC service
    "agent.stream.component:build",
    "agent.prometheus:build",  # /metrics ([prometheus]); imports the exporter only when on
    "agent.otlp:build",  # OTLP push ([otlp])
)

log = logging.getLogger("egs-agent")


def build_sources(specs: tuple[str, ...], cfg: Any, core_factory: Callable | None = None) -> dict[str, Source]:
    """The sources of `specs` ("module:function"), in order, by name. A factory gets the ones
    built before it; one that fails to build is logged and left out, the others carry on."""
    built: dict[str, Source] = {}
    for spec in specs:
        try:
            module_name, _, function = spec.partition(":")
            factory = getattr(importlib.import_module(module_name), function or "build")
            source = factory(cfg, SourceContext(dict(built), core_factory))
        except Exception as e:
            log.error("source %s cannot be built: %s: %s; the daemon carries on without it",
                      spec, type(e).__name__, e, exc_info=e)
            continue
        if source is not None:
            built[source.name] = source
    return built


# --- the daemon ------------------------------------------------------------------------------

class Daemon:
    """The agent. `start()`, then `run()` until `request_stop()`; or `tick(now)` by hand in tests."""

    def __init__(self, cfg: Any, config_path: str | None = None,
                 env: dict[str, str] | None = None, clock: Callable[[], float] = time.time,
                 components: tuple[str, ...] | None = None, core_factory: Callable | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self.component_specs = COMPONENTS if components is None else components
        self.socket_override: str | None = None  # --socket wins over the file, also on reload
        self.core_factory = core_factory
        self.simulated = simulated_env(self.env)
        self.started_at = clock()
        self.host_id = cfg.agent.host_id or socket.gethostname()
        self.state_dir = Path(cfg.agent.state_dir)
        self.windows = Windows(self._window_sizes(cfg), clock)
        self.sources: list[Source] = []
        self.source_specs = SOURCES
        self.core = None
        self.slots: list[Slot] = []
        self.api = None
        self.hub = None
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._recent_events: list[dict] = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # the main loop sleeps on it; stop/reload set it
        self._stopped = False
        self._last_tick_at = -math.inf
        self.gpu_source = None
        self.health_source = None
        # The Status document: its main-loop parts are gathered every tick (`_publish`), the
        # rest is read and the JSON written only when someone asks, at most once per tick.
        self.status: StatusDocument | None = None
        self._ticks = 0
        self._tick_seconds = 0.0
        self._last_watchdog = 0.0
        self._watchdog_every = watchdog_interval(self.env)
        self.ctx: Context | None = None

    @staticmethod
    def _window_sizes(cfg) -> list[float]:
        return [config_mod.parse_duration(s) for s in cfg.windows.sizes]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        from agent.api.server import AgentView, ApiServer
        from agent.api.watch import WatchHub

        cfg = self.cfg
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("egs-agent %s starting: config %s, host %s%s", __version__,
                 self.config_path or "(defaults)", self.host_id, ", SIMULATED GPUs" if self.simulated else "")

        built = build_sources(self.source_specs, cfg, self.core_factory)
        self.sources = list(built.values())
        self.gpu_source, self.health_source = built.get("gpu"), built.get("health")
        self.status = StatusDocument(windows=self.windows, sources=built, host_id=self.host_id,
                                     started_at=self.started_at, config_path=self.config_path,
                                     simulated=self.simulated, labels=lambda: self.cfg.agent.labels)
        for source in self.sources:
            try:
                source.start()
            except Exception as e:
                source.status.state, source.status.last_error = "failed", f"{type(e).__name__}: {e}"
                log.exception("source %s failed to start; the others carry on", source.name)
        gpu, health = self.gpu_source, self.health_source
        self.core = gpu.core if gpu is not None else None
        if gpu is not None:
            self._log_gpu_backends(gpu)

        self.ctx = Context(windows=self.windows, core=self.core, emit=self.emit, state_dir=self.state_dir,
                           clock=self.clock, host_id=self.host_id, labels=dict(cfg.agent.labels),
                           log=logging.getLogger("egs-agent.component"), simulated=self.simulated,
                           status_of=self._component_status,
                           gpu_devices=(lambda: gpu.devices) if gpu is not None else (lambda: []),
                           gpu_health=health.gpus if health is not None else (lambda: []),
                           gpu_status=(lambda: gpu.gpu_status(self.windows)) if gpu is not None else (lambda: []),
                           source_status=lambda: {s.name: s.status.to_dict() for s in self.sources})
        self.slots = build_components(self.component_specs, cfg, self.ctx, self.clock)
        for slot in self.slots:
            slot.call("start")

        self.hub = WatchHub(self.windows, simulated=self.simulated, queue_size=cfg.api.watch_queue)
        services = []
        for slot in self.slots:
            services += slot.call("grpc_services") or []
        view = AgentView(self.status_json, self.windows, self.hub, self.clock, self.simulated)
        self.api = ApiServer(cfg.api, view, services, locator=cfg.locator)
        # Fill the windows once before serving so the first Status has figures in it.
        self.tick(self.clock())
        self.api.start()
        log.info("local API listening on unix:%s (mode %o%s)", cfg.api.socket, cfg.api.socket_mode,
                 f", group {cfg.api.socket_group}" if cfg.api.socket_group else "")
        sd_notify("READY=1\nSTATUS=" + self.summary(), self.env)

    def _component_status(self, name: str) -> Any:
        for slot in self.slots:
            if slot.name == name and slot.state == "ok":
                return slot.call("status")
        return None

    def request_stop(self) -> None:
        """Safe from a signal handler: the main loop wakes and stops."""
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Safe from a signal handler: the main loop wakes and reloads."""
        self._reload.set()
        self._wake.set()

    def run(self) -> None:
        """The main loop, until SIGTERM/SIGINT (or request_stop)."""
        while not self._stop.is_set():
            now = self.clock()
            # Tick just after each wall-clock second so a tick closes the previous second.
            delay = math.floor(now) + 1.02 - now
            if self._watchdog_every:
                delay = min(delay, self._watchdog_every)
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = self.clock()
            if math.floor(now) > math.floor(self._last_tick_at):
                self.tick(now)
            self._ping_watchdog()
        self.stop()

    def _ping_watchdog(self) -> None:
        if self._watchdog_every and time.monotonic() - self._last_watchdog >= self._watchdog_every * 0.9:
            sd_notify("WATCHDOG=1", self.env)
            self._last_watchdog = time.monotonic()

    def stop(self) -> None:
        """Graceful stop: stop serving, stop components (bounded by each), stop sources."""
        if self._stopped:
            return
        self._stopped = True
        sd_notify("STOPPING=1", self.env)
        log.info("stopping")
        # Watch streams end first (their subscriptions close), so the server's grace period
        # is not spent waiting on them.
        if self.hub is not None:
            self.hub.close()
        if self.api is not None:
            self.api.stop(grace=1.0)
        for slot in reversed(self.slots):
            # A failed component is stopped too: it may hold threads or files from its start.
            if slot.component is not None:
                self._stop_slot(slot)
        for source in reversed(self.sources):
            try:
                source.stop()
            except Exception:
                log.exception("source %s failed to stop cleanly", source.name)
        log.info("stopped")

    # --- the main loop's work ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        started = time.perf_counter()
        self._last_tick_at = now
        for source in self.sources:
            self.windows.add_all(collect_safely(source, now, log))
        for source in self.sources:
            for event in source.tick_events:
                self.emit(event)
        # Delivered before the components tick, so the recorder and the outbox see a fault in
        # the tick it came (the alarm rules already see its health gauges in the windows).
        events = self._deliver_events()
        self._retry_failed(now)
        takers = [slot for slot in self.slots if slot.state == "ok" and hasattr(slot.component, "on_buckets")]
        buckets: list[Bucket] = self.windows.close(now, hand_out=bool(takers))
        if buckets:
            for slot in takers:
                slot.call("on_buckets", buckets)
        for slot in self.slots:
            slot.call("tick", now)
        if self._ticks % 60 == 0:  # a scan of every series: once a minute is plenty
            self.windows.expire(now)
        events += self._deliver_events()
        self._publish(now, events)
        self._ticks += 1
        self._tick_seconds += time.perf_counter() - started

    def _retry_failed(self, now: float) -> None:
        """Restart every failed component whose retry is due: stop it (its failure may have
        left threads or files behind), start it again, and give it the running config if it
        missed a reload while down; one that failed to build is built again."""
        if not any(slot.state == "failed" for slot in self.slots):
            return
        slots: list[Slot] = []
        for slot in self.slots:
            if slot.state != "failed" or slot.next_retry is None or now < slot.next_retry:
                slots.append(slot)
                continue
            if slot.component is None:
                slots += self._rebuild(slot)
                continue
            self._stop_slot(slot)
            slot.state = "ok"
            slot.call("start")
            if slot.state == "ok" and slot.cfg is not self.cfg and hasattr(slot.component, "reload"):
                slot.call("reload", self.cfg)
                slot.cfg = self.cfg
            if slot.state == "ok":
                slot.recovered()
            slots.append(slot)
        self.slots = slots

    def _rebuild(self, failed: Slot) -> list[Slot]:
        built = build_slots(failed.spec, self.cfg, self.ctx, self.clock, failed=failed)
        for slot in built:
            if slot.state != "ok":
                continue
            slot.call("start")
            if slot.state == "ok":
                slot.recovered(failed.error)
                if getattr(slot.component, "grpc_services", None) is not None:
                    log.warning("component %s serves its gRPC services from the next restart (the local API "
                                "was started without them)", slot.name)
        return built

    def _stop_slot(self, slot: Slot) -> None:
        method = getattr(slot.component, "stop", None)
        if method is None:
            return
        try:
            method()
        except Exception as e:
            log.warning("component %s failed to stop cleanly: %s: %s", slot.name, type(e).__name__, e)

    def emit(self, event: Event) -> None:
        """Any thread may emit; events are logged now and delivered from the main loop."""
        log.info("%s", event.log_line())
        self._events.put(event)

    def _deliver_events(self) -> list[Event]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            for slot in self.slots:
                slot.call("on_event", event)
            self._recent_events = (self._recent_events + [event.to_dict()])[-20:]
        return events

    def _publish(self, now: float, events: list[Event]) -> None:
        """Gather what only the main loop may read (components' status, the core's backends)
        and invalidate the Status document; it is assembled and serialised on demand, so a
        tick nobody asks about costs no JSON. Watch subscribers that want the document get it
        through the same once-per-tick cache."""
        if self.status is not None:
            self.status.publish(self._main_loop_parts(now))
        if self.hub is not None:
            self.hub.publish(now, events, self.status_json)
        if self.env.get("NOTIFY_SOCKET"):
            sd_notify("STATUS=" + self.summary(), self.env)

    # --- status ------------------------------------------------------------------------------
    def status_json(self) -> str:
        """The latest `status --json` document (refreshed every tick; safe from any thread)."""
        return self.status.json() if self.status is not None else "{}"

    def _main_loop_parts(self, now: float) -> dict:
        """The parts of the Status document read from the core and the components, which only
        the main loop may call (`agent.api.status.StatusDocument.publish`). The component list is taken before their `status()` calls, as
        one document always has it."""
        gpu_source = self.gpu_source
        parts: dict[str, Any] = {
            "now": now,
            "ticks": self._ticks,
            "tick_avg_ms": round(1000 * self._tick_seconds / self._ticks, 3) if self._ticks else None,
            "gpus": ((list(gpu_source.devices), gpu_source.labels, gpu_source.reads, now)
                     if gpu_source is not None else ([], {}, None, now)),
            "backends": gpu_source.backend_status() if gpu_source is not None else {},
            "components": {slot.name: slot.status(now) for slot in self.slots},
            "events": list(self._recent_events),
        }
        own: dict[str, Any] = {}
        for slot in self.slots:
            if slot.state == "ok":
                value = slot.call("status")
                if slot.state == "ok":
                    own[slot.name] = value
            else:
                own.setdefault(slot.name, {"state": slot.state, "error": slot.error})
        parts["own"] = own
        return parts

    def summary(self) -> str:
        """One line for systemd's STATUS= and `systemctl status`, from the live state (not the
        Status document, which is only assembled when asked for)."""
        gpu_source = self.gpu_source
        devices = gpu_source.devices if gpu_source is not None else []
        ok = sum(1 for d in devices if d.state == "ok")
        backends = ", ".join(f"{k} {v.get('state')}" for k, v in
                             (gpu_source.backend_status() if gpu_source is not None else {}).items())
        failed = [slot.name for slot in self.slots if slot.state == "failed"]
        text = f"{ok}/{len(devices)} GPUs ok ({backends or 'no backends'})"
        cpu = self.windows.latest("cpu_utilization_percent", {})
        if cpu is not None:
            text += f"; cpu {cpu:.0f}%"
        if failed:
            text += f"; failed: {', '.join(failed)}"
        return ("SIMULATED " if self.simulated else "") + text

    def _log_gpu_backends(self, gpu) -> None:
        backends = gpu.backend_status()
        if gpu.status.state == "disabled":
            log.info("GPU sampling switched off (gpu.enabled = false); running on host metrics alone")
            return
        if not backends or all(b.get("state") != "ok" for b in backends.values()):
            reasons = "; ".join(f"{k}: {v.get('detail')}" for k, v in backends.items()) or "GPUs disabled"
            log.warning("no GPU library found (%s); running on host metrics alone", reasons)
            return
        for name, b in backends.items():
            log.info("GPU backend %s: %s%s", name, b.get("state"), f" ({b.get('detail')})" if b.get("detail") else "")

    # --- reload ------------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: re-read the file; a bad file keeps the running config and says why.

        Without --config (the shipped unit) that is the default file, as at start: it may
        have been created, changed or removed since (absent: the documented defaults)."""
        try:
            new = config_mod.load(self.config_path, self.env)
            sizes = self._window_sizes(new)
        except config_mod.ConfigError as e:
            log.error("reload rejected, keeping the running config: %s", e)
            return False
        except Exception as e:  # validation let something through that cannot be built
            log.error("reload rejected, keeping the running config: %s: %s", type(e).__name__, e)
            return False
        if self.socket_override:
            new.api.socket = self.socket_override
        old = self.cfg
        restart_only = [f"{section}.{key}" for section, key in (
            ("agent", "state_dir"), ("agent", "host_id"), ("api", "socket"), ("gpu", "enabled"),
            ("gpu", "nvidia"), ("gpu", "amd"), ("gpu", "nvml_library"), ("gpu", "amdsmi_library"),
            ("gpu", "hz"), ("gpu", "slow_hz"), ("gpu", "slow_fields"), ("gpu", "ring_seconds"),
            ("gpu", "health_interval"),
            *(("workload", f.name) for f in dataclasses.fields(old.workload)))  # the core's passes, the attribution
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)]
        if restart_only:
            log.warning("reload: %s changed; that takes effect on restart", ", ".join(restart_only))
        logging.getLogger().setLevel(new.agent.log_level.upper())
        self.windows.set_sizes(sizes)
        for source in self.sources:
            if hasattr(source, "reconfigure"):
                source.reconfigure(getattr(new, source.name))
        if self.api is not None:
            self.api.reconfigure(new.api)
        if self.hub is not None:
            self.hub.queue_size = new.api.watch_queue
        for slot in self.slots:
            if slot.state != "ok":
                continue
            if hasattr(slot.component, "reload"):
                slot.call("reload", new)
                slot.cfg = new
            else:
                log.info("reload: component %s keeps its settings until restart", slot.name)
        self.cfg = new
        log.info("reloaded %s", self.config_path or new.file)
        return True


def run(config_path: str | None, socket_override: str | None = None) -> int:
    """`egs-agent run`: exit 0 after a graceful stop, 1 on a runtime failure to start.

    A bad config raises ConfigError, which the CLI turns into exit code 2.
    """
    cfg = config_mod.load(config_path)
    if socket_override:
        cfg.api.socket = socket_override
    setup_logging(cfg.agent.log_level)
    try:
        daemon = Daemon(cfg, config_path=config_path)
    except Exception as e:
        log.error("cannot start: %s: %s", type(e).__name__, e, exc_info=e)
        return 1
    daemon.socket_override = socket_override
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    try:
        daemon.start()
    except config_mod.ConfigError:
        daemon.stop()
        raise
    except PermissionError as e:
        log.error("cannot start: %s (run as root or as the egs-agent user, or use a config whose "
                  "agent.state_dir and api.socket you can write, e.g. dev/agent.toml)", e)
        daemon.stop()
        return 1
    except Exception as e:
        # Type and text, always: MemoryError() and friends have an empty message (issue 10).
        log.error("cannot start: %s: %s", type(e).__name__, e, exc_info=e)
        daemon.stop()
        return 1
    daemon.run()
    return 0
