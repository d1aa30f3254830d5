"""The alarm rule model and its validation from `[[alarm]]` tables.

One rule watches one metric over a set of label sets (its scope). Every evaluation interval it
takes a statistic of a window (the source document's "5-minute average"), compares it with
one or two thresholds (warning, critical), and a trigger (N consecutive breaches, or M of the
last N) turns breaches into an alarm. The vocabulary is the union of what operators know from
cloud monitors (consecutive periods, "M out of N" datapoints, missing-data treatment, effective
time, silence period) and Prometheus (label-set state, pending, resolved notifications).

Validation errors go through `Locator.error`, so they name file:line and the key
(`agent.toml:14: alarm[0].window: ...`). docs/alarms.md documents every key.
"""
from __future__ import annotations

import math
import operator as _op
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import agent.sources.health  # noqa: F401  (declares the health metrics the built-in rules watch)
from agent import metrics
from agent.alarms.schedule import Schedule, parse_days, parse_window, parse_zone
from agent.config import MAX_WINDOW_S, Locator, check_labels, format_duration, parse_duration

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": _op.gt, ">=": _op.ge, "<": _op.lt, "<=": _op.le, "==": _op.eq, "!=": _op.ne,
}
STATS = ("avg", "min", "max", "last")
MISSING = ("insufficient-data", "ignore", "breaching", "not-breaching")
SEVERITIES = ("warning", "critical")  # ascending
STATES = ("ok", "pending", "alarm", "insufficient-data")

