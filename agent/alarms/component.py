"""How alarm rules plug into the daemon (a *component*).

Each tick (about once a second, on the daemon's main loop, after the sources were collected
into the windows) it evaluates the rules that are due against the windows, saves the alarm
state when it changed, and emits what it has to say through `ctx.emit`; notifications also go
to the rule's hook, on the hook pool. Nothing here waits on a hook or a gRPC client.
Rules read the windows only: GPU health reaches them as the health source's gauges
(`gpu_lost`, `gpu_xid_critical`, ...), like any metric.

`build` makes the "alarms" component (its status: the label sets not ok) and, with it, the
flight recorder's component (`agent.recorder.component`), because the local `Alarms` gRPC
service answers for both (rules and recordings); the recorder takes its cue from the events
alone, the alarms component never calls it.
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
from agent.events import Event
from agent.recorder.component import RecorderComponent, build as build_recorder


class AlarmsComponent:
    name = "alarms"

    def __init__(self, cfg, ctx):
        self.ctx = ctx
        self.log: logging.Logger = ctx.log or logging.getLogger("egs-agent.alarms")
        self.enabled = cfg.alarms.enabled
        self.hooks = HookRunner(cfg.alarms.hook_workers, cfg.alarms.hook_queue)
        self.store = StateStore(ctx.state_dir)
        self.rule_errors: dict[str, str] = {}
        self.engine = Engine(self._rules(cfg), ctx.windows, ctx.clock)
        saved, note = self.store.load()
        if note:
            self.log.error("%s", note)
        for note in self.engine.restore(saved):
            self.log.info("alarm state: %s", note)
        # Guards the engine and rule errors: the main loop changes them in tick and reload,
        # gRPC threads read them through view().
        self._lock = threading.RLock()
        self._view: dict[str, Any] | None = None  # built by view(), dropped every tick
        self._generation = 0  # ticks and reloads, so a view built across one is not kept
        # The recorder built beside it (`build`), for the gRPC service only.
        self.recorder: RecorderComponent | None = None

    # --- rules -------------------------------------------------------------------------------
    def _rules(self, cfg) -> list[Rule]:
        configured = list(cfg.alarm)
        names = {r.name for r in configured}
        rules = [r for r in builtin_rules(cfg.alarms) if r.name not in names] + configured
        kept = float(self.ctx.windows.retention - 1)
        self.rule_errors = {}
        out = []
        for r in rules:
            if r.window_s > kept:
                self.rule_errors[r.name] = (f"window {r.window_s:g}s is longer than the {kept:g}s the daemon keeps "
                                            f"(the longest of windows.sizes); the rule is not evaluated")
                self.log.error("alarm rule %s: %s", r.name, self.rule_errors[r.name])
                continue
            out.append(r)
        return out if self.enabled else []

    # --- the component contract --------------------------------------------------------------
    def start(self) -> None:
        self.log.info("alarms: %d rules (%s)%s", len(self.engine.rules), ", ".join(self.engine.rules) or "none",
                      "" if self.enabled else "; rule evaluation switched off ([alarms] enabled = false)")
        self._publish()

    def tick(self, now: float) -> None:
        with self._lock:
            for event in self.engine.evaluate(now):
                self._alarm_event(event)
            for name, why in self.engine.errors.items():
                if self.rule_errors.get(name) != why:
                    self.rule_errors[name] = why
                    self.log.error("alarm rule %s cannot be evaluated: %s", name, why)
            if self.engine.dirty:
                self._save()
        self._publish()

    def _save(self) -> None:
        try:
            self.store.save(self.engine.snapshot())
        except OSError as e:  # a full disk must not stop evaluation; the next change retries
            self.engine.dirty = True
            self.log.error("cannot save alarm state to %s: %s", self.store.path, e)

    def _alarm_event(self, event: Event) -> None:
        rule = self.engine.rules[event.data["rule"]]
        # `record`: the rule asks the flight recorder for the GPU's raw samples when it fires.
        out = Event(event.kind, event.ts, dict(event.labels), {**event.data, "record": rule.record})
        self.ctx.emit(out)
        if out.data.get("notify") and rule.hook is not None:
            self.hooks.submit(rule.hook, out, rule.name)

    def _publish(self) -> None:
        """A new tick: the view `view()` hands out is rebuilt on the next call."""
        with self._lock:
            self._view = None
            self._generation += 1

    def view(self) -> dict[str, Any]:
        """Rules, states, health and hooks as plain JSON values, for the gRPC threads: built
        when someone asks, at most once per tick (no client, no cost). The engine's part is
        read under the lock the main loop evaluates under; health is the health source's
        latest collection, the hook pool answers for itself."""
        with self._lock:
            if self._view is not None:
                return self._view
            generation = self._generation
            rules = [{"name": r.name, "description": r.description, "metric": r.metric, "builtin": r.builtin,
                      "summary": r.describe(), "hook": r.hook is not None, "record": r.record,
                      "effective_now": r.schedule.active(self.ctx.clock()), "error": self.rule_errors.get(r.name)}
                     for r in self.engine.rules.values()]
            rules += [{"name": n, "error": e} for n, e in self.rule_errors.items() if n not in self.engine.rules]
            view = {"rules": rules, "states": self.engine.states(), "health": self.ctx.gpu_health()}
        view["hooks"] = self.hooks.status()
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

    def grpc_services(self):
        from agent.alarms.service import add_to_server
        return [lambda server: add_to_server(server, self, self.recorder)]

    def reload(self, cfg) -> None:
        """SIGHUP: take the new rules, keeping each surviving rule's state and notifications."""
        with self._lock:
            self.enabled = cfg.alarms.enabled
            snapshot = self.engine.snapshot()
            engine = Engine(self._rules(cfg), self.ctx.windows, self.ctx.clock)
            for note in engine.restore(snapshot):
                self.log.info("alarm state on reload: %s", note)
            self.engine = engine
            self._save()
        self._publish()
        self.log.info("alarms reloaded: %d rules; hook settings apply on restart",
                      len(engine.rules))

    def stop(self) -> None:
        self.hooks.stop()
        with self._lock:
            if self.engine.dirty:
                self._save()


def build(cfg, ctx) -> list:
    """The alarms component and, unless switched off, the recorder's (agent.daemon.COMPONENTS)."""
    alarms = AlarmsComponent(cfg, ctx)
    alarms.recorder = build_recorder(cfg, ctx)
    return [alarms] if alarms.recorder is None else [alarms, alarms.recorder]
