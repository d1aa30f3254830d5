"""The agent's configuration: one TOML file, validated against declared sections.

Every key is declared once, with its type, default, range and help text, in a `Section`.
The core sections live here; packages with their own settings (NIC tuning, alarms, the
outbound stream) declare theirs in a `settings` module listed in `SECTION_MODULES`, so
each feature keeps its settings beside its code. `docs/config.md` is generated from these
declarations (`python -m agent.config --markdown`), so the docs cannot drift from the code.

Errors name the file, the line and the dotted key (`agent.toml:12: gpu.hz: must be ...`)
and the CLI turns them into exit code 2.

Every value is bounded, so what `check-config` accepts the daemon can do (issue 10): the file
is at most MAX_FILE_BYTES, every number finite and within its key's range, every duration
within its key's range, every string at most its key's length (4095 characters, PATH_MAX,
unless the key says less) and free of control characters, every list and table at most its
key's count (256 unless the key says otherwise), and `agent.labels` follows the label rules
below (`check_labels`). docs/config.md states each bound beside its key.

Where a key is given in the file, the file wins; the few environment variables of the
agent's contract (EGS_NVML_LIBRARY, EGS_AMDSMI_LIBRARY, EGS_SOCKET) are applied by `load()` after the
file, since an operator sets them to override one run.
"""
from __future__ import annotations

import copy
import functools
import importlib
import math
import operator
import os
import re
import stat
import sys
import tomllib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Callable

from agent.libraries import AMDSMI_DEFAULT, AMDSMI_ENV, NVML_ENV, NVML_LIBRARY

DEFAULT_PATH = "/etc/egs-agent/agent.toml"

# A generous config (a few hundred [[alarm]] rules, a large instance-type table) is tens of
# kilobytes; 1 MiB leaves room for ten times that and keeps a wrong file (a log, a core dump,
# a 50 MB table of labels) from being parsed at all.
MAX_FILE_BYTES = 1 << 20
# Strings: PATH_MAX (4096 with its NUL) is the longest path the kernel takes, and no setting
# here is longer than a path; keys with a tighter natural limit declare their own `max_len`.
MAX_STRING = 4095
# Lists and tables of a key, unless the key declares its own `max_items`.
MAX_ITEMS = 256
# Labels (agent.labels, a rule's labels scope): sent with every batch and stored with every
# series. Prometheus' label-name syntax; VictoriaMetrics refuses series with more than 30
# labels by default (-maxLabelsPerTimeseries), and the agent adds up to 7 of its own (host,
# gpu, uuid, vendor, model, nic, the metric name), so 20 of the operator's stay below it.
MAX_LABELS = 20
MAX_LABEL_NAME = 64
MAX_LABEL_VALUE = 256
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Modules that declare further sections (a list `SECTIONS`), each beside the code that uses them.
SECTION_MODULES: tuple[str, ...] = (
    "agent.alarms.settings",
    "agent.sources.health",
    "agent.recorder.settings",
    "agent.nic.settings",
    "agent.stream.settings",
    "agent.prometheus.settings",
    "agent.workload.settings",
)


class ConfigError(Exception):
    """A configuration problem, located in the file that has it."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.message, self.file, self.line, self.key = message, file, line, key
        where = file or "<config>"
        if line:
            where += f":{line}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


@dataclass(frozen=True)
class Key:
    """One setting. `type` is what TOML must give (int is accepted where float is asked)."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    item_type: type | None = None  # for lists: the type of each element
    max_len: int | None = None  # strings (and a list's string items): None means MAX_STRING
    max_items: int | None = None  # lists and tables: None means MAX_ITEMS
    # A duration (a string such as "30s", or a number of seconds where `type` allows one):
    # `min` and `max` are then seconds; `parse_duration` reads the value.
    duration: bool = False
    days: bool = False  # the duration may use a `d` suffix