# Prometheus Alertmanager's default repeat_interval: long enough not to nag, short enough
# that a forgotten alarm is heard again the same working day.
DEFAULT_SILENCE = "4h"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Bounds of the rule keys (issue 10: `window = "999999h"` and `hook_timeout = 1e308` passed
# check-config). A window is at most the longest window the daemon may keep (1h, windows.sizes);
# an evaluation interval at most a day; a silence period at most 30 days (Alertmanager's
# repeat_interval is hours to days); a hook is killed after at most 10 minutes, since it holds
# one of the few hook workers (alarms.hook_workers) for that long.
MAX_INTERVAL_S = 86400.0
MAX_SILENCE_S = 30 * 86400.0
MAX_HOOK_TIMEOUT_S = 600.0
MIN_HOOK_TIMEOUT_S = 0.1
MAX_EVALUATIONS = 1000  # consecutive, of, breaches, recover_after
MAX_TEXT = 1024  # description
MAX_COMMAND = 4096  # a string command, or each argument of a list one
MAX_ARGS = 256
MAX_SCOPE_ITEMS = 256  # gpus
MAX_WINDOWS = 32  # effective
MAX_ZONE = 64  # IANA names are at most ~32 characters


@dataclass(frozen=True)
class Level:
    severity: str
    threshold: float


@dataclass(frozen=True)
class Scope:
    """Which label sets of the metric a rule watches; empty fields match everything."""

    gpus: frozenset[str] = frozenset()  # indexes as strings
    uuids: frozenset[str] = frozenset()
    vendor: str | None = None
    nic: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.gpus or self.uuids:
            if str(labels.get("gpu")) not in self.gpus and labels.get("uuid") not in self.uuids:
                return False
        if self.vendor is not None and labels.get("vendor") != self.vendor:
            return False
        if self.nic is not None and labels.get("nic") != self.nic:
            return False
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class Hook:
    """A command run with the event as JSON on stdin; a string goes through /bin/sh -c."""

    command: tuple[str, ...] | str
    timeout_s: float


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    levels: tuple[Level, ...]  # ascending severity, at least one
    operator: str = ">="
    window_s: float = 300.0
    stat: str = "avg"
    interval_s: float = 60.0
    trigger_m: int = 1  # breaching evaluations needed ...
    trigger_n: int = 1  # ... among the last n (m == n: consecutive)
    recover_after: int = 1
    recovery_threshold: float | None = None
    missing: str = "insufficient-data"
    schedule: Schedule = field(default_factory=Schedule)
    silence_s: float = 4 * 3600.0  # 0: notify once per alarm
    notify_resolved: bool = True
    hook: Hook | None = None
    scope: Scope = field(default_factory=Scope)
    record: bool = True
    description: str = ""
    builtin: bool = False

    def breaches(self, value: float, threshold: float) -> bool:
        return OPERATORS[self.operator](value, threshold)

    def level_of(self, value: float) -> int:
        """Index of the highest level `value` breaches, -1 for none."""
        for i in range(len(self.levels) - 1, -1, -1):
            if self.breaches(value, self.levels[i].threshold):
                return i
        return -1

    def recovered(self, value: float) -> bool:
        """Whether `value` counts towards clearing an active alarm."""
        limit = self.levels[0].threshold if self.recovery_threshold is None else self.recovery_threshold
        return not self.breaches(value, limit)

    @property
    def consecutive(self) -> bool:
        return self.trigger_m == self.trigger_n

    def describe(self) -> str:
        levels = ", ".join(f"{lv.severity} {self.operator} {lv.threshold:g}" for lv in self.levels)
        trig = (f"{self.trigger_n} consecutive" if self.consecutive
                else f"{self.trigger_m} of the last {self.trigger_n}")
        return (f"{self.metric} {self.stat} over {self.window_s:g}s: {levels}; alarm after {trig}"
                f" evaluations every {self.interval_s:g}s; effective {self.schedule.describe()}")

    def fingerprint(self) -> str:
        """What must match for saved evaluation history to still mean the same thing."""
        return repr((self.metric, self.levels, self.operator, self.window_s, self.stat,
                     self.trigger_m, self.trigger_n, self.scope))


# --- parsing ---------------------------------------------------------------------------------

KEYS = ("name", "description", "metric", "window", "stat", "interval", "operator", "threshold",
        "severity", "warning", "critical", "consecutive", "breaches", "of", "recover_after",
        "recovery_threshold", "missing", "effective", "days", "timezone", "silence",
        "notify_resolved", "command", "hook_timeout", "gpus", "vendor", "nic", "labels",
        "record", "enabled")


class _Table:
    """Typed access to one `[[alarm]]` table; every error names its file, line and key."""

    def __init__(self, raw: dict[str, Any], path: tuple, where: Locator):
        self.raw, self.path, self.where = raw, path, where

    def error(self, key: str | None, message: str):
        return self.where.error(self.path + ((key,) if key else ()), message)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, kind: type | tuple, default: Any = None, *, required: bool = False,
            max_len: int = MAX_TEXT, max_items: int = MAX_SCOPE_ITEMS) -> Any:
        if key not in self.raw:
            if required:
                raise self.error(None, f"missing required key {key!r}")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"must be {_names(kinds)}, got {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.error(key, f"must be {_names(kinds)}, got {type(value).__name__} {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value!r}")
        if isinstance(value, str):
            if len(value) > max_len:
                raise self.error(key, f"must be at most {max_len} characters, got {len(value)}")
            if _CONTROL.search(value):
                raise self.error(key, f"must not contain control characters, got {_short(value)}")
        if isinstance(value, (list, dict)) and len(value) > max_items:
            raise self.error(key, f"at most {max_items} {'items' if isinstance(value, list) else 'entries'}, got {len(value)}")
        return value

    def duration(self, key: str, default: str, *, maximum: float, allow_zero: bool = False, minimum: float = 0.0) -> float:
        value = self.get(key, (str, float), default)
        if allow_zero and value in (0, 0.0, "0"):
            return 0.0
        if isinstance(value, str):
            seconds = parse_duration(value, strict=False)
            if seconds is None:
                raise self.error(key, f"not a duration: {_short(value)} (use e.g. 30s, 5m, 1h)")
        else:
            seconds = value  # a finite number of seconds (get refused NaN and inf)
            if seconds <= 0:
                raise self.error(key, f"must be a positive duration, got {value!r}")
        if seconds < minimum:
            # The windows hold 1-second buckets and the daemon ticks once a second.
            raise self.error(key, f"must be at least {minimum:g}s (figures are kept per second), got {_short(value)}")
        if seconds > maximum:
            raise self.error(key, f"must be at most {format_duration(maximum)}, got {_short(value)}")
        return seconds

    def count(self, key: str, default: int | None) -> int | None:
        value = self.get(key, int, default)
        if value is not None and not 1 <= value <= MAX_EVALUATIONS:
            raise self.error(key, f"must be an integer >= 1 and <= {MAX_EVALUATIONS}, got {_short(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, got {_short(value)}")
        return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _names(kinds: tuple) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_rule(raw: Any, path: tuple, where: Locator) -> Rule | None:
    """One `[[alarm]]` table -> a Rule (None when it says enabled = false)."""
    if not isinstance(raw, dict):
        raise where.error(path, "each [[alarm]] must be a table")
    t = _Table(raw, path, where)
    for key in raw:
        if key not in KEYS:
            raise t.error(key, f"unknown key in [[alarm]] (known: {', '.join(KEYS)})")

    name = t.get("name", str, required=True)
    if not _NAME.match(name):
        raise t.error("name", f"must be 1-64 letters, digits, '_', '.', '-', got {_short(name)}")
    metric = t.get("metric", str, required=True)
    known = metrics.agent_metrics()
    if metric not in known:
        raise t.error("metric", f"unknown metric {_short(metric)}: {metrics.unknown_hint(metric, known)}")
    op = t.choice("operator", tuple(OPERATORS), ">=")

    levels = _levels(t, op)
    recovery = t.get("recovery_threshold", float)
    if recovery is not None and op in ("==", "!="):
        raise t.error("recovery_threshold", f"has no meaning with operator {op!r}")
    if recovery is not None and OPERATORS[op](recovery, levels[0].threshold) and recovery != levels[0].threshold:
        raise t.error("recovery_threshold",
                      f"{recovery:g} is on the breaching side of the threshold {levels[0].threshold:g} "
                      f"(operator {op}): the alarm could never clear")

    if t.has("consecutive") and (t.has("breaches") or t.has("of")):
        raise t.error("consecutive", "give either consecutive = N, or breaches = M with of = N, not both")
    if t.has("breaches") != t.has("of"):
        raise t.error("breaches" if t.has("breaches") else "of", "breaches = M and of = N go together (M of the last N)")
    if t.has("breaches"):
        m, n = t.count("breaches", None), t.count("of", None)
        if m > n:
            raise t.error("breaches", f"{m} breaches cannot happen in the last {n} evaluations")
    else:
        m = n = t.count("consecutive", 1)
    windows_raw = t.get("effective", (str, list), "00:00-23:59", max_len=32, max_items=MAX_WINDOWS)
    windows_raw = [windows_raw] if isinstance(windows_raw, str) else windows_raw
    if not windows_raw:
        raise t.error("effective", "must name at least one window")
    try:
        windows = tuple(parse_window(w) if isinstance(w, str) and len(w) <= 32 else _bad_item(w) for w in windows_raw)
    except ValueError as e:
        raise t.error("effective", str(e)) from None
    days_raw = t.get("days", list, list(("mon-sun",)), max_items=32)
    for item in days_raw:
        if not isinstance(item, str) or len(item) > 32:
            raise t.error("days", f"each must be a day or day range such as 'mon-fri', got {_short(item)}")
    try:
        days = parse_days(days_raw)
    except ValueError as e:
        raise t.error("days", str(e)) from None
    if not days:
        raise t.error("days", "must name at least one day")
    zone_name = t.get("timezone", str, "local", max_len=MAX_ZONE)
    try:
        zone = parse_zone(zone_name)
    except (ValueError, OSError) as e:  # OSError: a name the zone database cannot even look up
        raise t.error("timezone", str(e) if isinstance(e, ValueError) else f"unknown time zone {zone_name!r}") from None

    rule = Rule(
        name=name,
        metric=metric,
        levels=levels,
        operator=op,
        window_s=t.duration("window", "5m", minimum=1.0, maximum=MAX_WINDOW_S),
        stat=t.choice("stat", STATS, "avg"),
        interval_s=t.duration("interval", "1m", minimum=1.0, maximum=MAX_INTERVAL_S),
        trigger_m=m,
        trigger_n=n,
        recover_after=t.count("recover_after", 1),
        recovery_threshold=recovery,
        missing=t.choice("missing", MISSING, "insufficient-data"),
        schedule=Schedule(windows, days, zone, zone_name or "local"),
        silence_s=t.duration("silence", DEFAULT_SILENCE, allow_zero=True, maximum=MAX_SILENCE_S),
        notify_resolved=t.get("notify_resolved", bool, True),
        hook=_hook(t),
        scope=_scope(t),
        record=t.get("record", bool, True),
        description=t.get("description", str, ""),
    )
    # A disabled rule is still validated, so switching it on later cannot surprise anyone.
    return rule if t.get("enabled", bool, True) else None


