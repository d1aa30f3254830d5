"""How alarms, GPU health and the flight recorder plug into the daemon (a *component*).

Each tick (about once a second, on the daemon's main loop) it folds the GPU fault events
the daemon delivered to `on_event` (`Event(kind="gpu")`: XID, lost, AMD events, which the
GPU source drains from the core) and the GPU source's device list (`ctx.gpu_devices()`)
into `Health`, evaluates the rules that are due, saves the alarm state when it
changed, and hands due recordings to the recorder's thread. What it has to say goes out
through `ctx.emit`; notifications also go to the rule's hook, on the hook pool. Nothing here
waits on a hook, a disk write of a recording, or a gRPC client.

`build` makes the "alarms" component (its status: the label sets not ok) and, linked to it,
a "health" view of the same runtime for `status --json` (per-GPU health); the daemon gives
each its own slot.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

from agent.alarms.builtin import builtin_rules
from agent.alarms.engine import Engine
from agent.alarms.hooks import HookRunner
from agent.alarms.rules import Rule
from agent.alarms.store import StateStore
from agent.config import parse_duration
from agent.events import Event
from agent.health import METRICS as HEALTH_METRICS, Health
from agent.recorder import Recorder
from agent.sources.gpu import core_event_of

def _seconds(value) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)


class AlarmsComponent:
    name = "alarms"

    def __init__(self, cfg, ctx):
        self.ctx = ctx
        self.log: logging.Logger = getattr(ctx, "log", None) or logging.getLogger("egs-agent.alarms")
        self.enabled = cfg.alarms.enabled
        self.health = Health(hold_s=_seconds(cfg.health.xid_hold))
        self.recorder: Recorder | None = None
        if cfg.recorder.enabled:
            before, after = _seconds(cfg.recorder.before), _seconds(cfg.recorder.after)
            ring = float(getattr(cfg.gpu, "ring_seconds", before + after))
            if before + after > ring:
                # The ring would already have overwritten the start by the time we copy it.
                self.log.warning("recorder.before + recorder.after = %gs exceeds gpu.ring_seconds = %gs; "
                                 "recordings will start later than asked", before + after, ring)
            self.recorder = Recorder(ctx.state_dir / "recordings", ctx.core, ctx.clock, before, after,
                                     int(cfg.recorder.max_bytes), labels_of=self._labels_of,
                                     on_written=self._recording_written)
        self.hooks = HookRunner(cfg.alarms.hook_workers, cfg.alarms.hook_queue)
        self.store = StateStore(ctx.state_dir)
        self.rule_errors: dict[str, str] = {}
        self.engine = Engine(self._rules(cfg), self._source_for, ctx.clock)
        saved, note = self.store.load()
        if note:
            self.log.error("%s", note)
        for note in self.engine.restore(saved):
            self.log.info("alarm state: %s", note)
        # Guards the engine, health and rule errors: the main loop changes them in tick and
        # reload, gRPC threads read them through view().
        self._lock = threading.RLock()
        self._view: dict[str, Any] | None = None  # built by view(), dropped every tick
        self._generation = 0  # ticks and reloads, so a view built across one is not kept
        self._gpu_events: list = []  # core events from on_event, folded into health next tick

    # --- rules -------------------------------------------------------------------------------
    def _rules(self, cfg) -> list[Rule]:
        configured = list(getattr(cfg, "alarm", ()) or ())
        names = {r.name for r in configured}
        rules = [r for r in builtin_rules(cfg.alarms) if r.name not in names] + configured
        kept = self._window_limit()
        self.rule_errors = {}
        out = []
        for r in rules:
            if r.metric not in HEALTH_METRICS and kept is not None and r.window_s > kept:
                self.rule_errors[r.name] = (f"window {r.window_s:g}s is longer than the {kept:g}s the daemon keeps "
                                            f"(the longest of windows.sizes); the rule is not evaluated")
                self.log.error("alarm rule %s: %s", r.name, self.rule_errors[r.name])
                continue
            out.append(r)
        return out if self.enabled else []

    def _window_limit(self) -> float | None:
        retention = getattr(self.ctx.windows, "retention", None)
        return None if retention is None else float(retention - 1)

    def _source_for(self, rule: Rule):
        return self.health if rule.metric in HEALTH_METRICS else self.ctx.windows

    def _labels_of(self, gpu: int) -> dict[str, str]:
        g = self.health.gpus.get(gpu)
        return dict(g.labels) if g is not None else {"gpu": str(gpu)}

    # --- the component contract --------------------------------------------------------------
    def start(self) -> None:
        self.log.info("alarms: %d rules (%s)%s", len(self.engine.rules), ", ".join(self.engine.rules) or "none",
                      "" if self.enabled else "; rule evaluation switched off ([alarms] enabled = false)")
        with self._lock:
            self.health.know(self._devices(), self.ctx.clock())
        self._publish()

    def _devices(self) -> list:
        devices = getattr(self.ctx, "gpu_devices", None)
        return list(devices()) if devices is not None else []

    def on_event(self, event: Event) -> None:
        """GPU fault events (kind "gpu") wait here for the next tick's health update."""
        if event.kind == "gpu":
            self._gpu_events.append(core_event_of(event))

    def tick(self, now: float) -> None:
        with self._lock:
            events, self._gpu_events = self._gpu_events, []
            for event in self.health.observe(events, self._devices(), now):
                self._health_event(event)
            self._feed_health_gauges(now)
            for event in self.engine.evaluate(now):
                self._alarm_event(event)
            for name, why in self.engine.errors.items():
                if self.rule_errors.get(name) != why:
                    self.rule_errors[name] = why
                    self.log.error("alarm rule %s cannot be evaluated: %s", name, why)
            if self.engine.dirty:
                self._save()
        if self.recorder is not None:
            self.recorder.tick(now)
        self._publish()

    def _save(self) -> None:
        try:
            self.store.save(self.engine.snapshot())
        except OSError as e:  # a full disk must not stop evaluation; the next change retries
            self.engine.dirty = True
            self.log.error("cannot save alarm state to %s: %s", self.store.path, e)

    def _health_event(self, event: Event) -> None:
        data = dict(event.data)
        cause = data.get("cause", {})
        if self.recorder is not None and cause.get("kind") != "recovered" and event.labels.get("gpu", "").isdigit():
            gpu = int(event.labels["gpu"])
            rid = self.recorder.trigger([gpu], {"kind": "health", "labels": dict(event.labels), "state": data["state"],
                                                "cause": cause}, event.ts, tag=f"health-gpu{gpu}")
            if rid:
                data["recording"] = rid
        self.ctx.emit(Event(event.kind, event.ts, dict(event.labels), data))

    def _alarm_event(self, event: Event) -> None:
        rule = self.engine.rules[event.data["rule"]]
        data = dict(event.data)
        notify = data.get("notify")
        gpu = event.labels.get("gpu", "")
        if notify in ("firing", "escalated") and rule.record and self.recorder is not None and gpu.isdigit():
            rid = self.recorder.trigger([int(gpu)], {"kind": "alarm", "rule": rule.name, "labels": dict(event.labels),
                                                     "severity": data.get("severity"), "value": data.get("value")},
                                        event.ts, tag=f"{rule.name}-gpu{gpu}")
            if rid:
                data["recording"] = rid
        out = Event(event.kind, event.ts, dict(event.labels), data)
        self.ctx.emit(out)
        if notify and rule.hook is not None:
            self.hooks.submit(rule.hook, out, rule.name)

    def _recording_written(self, header: dict[str, Any]) -> None:
        """Tell everyone a recording is ready: an `Event(kind="recording")` with its header and
        file path (the outbox ships the file to the collector: `agent.recorder.read_file`).
        Runs on the recorder's thread; `emit` is safe from any thread."""
        gpus = header.get("gpus", [])
        labels = self._labels_of(gpus[0]) if len(gpus) == 1 else {}
        data = {k: header.get(k) for k in ("id", "reason", "gpus", "event_ts", "from", "to", "samples",
                                           "size_bytes", "path")}
        self.ctx.emit(Event("recording", float(header.get("created") or self.ctx.clock()), labels, data))

    def _feed_health_gauges(self, now: float) -> None:
        """Put the health gauges in the windows too, so `query`, `watch` and the collector see
        them like any metric (the rules read them from Health directly)."""
        windows = self.ctx.windows
        add_all = getattr(windows, "add_all", None)
        add = getattr(windows, "add", None)
        if add_all is None and add is None:
            return
        from agent.sources.base import Sample
        samples = [Sample.reading(metric, g.labels, self.health.value(metric, g), now)
                   for g in self.health.gpus.values() for metric in HEALTH_METRICS]
        if add_all is not None:  # one lock hold for the lot
            add_all(samples)
        else:
            for sample in samples:
                add(sample)

    def _publish(self) -> None:
        """A new tick: the view `view()` hands out is rebuilt on the next call."""
        with self._lock:
            self._view = None
            self._generation += 1

    def view(self) -> dict[str, Any]:
        """Rules, states, health, hooks and recorder as plain JSON values, for the gRPC
        threads: built when someone asks, at most once per tick (no client, no cost). The
        engine's part is read under the lock the main loop evaluates under; the hook pool and
        the recorder (a directory listing) answer for themselves, outside it."""
        with self._lock:
            if self._view is not None:
                return self._view
            generation = self._generation
            rules = [{"name": r.name, "description": r.description, "metric": r.metric, "builtin": r.builtin,
                      "summary": r.describe(), "hook": r.hook is not None, "record": r.record,
                      "effective_now": r.schedule.active(self.ctx.clock()), "error": self.rule_errors.get(r.name)}
                     for r in self.engine.rules.values()]
            rules += [{"name": n, "error": e} for n, e in self.rule_errors.items() if n not in self.engine.rules]
            view = {"rules": rules, "states": self.engine.states(), "health": self.health.status()}
        view["hooks"] = self.hooks.status()
        view["recorder"] = self.recorder.status() if self.recorder is not None else {"available": False}
        view = json.loads(json.dumps(view, default=str))
        with self._lock:
            if self._generation == generation:  # no tick or reload meanwhile: keep it for this tick
                self._view = view
        return view

    def status(self) -> list[dict[str, Any]]:
        """For `status --json` under "alarms": every label set not in `ok` (the daemon
        serialises it with `default=str`, as `view()` does)."""
        with self._lock:
            return self.engine.states(exclude_ok=True)

    def health_status(self) -> list[dict[str, Any]]:
        """For `status --json` under "health"."""
        with self._lock:
            return self.health.status()

    def grpc_services(self):
        from agent.alarms.service import add_to_server
        return [lambda server: add_to_server(server, self)]

    def reload(self, cfg) -> None:
        """SIGHUP: take the new rules, keeping each surviving rule's state and notifications."""
        with self._lock:
            self.enabled = cfg.alarms.enabled
            snapshot = self.engine.snapshot()
            engine = Engine(self._rules(cfg), self._source_for, self.ctx.clock)
            for note in engine.restore(snapshot):
                self.log.info("alarm state on reload: %s", note)
            self.engine = engine
            self._save()
        self._publish()
        self.log.info("alarms reloaded: %d rules; hook, health and recorder settings apply on restart",
                      len(engine.rules))

    def stop(self) -> None:
        self.hooks.stop()
        if self.recorder is not None:
            self.recorder.stop()
        with self._lock:
            if self.engine.dirty:
                self._save()


class HealthView:
    """`status --json` "health": the per-GPU health the alarms component tracks."""

    name = "health"

    def __init__(self, alarms: AlarmsComponent):
        self.alarms = alarms

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def status(self) -> list[dict[str, Any]]:
        return self.alarms.health_status()


def build(cfg, ctx) -> tuple[AlarmsComponent, HealthView]:
    """The alarms component and the health view of it (agent.daemon.COMPONENTS)."""
    alarms = AlarmsComponent(cfg, ctx)
    return alarms, HealthView(alarms)