@dataclass
class Section:
    """A `[name]` table of declared keys, or, with `parse`, a table or `[[name]]` array whose
    contents the owning package validates itself (it gets the raw value and a `Locator`)."""

    name: str
    doc: str
    keys: dict[str, Key] = field(default_factory=dict)
    parse: Callable[[Any, "Locator"], Any] | None = None
    default: Any = None  # value of a `parse` section when the file has none
    # Rules across keys of one section: gets the validated values, returns (key, message) or None.
    check: Callable[[Any], tuple[str, str] | None] | None = None

    def settings_type(self) -> type:
        """The type of this section's values, generated from its keys: a dataclass with one
        typed field per key and the key's default, so a misspelt key is an AttributeError
        where it is read or set, and code never probes for a key that might be absent."""
        made = _SETTINGS_TYPES.get(id(self))
        if made is None or made[0] is not self:
            fields = [(name, _annotation(key.type), field(default_factory=_copier(key.default))
                       if isinstance(key.default, (list, dict, set)) else field(default=key.default))
                      for name, key in self.keys.items()]
            cls = make_dataclass(_camel(self.name) + "Settings", fields, slots=True,
                                 namespace={"__doc__": f"[{self.name}]: {self.doc}"})
            cls.__module__ = __name__
            made = _SETTINGS_TYPES[id(self)] = (self, cls)
        return made[1]

    def defaults(self) -> Any:
        """This section's settings with every key at its default."""
        return self.settings_type()()


_SETTINGS_TYPES: dict[int, tuple[Section, type]] = {}
_CONFIG_TYPES: dict[tuple[str, ...], type] = {}


def config_type(known: dict[str, Section]) -> type:
    """The type of a whole parsed file: `file`, `locator`, then one attribute per section
    (its settings type's instance, or what a `parse` section returns)."""
    names = tuple(known)
    cls = _CONFIG_TYPES.get(names)
    if cls is None:
        fields = [("file", str, field(default="<config>")), ("locator", Any, field(default=None))]
        fields += [(name, Any, field(default=None)) for name in names]
        cls = _CONFIG_TYPES[names] = make_dataclass("Config", fields, namespace={"__doc__": "A parsed config file."})
        cls.__module__ = __name__
    return cls


def _annotation(t: type | tuple[type, ...]) -> Any:
    return functools.reduce(operator.or_, t) if isinstance(t, tuple) else t


def _copier(value: Any) -> Callable[[], Any]:
    return lambda: copy.deepcopy(value)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\W]+", name) if part)


class Locator:
    """Maps a key path, e.g. ("alarm", 0, "threshold"), to its line in the file.

    tomllib gives values without positions, so this reads the text once and records the
    line of every table header and `key =` assignment. Inline tables and multi-line values
    are located at the line where their key starts, which is where an operator looks.
    """

    # Linear-time patterns: every line of the file is matched, including the lines inside
    # multi-line strings, and a lazy group followed by \s* took cubic time on a long line of
    # spaces (a 200 KB line stalled the parse for minutes).
    _header = re.compile(r"^[ \t]*(\[\[?)([^\]\n]*)\]\]?[ \t]*(#.*)?$")
    _assign = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")

    def __init__(self, text: str, file: str):
        self.file = file
        self.lines: dict[tuple, int] = {}
        counters: dict[tuple, int] = {}
        table: tuple = ()
        # TOML lines end at "\n" only; str.splitlines() also splits at U+2028, U+0085 and
        # others that a string value may hold, which shifted every later line number.
        for number, raw in enumerate(text.split("\n"), start=1):
            m = self._header.match(raw)
            if m:
                names = tuple(self._split(m.group(2)))
                if not names:
                    continue
                if m.group(1) == "[[":
                    # `[[a.b]]` appends to the array a.b of the latest element of `a`.
                    prefix = self._resolve(names[:-1], counters)
                    base = prefix + (names[-1],)
                    counters[base] = counters.get(base, -1) + 1
                    table = base + (counters[base],)
                else:
                    table = self._resolve(names, counters)
                self.lines.setdefault(table, number)
                continue
            m = self._assign.match(raw)
            if m:
                path = table + tuple(self._split(m.group(1)))
                self.lines.setdefault(path, number)

    @staticmethod
    def _split(dotted: str) -> list[str]:
        parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', dotted)
        return [a or b or c for a, b, c in parts]

    @staticmethod
    def _resolve(names: tuple, counters: dict[tuple, int]) -> tuple:
        path: tuple = ()
        for name in names:
            path += (name,)
            if path in counters:
                path += (counters[path],)
        return path

    def key_at(self, line: int | None) -> tuple:
        """The path of the key assigned (or the table opened) at `line`; () when none is.
        Names the key of a failure that comes with a line only (TOML syntax, UTF-8)."""
        for path, number in self.lines.items():
            if number == line:
                return path
        return ()

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest located parent."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def error(self, path: tuple, message: str) -> ConfigError:
        key = ".".join(_short_name(p) if not isinstance(p, int) else f"[{p}]" for p in path)
        return ConfigError(message, self.file, self.line(path), key.replace(".[", "["))