def _bad_item(item: Any):
    raise ValueError(f"each window must be a string like '00:00-23:59', got {_short(item)}")


def _levels(t: _Table, op: str) -> tuple[Level, ...]:
    single = t.has("threshold")
    if single and (t.has("warning") or t.has("critical")):
        raise t.error("threshold", "give either threshold (with an optional severity), or warning and/or critical, not both")
    if single:
        return (Level(t.choice("severity", SEVERITIES, "critical"), t.get("threshold", float)),)
    if t.has("severity"):
        raise t.error("severity", "only applies to a single threshold; with warning/critical the level names it")
    levels = tuple(Level(s, t.get(s, float)) for s in SEVERITIES if t.has(s))
    if not levels:
        raise t.error(None, "missing threshold: give threshold = X, or warning = X and/or critical = Y")
    if len(levels) == 2:
        warning, critical = levels[0].threshold, levels[1].threshold
        if op in ("==", "!="):
            raise t.error("critical", f"two levels need an ordering operator, not {op!r}")
        if warning == critical or OPERATORS[op](warning, critical):
            raise t.error("critical", f"critical ({critical:g}) must be beyond warning ({warning:g}) for operator {op}")
    return levels


def _hook(t: _Table) -> Hook | None:
    command = t.get("command", (str, list), max_len=MAX_COMMAND, max_items=MAX_ARGS)
    if command is None:
        if t.has("hook_timeout"):
            raise t.error("hook_timeout", "given without a command")
        return None
    if isinstance(command, list):
        if not command or not all(isinstance(c, str) and c for c in command):
            raise t.error("command", "a list command must be non-empty strings (program first)")
        for i, c in enumerate(command):
            if len(c) > MAX_COMMAND or "\x00" in c:
                raise t.error("command", f"argument {i} must be at most {MAX_COMMAND} characters without NUL")
        command = tuple(command)
    elif not command.strip():
        raise t.error("command", "must not be empty")
    return Hook(command, t.duration("hook_timeout", "10s", minimum=MIN_HOOK_TIMEOUT_S, maximum=MAX_HOOK_TIMEOUT_S))


