"""The rule engine: one state machine per (rule, label set), on an injectable clock.

Each rule is evaluated every `interval` (its own schedule, not the daemon's tick). For every
label set in its scope the engine reads one figure (the window's statistic), classifies it
against the rule's levels, appends it to that label set's history of the last N evaluations,
and moves the state machine:

    insufficient-data ──data──► ok ◄──────────────── K recovering evaluations ──┐
                                 │ ▲                                              │
                        breach   │ │ no breach                                    │
                                 ▼ │                                              │
                              pending ──trigger (N consecutive, or M of N)──► alarm
                                                                    (warning ⇄ critical)

Every transition is an `Event(kind="alarm")` carrying rule, labels, value, threshold and time;
`data["notify"]` says whether it is a notification (`firing`, `escalated`, `repeat`,
`resolved`, `insufficient-data`), which is what hooks and the outbound stream act on.
A notification of an alarm is repeated only once its silence period has passed, and the
time of the last one is part of the persisted state, so a restart neither forgets an active
alarm nor repeats it early.

Thread use: `evaluate` runs on the daemon's main loop; `states()` and `snapshot()` are
called from the same thread (the gRPC service reads a copy the component publishes).
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from agent.alarms.rules import Rule
from agent.events import Event


class Source(Protocol):
    """Where figures come from: `agent.windows.Windows`, or the health gauges."""

    def stat(self, metric: str, labels: dict[str, str], window_s: float, stat: str,
             now: float | None = None) -> float | None: ...

    def label_sets(self, metric: str) -> list[dict[str, str]]: ...

    # Optional (the windows have it): `stat_all(metric, window_s, stat, now)` -> [(labels,
    # value)] for every series of the metric in one pass; used instead of the two above.


_KEYS_KEPT = 4096


def series_key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


@dataclass
class Series:
    """The state of one label set under one rule."""

    labels: dict[str, str]
    n: int
    state: str = "insufficient-data"
    severity: str | None = None
    since: float | None = None
    value: float | None = None
    last_eval: float | None = None
    last_notified: float | None = None
    ok_streak: int = 0
    history: deque = field(default=None)  # level index per evaluation, -1 not breaching

    def __post_init__(self):
        if self.history is None:
            self.history = deque(maxlen=self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "state": self.state, "severity": self.severity,
                "since": self.since, "value": self.value, "last_eval": self.last_eval,
                "last_notified": self.last_notified, "ok_streak": self.ok_streak,
                "history": list(self.history)}


class Engine:
    def __init__(self, rules: Iterable[Rule], source: Source | Callable[[Rule], Source],
                 clock: Callable[[], float]):
        """`source` is one Source for all rules, or a function choosing one per rule."""
        self.rules: dict[str, Rule] = {r.name: r for r in rules}
        self._source = source if callable(source) and not hasattr(source, "stat") else (lambda rule: source)
        self.clock = clock
        self.series: dict[str, dict[str, Series]] = {name: {} for name in self.rules}
        self.next_eval: dict[str, float] = {}
        self.errors: dict[str, str] = {}  # rule -> why it could not be evaluated
        self.dirty = False  # state changed since the last snapshot()
        self._keys: dict[tuple, str] = {}  # label items -> series_key, see _series_key

    # --- evaluation ----------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> list[Event]:
        """Evaluate every rule that is due at `now`; returns the events, oldest rule first."""
        now = self.clock() if now is None else now
        events: list[Event] = []
        for rule in self.rules.values():
            due = self.next_eval.get(rule.name, -math.inf)
            if now < due:
                continue
            # Keep the rule on its own cadence; after a stall, start again from now rather
            # than evaluating a burst of missed intervals back to back.
            self.next_eval[rule.name] = due + rule.interval_s if now - due < rule.interval_s else now + rule.interval_s
            events += self.evaluate_rule(rule, now)
        return events

    def evaluate_rule(self, rule: Rule, now: float) -> list[Event]:
        source = self._source(rule)
        known = self.series.setdefault(rule.name, {})
        try:
            stat_all = getattr(source, "stat_all", None)
            if stat_all is not None:  # the windows: every series of the metric in one pass
                current: dict[str, float | None] = {}
                for ls, value in stat_all(rule.metric, rule.window_s, rule.stat, now):
                    if rule.scope.matches(ls):
                        key = self._series_key(ls)
                        if key not in known:
                            known[key] = Series(dict(ls), rule.trigger_n)
                        current[key] = value
                # A series known from before and gone from the windows (expired) has no value.
                values = {key: current.get(key) for key in known}
            else:
                for ls in source.label_sets(rule.metric):
                    if rule.scope.matches(ls):
                        key = self._series_key(ls)
                        if key not in known:
                            known[key] = Series(dict(ls), rule.trigger_n)
                values = {key: source.stat(rule.metric, s.labels, rule.window_s, rule.stat, now)
                          for key, s in known.items()}
        except ValueError as e:  # e.g. a window longer than the daemon keeps
            if self.errors.get(rule.name) != str(e):
                self.errors[rule.name] = str(e)
            return []
        self.errors.pop(rule.name, None)
        in_effect = rule.schedule.active(now)
        events = []
        for key, s in known.items():
            value = values[key]
            if value is not None and not math.isfinite(value):
                value = None
            events += self._step(rule, s, value, now, in_effect)
        return events

    def _series_key(self, labels: dict[str, str]) -> str:
        """`series_key(labels)`, remembered by the label items: every rule meets the same few
        label sets every evaluation, and the JSON spelling is the costly part."""
        try:
            items = tuple(labels.items())
            key = self._keys.get(items)
        except TypeError:  # an unhashable label value: spell it out every time
            return series_key(labels)
        if key is None:
            if len(self._keys) >= _KEYS_KEPT:  # label sets come and go (NICs, GPUs): stay bounded
                self._keys.clear()
            key = self._keys[items] = series_key(labels)
        return key

    def _step(self, rule: Rule, s: Series, value: float | None, now: float, in_effect: bool) -> list[Event]:
        s.last_eval = now
        s.value = value
        top = len(rule.levels) - 1
        if value is None:
            if rule.missing == "ignore":
                return []
            if rule.missing == "insufficient-data":
                s.history.clear()
                s.ok_streak = 0
                if s.state == "insufficient-data":
                    return []
                notify = "insufficient-data" if s.state == "alarm" else None
                return [self._move(rule, s, "insufficient-data", None, now, notify)]
            level = top if rule.missing == "breaching" else -1
            recovering = rule.missing == "not-breaching"
        else:
            level = rule.level_of(value)
            recovering = rule.recovered(value)
        # Outside its effective time a rule does not fire: breaches there do not count.
        s.history.append(level if in_effect else -1)
        triggered = self._triggered(rule, s)

        if s.state == "alarm":
            s.ok_streak = s.ok_streak + 1 if recovering else 0
            if s.ok_streak >= rule.recover_after:
                s.history.clear()
                s.ok_streak = 0
                return [self._move(rule, s, "ok", None, now, "resolved" if rule.notify_resolved else None)]
            current = _level_index(rule, s.severity)
            if triggered >= 0 and triggered != current:
                notify = "escalated" if triggered > current and in_effect else None
                return [self._move(rule, s, "alarm", rule.levels[triggered].severity, now, notify)]
            if (in_effect and rule.silence_s > 0 and s.last_notified is not None
                    and now - s.last_notified >= rule.silence_s):
                s.last_notified = now
                self.dirty = True
                return [self._event(rule, s, "alarm", s.severity, now, "repeat")]
            return []

        if triggered >= 0:
            s.ok_streak = 0
            return [self._move(rule, s, "alarm", rule.levels[triggered].severity, now, "firing")]
        target = "pending" if s.history and s.history[-1] >= 0 else "ok"
        if target == s.state:
            return []
        return [self._move(rule, s, target, None, now, None)]

    @staticmethod
    def _triggered(rule: Rule, s: Series) -> int:
        """Highest level whose trigger holds over the history, -1 for none."""
        for level in range(len(rule.levels) - 1, -1, -1):
            if sum(1 for h in s.history if h >= level) >= rule.trigger_m:
                return level
        return -1

    def _move(self, rule: Rule, s: Series, state: str, severity: str | None, now: float,
              notify: str | None) -> Event:
        previous, previous_severity = s.state, s.severity
        s.state, s.severity, s.since = state, severity, now
        if notify is not None:
            s.last_notified = now
        self.dirty = True
        return self._event(rule, s, previous, previous_severity, now, notify)

    @staticmethod
    def _event(rule: Rule, s: Series, previous: str, previous_severity: str | None, now: float,
               notify: str | None) -> Event:
        level = _level_index(rule, s.severity if s.severity else previous_severity)
        threshold = rule.levels[max(level, 0)].threshold
        return Event("alarm", now, dict(s.labels), {
            "rule": rule.name, "state": s.state, "previous": previous, "severity": s.severity,
            "previous_severity": previous_severity, "value": s.value, "threshold": threshold,
            "operator": rule.operator, "metric": rule.metric, "stat": rule.stat,
            "window_s": rule.window_s, "notify": notify, "description": rule.description})

    # --- reading and persistence ---------------------------------------------------------
    def states(self, exclude_ok: bool = False) -> list[dict[str, Any]]:
        """Every label set's state under every rule (`exclude_ok`: only those not `ok`)."""
        out = []
        for name, known in self.series.items():
            rule = self.rules.get(name)
            if rule is None:
                continue
            for s in known.values():
                if exclude_ok and s.state == "ok":
                    continue
                level = _level_index(rule, s.severity)
                out.append({"rule": name, **s.to_dict(), "metric": rule.metric,
                            "threshold": rule.levels[max(level, 0)].threshold, "operator": rule.operator,
                            "description": rule.description, "builtin": rule.builtin})
        return out

    def snapshot(self) -> dict[str, Any]:
        self.dirty = False
        return {"rules": {name: {"fingerprint": self.rules[name].fingerprint(),
                                 "next_eval": self.next_eval.get(name),
                                 "series": [s.to_dict() for s in known.values()]}
                          for name, known in self.series.items() if name in self.rules}}

    def restore(self, saved: dict[str, Any]) -> list[str]:
        """Take back saved state; returns notes on what was dropped or reset, for the log."""
        notes = []
        for name, data in (saved.get("rules") or {}).items():
            rule = self.rules.get(name)
            if rule is None:
                notes.append(f"rule {name!r} is no longer configured; its saved state was dropped")
                continue
            same = data.get("fingerprint") == rule.fingerprint()
            if not same:
                notes.append(f"rule {name!r} changed; its state and last notification are kept, its history reset")
            known = self.series.setdefault(name, {})
            for item in data.get("series") or []:
                labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
                if not rule.scope.matches(labels):
                    continue  # the rule's scope no longer covers this label set
                s = Series(labels, rule.trigger_n)
                s.state = item.get("state") if item.get("state") in ("ok", "pending", "alarm", "insufficient-data") else "insufficient-data"
                s.severity = item.get("severity") if _level_index(rule, item.get("severity")) >= 0 else None
                if s.state == "alarm" and s.severity is None:
                    s.severity = rule.levels[-1].severity  # the level it was at no longer exists
                s.since, s.value = item.get("since"), item.get("value")
                s.last_eval, s.last_notified = item.get("last_eval"), item.get("last_notified")
                if same:
                    s.ok_streak = int(item.get("ok_streak") or 0)
                    s.history.extend(int(h) for h in (item.get("history") or [])[-rule.trigger_n:])
                known[series_key(labels)] = s
            if same and data.get("next_eval") is not None:
                self.next_eval[name] = float(data["next_eval"])
        return notes


def _level_index(rule: Rule, severity: str | None) -> int:
    for i, level in enumerate(rule.levels):
        if level.severity == severity:
            return i
    return -1