# --- durations, labels and other shared checks ------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ \t]*(ms|s|m|h|d)?")
_SCALE = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str | float, strict: bool = True, days: bool = False) -> float | None:
    """The one reader of durations (config keys, rules, command-line options): '10s', '1m',
    '5m', '1h', '250ms' or a bare number of seconds, written or as an int or float (keys that
    also take a number) -> seconds; with `days`, also '30d'. A zero, negative or non-finite
    duration is not one: None, or ValueError when `strict`. (The text is stripped first and
    the pattern has one variable-length gap, so this is linear in the length.)"""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(str(value).strip())
        if m and (days or m.group(2) != "d"):
            seconds = float(m.group(1)) * _SCALE[m.group(2)]
    if seconds is not None and not 0 < seconds < math.inf:
        seconds = None
    if seconds is None and strict:
        raise ValueError(f"not a duration: {_short(value)} (use e.g. 10s, 1m, 5m)")
    return seconds


def health_interval_seconds(value: str) -> float:
    """`gpu.health_interval` in seconds; 0 when the health pass is off ("off" or "0")."""
    return 0.0 if value.strip() in ("off", "0") else parse_duration(value)


def health_interval_problem(value: str) -> str | None:
    """Why `value` is not a `gpu.health_interval` (None when it is)."""
    return None if value.strip() in ("off", "0") else duration_error(value, 1.0, 3600.0)


# The native core's fields as `gpu.slow_fields` names them: a name per call of the per-field
# path ("utilization" is GPU and memory-controller busy, "memory" is used and total memory).
GPU_FIELD_GROUPS = ("utilization", "memory", "temperature", "power", "sm_clock", "memory_clock",
                    "energy", "fan")
# On the slow tier by default: everything but what a driver without sample buffers (AMD, older
# NVIDIA) reads by polling and that moves within a second. Temperature follows the die's
# thermal mass (seconds) in whole degrees, and used memory is kept per one-second window bucket
# anyway; both have neither a sample buffer nor a field id in NVML, so at gpu.hz they would be
# 20 of the calls a second at the defaults (docs/benchmarks.md, issue 16).
DEFAULT_SLOW_FIELDS = ("memory", "temperature", "sm_clock", "memory_clock", "energy", "fan")


def slow_fields_problem(value: list) -> str | None:
    """Why `value` is not a `gpu.slow_fields` list (None when it is)."""
    unknown = [v for v in value if v not in GPU_FIELD_GROUPS]
    if unknown:
        return f"unknown field {_short(unknown[0])}; the fields are {', '.join(GPU_FIELD_GROUPS)}"
    if len(set(value)) != len(value):
        return "names a field twice"
    return None


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 3600 -> '1h', 0.1 -> '100ms', 90 -> '90s'."""
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds * 1000:g}ms"


def duration_error(value: Any, low: float, high: float, *, days: bool = False,
                   numbers: bool = False) -> str | None:
    """Why `value` is not a duration in [low, high] seconds (None when it is). `numbers`
    admits a bare number of seconds, `days` a 'd' suffix."""
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds):
            return f"must be a finite number of seconds, got {value!r}"
    elif isinstance(value, str):
        seconds = parse_duration(value, strict=False, days=days)
        if seconds is None:
            units = "ms, s, m, h" + (", d" if days else "")
            return f"must be a duration like 30s or 5m ({units} suffixes), got {_short(value)}"
    else:
        return f"must be a duration string like '30s'{' or a number of seconds' if numbers else ''}, got {_short(value)}"
    if seconds < low:
        return f"must be at least {format_duration(low)}, got {_short(value)}"
    if seconds > high:
        return f"must be at most {format_duration(high)}, got {_short(value)}"
    return None


def _short(value: Any, limit: int = 80) -> str:  # also used by feature settings
    """repr() of a value, cut so a megabyte of garbage makes a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _cut(message: str, limit: int = 500) -> str:
    """A feature's own check message, kept to one readable line whatever value it quotes."""
    message = " ".join(message.split())
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message)} characters)"


def _short_name(name: Any, limit: int = 64) -> str:
    text = str(name)
    return text if len(text) <= limit else text[:limit] + "..."