def _scope(t: _Table) -> Scope:
    gpus_raw = t.get("gpus", list, [])
    gpus, uuids = set(), set()
    for item in gpus_raw:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 65536:
            gpus.add(str(item))
        elif isinstance(item, str) and item.isascii() and item.isdigit() and len(item) <= 5:
            gpus.add(item)
        elif isinstance(item, str) and item and len(item) <= 128:
            uuids.add(item)
        else:
            raise t.error("gpus", f"items must be GPU indexes (0, 1, ...) or UUIDs, got {_short(item)}")
    labels = t.get("labels", dict, {})
    problem = check_labels(labels)
    if problem:
        raise t.error("labels", problem)
    vendor = t.get("vendor", str)
    if vendor is not None and vendor not in ("nvidia", "amd"):
        raise t.error("vendor", f"must be 'nvidia' or 'amd', got {_short(vendor)}")
    return Scope(frozenset(gpus), frozenset(uuids), vendor, t.get("nic", str, max_len=15),
                 tuple(sorted(labels.items())))


def parse_rules(raw: Any, where: Locator) -> tuple[Rule, ...]:
    """The `[[alarm]]` array -> rules; names must be unique (they key the saved state)."""
    if not isinstance(raw, list):
        raise where.error(("alarm",), "must be an array of tables: write [[alarm]], not [alarm]")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        rule = parse_rule(item, ("alarm", i), where)
        name = item.get("name") if isinstance(item, dict) else None
        if name in seen:
            raise where.error(("alarm", i, "name"), f"duplicate rule name {name!r} (first in alarm[{seen[name]}])")
        seen[name] = i
        if rule is not None:
            rules.append(rule)
    return tuple(rules)