def check_labels(value: dict) -> str | None:
    """Operator labels: at most MAX_LABELS, names in Prometheus' syntax (no leading '__', which
    Prometheus reserves) of at most MAX_LABEL_NAME characters, string values of at most
    MAX_LABEL_VALUE characters without control characters."""
    if len(value) > MAX_LABELS:
        return f"at most {MAX_LABELS} labels, got {len(value)}"
    for name, v in value.items():
        if len(name) > MAX_LABEL_NAME or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            return (f"label name {_short(name)} must be letters, digits and '_' (not starting with a digit "
                    f"or '__'), at most {MAX_LABEL_NAME} characters")
        if not isinstance(v, str):
            return f"label {name!r} must be a string, got {_short(v)}"
        if len(v) > MAX_LABEL_VALUE:
            return f"label {name!r}: value must be at most {MAX_LABEL_VALUE} characters, got {len(v)}"
        if _CONTROL.search(v):
            return f"label {name!r}: value must not contain control characters"
    return None


# --- the core sections -------------------------------------------------------------------

# Windows: each series keeps (longest window + 1) one-second slots of 16 bytes (one reading a
# second) or 40 (several; agent/windows.py says why). An hour is
# the longest statistic an on-node alarm needs (longer trends are the collector's rollups),
# and `100000h` asked for 17 GB per series and killed the daemon with MemoryError (issue 10).
MAX_WINDOW_S = 3600.0
MAX_WINDOWS = 16
SOCKET_PATH_BYTES = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _check_windows(value: list[str]) -> str | None:
    if not value:
        return "must name at least one window"
    for item in value:
        problem = duration_error(item, 1.0, MAX_WINDOW_S)
        if problem:
            return f"{item!r}: {problem}" if len(item) <= 32 else problem
    return None


def _check_socket_path(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > SOCKET_PATH_BYTES:
        return f"must be at most {SOCKET_PATH_BYTES} bytes (a Unix socket address), got {size}"
    return None


CORE_SECTIONS: list[Section] = [
    Section("agent", "Identity and directories of this agent.", {
        "host_id": Key("", str, "Host identity sent to the collector; empty means the hostname. At most 253 characters (a DNS name).",
                       max_len=253),
        "labels": Key({}, dict, f"Extra labels attached to everything this host sends: at most {MAX_LABELS}, names of letters, "
                      f"digits and '_' (at most {MAX_LABEL_NAME} characters, not starting with a digit or '__'), string values "
                      f"of at most {MAX_LABEL_VALUE} characters. They travel with every batch and every stored series.",
                      max_items=MAX_LABELS, check=check_labels),
        "state_dir": Key("/var/lib/egs-agent", str, "Persistent state: spool, alarm state, recordings.", check=_nonempty),
        "log_level": Key("info", str, "Log level.", choices=("debug", "info", "warning", "error")),
    }),
    Section("gpu", "The native GPU core. Two sampling tiers on one thread: the fast fields at `hz`, the slow ones at `slow_hz`.", {
        "enabled": Key(True, bool, "Sample GPUs at all."),
        "nvidia": Key(True, bool, "Use the NVIDIA backend (NVML)."),
        "amd": Key(True, bool, "Use the AMD backend (AMD SMI, else pyamdgpuinfo)."),
        "nvml_library": Key(NVML_LIBRARY, str, f"NVML library path or soname (env {NVML_ENV} overrides).", check=_nonempty),
        "amdsmi_library": Key("", str, f"AMD SMI library path; empty means {AMDSMI_DEFAULT} (env {AMDSMI_ENV} overrides)."),
        "hz": Key(10.0, (int, float), "Sampling rate of the fast fields (those not in gpu.slow_fields: utilization and power at the defaults), reads per second. Every read costs CPU in the vendor driver (docs/benchmarks.md has the figures), and NVML refreshes utilization itself only every 1/6 to 1 s.", min=1, max=5000),
        "slow_hz": Key(1.0, (int, float), "Sampling rate of the slow fields (gpu.slow_fields): read on every round(hz / slow_hz)-th tick of the same grid, so at most gpu.hz. A driver's own sample buffers (utilization, power, clocks on NVIDIA) are read on these ticks too, every sample with its own timestamp.", min=0.1, max=5000),
        "slow_fields": Key(list(DEFAULT_SLOW_FIELDS), list, "The fields read at gpu.slow_hz rather than gpu.hz, of: "
                           + ", ".join(GPU_FIELD_GROUPS) + ". Each costs a library call per GPU a read where the driver has neither a sample buffer nor a batched call for it (docs/internals.md, \"How a field is read\"); [] reads every field at gpu.hz.",
                           item_type=str, max_len=16, max_items=len(GPU_FIELD_GROUPS), check=slow_fields_problem),
        "ring_seconds": Key(60.0, (int, float), "Seconds of raw samples kept per GPU for the flight recorder.", min=1, max=3600),
        "health_interval": Key("10s", str, "Time between health reads (clock-event reasons, ECC, retired pages, remapped rows, power limit, PCIe, NVLink, MIG instances; a few library calls per GPU a read), a duration 1s..1h; \"off\" (or \"0\"): no health reads.",
                               max_len=16, check=health_interval_problem),
    }, check=lambda g: ("slow_hz", f"must be <= gpu.hz ({g.hz!r}), got {g.slow_hz!r}") if g.slow_hz > g.hz else None),
    Section("host", "Host CPU, memory and network figures (psutil).", {
        "enabled": Key(True, bool, "Collect host figures."),
        "interval": Key(1.0, (int, float), "Seconds between host readings.", min=0.1, max=60),
        "procfs": Key("/proc", str, "procfs root (tests point it at a fixture tree).", check=_nonempty),
        "sysfs": Key("/sys", str, "sysfs root.", check=_nonempty),
        "nics": Key([], list, "NICs to report; empty means all but loopback. Interface names, at most 15 characters (IFNAMSIZ).",
                    item_type=str, max_len=15, max_items=1024),
    }),
    Section("windows", "Windowed statistics over 1-second buckets.", {
        "sizes": Key(["10s", "1m", "5m", "15m"], list, f"Windows kept for every metric (s, m, h suffixes): 1 to {MAX_WINDOWS} "
                     f"of them, each 1s..{format_duration(MAX_WINDOW_S)}. The longest sets the memory: per series and second, "
                     "16 bytes for a series with one reading a second (host figures, slow-tier GPU fields, health gauges) and "
                     "40 for one with several (the fast GPU fields), so 15m is 14 or 36 KB and 1h 58 or 144 KB for each series "
                     "(a host with 8 GPUs and 128 CPUs has a few hundred series, most with one reading a second: about 25 MB "
                     "at 1h). It also bounds the longest [[alarm]] window.",
                     item_type=str, max_items=MAX_WINDOWS, max_len=32, check=_check_windows),
    }),
    Section("api", "The local API on a Unix socket.", {
        "socket": Key("/run/egs-agent/agent.sock", str, "Socket path (env EGS_SOCKET or --socket override); at most 107 bytes, "
                      "the size of a Unix socket address.", check=_check_socket_path),
        "socket_mode": Key(0o660, int, "Socket file mode.", min=0, max=0o777),
        "socket_group": Key("", str, "Group owning the socket; empty keeps the process's group.", max_len=64),
        "watch_queue": Key(16, int, "Updates buffered per Watch client before coalescing to the latest.", min=1, max=4096),
    }),
]


def sections() -> dict[str, Section]:
    found = {s.name: s for s in CORE_SECTIONS}
    for module in SECTION_MODULES:
        for s in importlib.import_module(module).SECTIONS:
            found[s.name] = s
    return found


# --- loading -----------------------------------------------------------------------------

def _type_name(t: type | tuple) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_value(key: Key, value: Any, path: tuple, where: Locator) -> Any:
    accepted = key.type if isinstance(key.type, tuple) else (key.type,)
    ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
    if float in accepted and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise where.error(path, f"must be {_type_name(key.type)}, got {type(value).__name__} {_short(value)}")
    # Shape first (cheap, bounded), so the checks below never see a megabyte of anything.
    if isinstance(value, float) and not math.isfinite(value):
        raise where.error(path, f"must be a finite number, got {value!r}")
    if isinstance(value, str):
        problem = _string_problem(value, key.max_len)
        if problem:
            raise where.error(path, problem)
    if isinstance(value, (list, dict)):
        most = MAX_ITEMS if key.max_items is None else key.max_items
        if len(value) > most:
            raise where.error(path, f"at most {most} {'items' if isinstance(value, list) else 'entries'}, got {len(value)}")
    if isinstance(value, dict):
        for name in value:
            if len(name) > MAX_STRING or _CONTROL.search(name):
                raise where.error(path, f"entry name {_short(name)} is too long or has control characters")
    if key.item_type is not None:
        for i, item in enumerate(value):
            if not isinstance(item, key.item_type) or (isinstance(item, bool) and key.item_type is not bool):
                raise where.error(path, f"item {i} must be {_type_name(key.item_type)}, got {_short(item)}")
            if isinstance(item, str):
                problem = _string_problem(item, key.max_len)
                if problem:
                    raise where.error(path, f"item {i}: {problem}")
    if key.duration:
        problem = duration_error(value, key.min or 0.0, math.inf if key.max is None else key.max,
                                 days=key.days, numbers=int in accepted or float in accepted)
        if problem:
            raise where.error(path, problem)
    else:
        if key.choices is not None and value not in key.choices:
            raise where.error(path, f"must be one of {', '.join(map(repr, key.choices))}, got {_short(value)}")
        if key.min is not None and value < key.min:
            raise where.error(path, f"must be >= {key.min}, got {value!r}")
        if key.max is not None and value > key.max:
            raise where.error(path, f"must be <= {key.max}, got {value!r}")
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise where.error(path, _cut(problem))
    return value


def _string_problem(value: str, max_len: int | None) -> str | None:
    most = MAX_STRING if max_len is None else max_len
    if len(value) > most:
        return f"must be at most {most} characters, got {len(value)}"
    if _CONTROL.search(value):
        return f"must not contain control characters, got {_short(value)}"
    return None


def _located_failure(text: str, file: str, message: str, line: int | None) -> ConfigError:
    """A ConfigError for a failure that came with at most a line: the key at that line."""
    where = Locator(text, file)
    path = where.key_at(line) if line else ()
    return where.error(path, message) if path else ConfigError(message, file, line)


def _first_line(text: str, pattern: str, longest: int) -> int | None:
    """The line of the first maximal run of `pattern` at least `longest` long (finditer over
    maximal runs is linear; a search for `{4300}` repetitions was quadratic in the text)."""
    for m in re.finditer(pattern, text):
        if m.end() - m.start() >= longest:
            return text.count("\n", 0, m.start()) + 1
    return None


def parse(text: str, file: str = "<config>", known: dict[str, Section] | None = None) -> Any:
    """Validate TOML text; returns a namespace per section (`cfg.gpu.hz`).

    `known` replaces the agent's sections (the collector validates its own file this way)."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"the file is {len(text)} characters; a config file is at most {MAX_FILE_BYTES} bytes", file)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise _located_failure(text, file, f"not valid TOML: {e}", int(m.group(1)) if m else None) from None
    except ValueError as e:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise _located_failure(text, file, f"not a usable number: {_short(str(e))}",
                               _first_line(text, r"[0-9_]+", 4300)) from None
    except RecursionError:  # arrays or inline tables nested a thousand deep
        raise _located_failure(text, file, "arrays or tables nested too deeply",
                               _first_line(text, r"[\[{][\[{ \t]*", 100)) from None
    where = Locator(text, file)
    known = sections() if known is None else known
    for name in raw:
        if name not in known:
            raise where.error((name,), f"unknown section (known: {', '.join(sorted(known))})")
    cfg = config_type(known)(file=file, locator=where)
    for name, section in known.items():
        given = raw.get(name)
        if section.parse is not None:
            setattr(cfg, name, section.parse(given, where) if given is not None else section.default)
            continue
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise where.error((name,), "must be a table")
        for key in given:
            if key not in section.keys:
                raise where.error((name, key), f"unknown key in [{name}] (known: {', '.join(section.keys)})")
        # A default list or table is copied: a caller changing one parse's must not change the next's.
        values = {k: _check_value(spec, given[k], (name, k), where) if k in given else copy.deepcopy(spec.default)
                  for k, spec in section.keys.items()}
        values = section.settings_type()(**values)
        problem = section.check(values) if section.check is not None else None
        if problem:
            raise where.error((name, problem[0]), _cut(problem[1]))
        setattr(cfg, name, values)
    return cfg


def read(path: str | os.PathLike | None, default_path: str) -> tuple[str, str]:
    """(text, file name) of a config file. An explicitly named file that is missing or
    unreadable is an error; the default path being absent reads as an empty file (the
    program then runs on its documented defaults). A file larger than MAX_FILE_BYTES is
    refused without reading it all; bytes that are not UTF-8 are located (file:line:key)."""
    explicit = path is not None
    path = Path(path or default_path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer would wait forever; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # /dev/null reads as an empty file
                raise ConfigError("not a regular file" + (" (a directory)" if stat.S_ISDIR(mode) else ""), str(path))
            os.set_blocking(fd, True)
            data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                size = os.fstat(fd).st_size
                raise ConfigError(f"the file is {size if size > MAX_FILE_BYTES else 'more than ' + str(MAX_FILE_BYTES)}"
                                  f" bytes; a config file is at most {MAX_FILE_BYTES} bytes (1 MiB)", str(path))
    except FileNotFoundError:
        if explicit:
            raise ConfigError("file not found", str(path)) from None
        return "", str(path)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", str(path)) from None
    try:
        return data.decode("utf-8"), str(path)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        text = data.decode("utf-8", "replace")
        raise _located_failure(text, str(path), f"not valid UTF-8: byte 0x{data[e.start]:02x} at column {column}",
                               line) from None


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Any:
    """Read and validate the config file; with no file at the default path, the defaults.

    An explicitly named file that is missing or unreadable is an error; the default path
    being absent is not (the daemon then runs on documented defaults).
    """
    env = os.environ if env is None else env
    text, file = read(path, DEFAULT_PATH)
    cfg = parse(text, file)
    if env.get("EGS_NVML_LIBRARY"):
        cfg.gpu.nvml_library = env["EGS_NVML_LIBRARY"]
    if env.get("EGS_AMDSMI_LIBRARY"):
        cfg.gpu.amdsmi_library = env["EGS_AMDSMI_LIBRARY"]
    if env.get("EGS_SOCKET"):
        cfg.api.socket = env["EGS_SOCKET"]
    return cfg


def markdown() -> str:
    """docs/config.md, generated from the declarations above."""
    out = ["# Configuration reference", "",
           f"One TOML file, `{DEFAULT_PATH}` by default (`--config FILE` to choose another).",
           "With no file the agent runs on the defaults below. Unknown keys, wrong types and",
           "out-of-range values are errors naming the file, line and key (exit code 2);",
           "`egs-agent check-config FILE` validates a file without starting anything, with the",
           "same rules as `run`: what it accepts, the daemon can do.",
           "SIGHUP (`systemctl reload egs-agent`) reloads the file — the default file too when the",
           "daemon runs without `--config` — and a bad file on reload keeps the running config and",
           "logs why.", "",
           "Bounds that hold for every key (each key's own range is in its row):", "",
           f"- the file is a regular file of at most {MAX_FILE_BYTES} bytes (1 MiB), in UTF-8;",
           "- numbers are finite (`nan` and `inf` are refused) and within the key's range;",
           "- durations are strings such as `250ms`, `30s`, `5m`, `1h` (and `30d` where a key says so),",
           "  within the key's range;",
           f"- strings are at most {MAX_STRING} characters (PATH_MAX) unless the key says less, with no",
           "  control characters;",
           f"- lists and tables have at most {MAX_ITEMS} entries unless the key says otherwise;",
           f"- labels (`agent.labels`, a rule's `labels`): at most {MAX_LABELS}, names of letters, digits and",
           f"  `_` (at most {MAX_LABEL_NAME} characters, not starting with a digit or `__`), string values of",
           f"  at most {MAX_LABEL_VALUE} characters.", "",
           "Generated by `python -m agent.config --markdown`; do not edit by hand.", ""]
    for s in sections().values():
        out += section_markdown(s, "##")
    return "\n".join(out)


def section_markdown(s: Section, heading: str) -> list[str]:
    """One section's heading, help and key table (docs/config.md, docs/collector.md)."""
    out = [f"{heading} `[{s.name}]`", "", s.doc, ""]
    if s.keys:
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for k, spec in s.keys.items():
            rng = ""
            if spec.duration:
                low = format_duration(spec.min) if spec.min else ""
                rng = f" ({low}..{format_duration(spec.max) if spec.max is not None else ''})"
            elif spec.min is not None or spec.max is not None:
                rng = f" ({spec.min if spec.min is not None else ''}..{spec.max if spec.max is not None else ''})"
            if spec.choices:
                rng = f" (one of {', '.join(map(str, spec.choices))})"
            default = oct(spec.default) if k.endswith("_mode") and isinstance(spec.default, int) else repr(spec.default)
            out.append(f"| `{k}` | {_type_name(spec.type)}{rng} | `{default}` | {spec.doc} |")
        out.append("")
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        print("usage: python -m agent.config --markdown", file=sys.stderr)
        sys.exit(2)
