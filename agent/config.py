"""The agent's configuration: one TOML file, validated against declared sections.

Every key is declared once, with its type, default, range and help text, in a `Section`.
The core sections live here; packages with their own settings (NIC tuning, alarms, the
outbound stream) declare theirs in a `settings` module listed in `SECTION_MODULES`, so
each feature keeps its settings beside its code. `docs/config.md` is generated from these
declarations (`python -m agent.config --markdown`), so the docs cannot drift from the code.

Errors name the file, the line and the dotted key (`agent.toml:12: gpu.hz: must be ...`)
and the CLI turns them into exit code 2.

Where a key is given in the file, the file wins; the few environment variables DESIGN.md
names (EGS_NVML_LIBRARY, EGS_AMDSMI_LIBRARY, EGS_SOCKET) are applied by `load()` after the
file, since an operator sets them to override one run.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

DEFAULT_PATH = "/etc/egs-agent/agent.toml"

# Packages whose `settings` module declares further sections (a list `SECTIONS`).
SECTION_MODULES: tuple[str, ...] = (
    "agent.alarms.settings",
    "agent.nic.settings",
    "agent.stream.settings",
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
    check: Callable[[SimpleNamespace], tuple[str, str] | None] | None = None


class Locator:
    """Maps a key path, e.g. ("alarm", 0, "threshold"), to its line in the file.

    tomllib gives values without positions, so this reads the text once and records the
    line of every table header and `key =` assignment. Inline tables and multi-line values
    are located at the line where their key starts, which is where an operator looks.
    """

    _header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _assign = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")

    def __init__(self, text: str, file: str):
        self.file = file
        self.lines: dict[tuple, int] = {}
        counters: dict[tuple, int] = {}
        table: tuple = ()
        for number, raw in enumerate(text.splitlines(), start=1):
            m = self._header.match(raw)
            if m:
                names = tuple(self._split(m.group(2)))
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

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest located parent."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def error(self, path: tuple, message: str) -> ConfigError:
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
        return ConfigError(message, self.file, self.line(path), key.replace(".[", "["))


# --- the core sections -------------------------------------------------------------------

def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


CORE_SECTIONS: list[Section] = [
    Section("agent", "Identity and directories of this agent.", {
        "host_id": Key("", str, "Host identity sent to the collector; empty means the hostname."),
        "labels": Key({}, dict, "Extra labels attached to everything this host sends (string values)."),
        "state_dir": Key("/var/lib/egs-agent", str, "Persistent state: spool, alarm state, recordings.", check=_nonempty),
        "log_level": Key("info", str, "Log level.", choices=("debug", "info", "warning", "error")),
    }),
    Section("gpu", "The native GPU core. Two sampling tiers on one thread: the fast fields at `hz`, the slow ones at `slow_hz`.", {
        "enabled": Key(True, bool, "Sample GPUs at all."),
        "nvidia": Key(True, bool, "Use the NVIDIA backend (NVML)."),
        "amd": Key(True, bool, "Use the AMD backend (AMD SMI, else pyamdgpuinfo)."),
        "nvml_library": Key("libnvidia-ml.so.1", str, "NVML library path or soname (env EGS_NVML_LIBRARY overrides).", check=_nonempty),
        "amdsmi_library": Key("", str, "AMD SMI library path; empty means libamd_smi.so under $ROCM_PATH/lib or /opt/rocm/lib (env EGS_AMDSMI_LIBRARY overrides)."),
        "hz": Key(10.0, (int, float), "Sampling rate of the fast fields (utilization, memory busy, memory used/total, temperature, power), reads per second. 10 by default because a real driver is costly: NVML 580 on an H100 spent ~400 us of CPU per read, so every field at 100 Hz took ~40 % of a core per GPU, and NVML refreshes utilization itself only every 1/6 to 1 s.", min=1, max=5000),
        "slow_hz": Key(1.0, (int, float), "Sampling rate of the slow fields (SM and memory clocks, energy counter, fan): read on every round(hz / slow_hz)-th tick of the same grid, so at most gpu.hz.", min=0.1, max=5000),
        "ring_seconds": Key(60.0, (int, float), "Seconds of raw samples kept per GPU for the flight recorder.", min=1, max=3600),
    }, check=lambda g: ("slow_hz", f"must be <= gpu.hz ({g.hz!r}), got {g.slow_hz!r}") if g.slow_hz > g.hz else None),
    Section("host", "Host CPU, memory and network figures (psutil).", {
        "enabled": Key(True, bool, "Collect host figures."),
        "interval": Key(1.0, (int, float), "Seconds between host readings.", min=0.1, max=60),
        "procfs": Key("/proc", str, "procfs root (tests point it at a fixture tree).", check=_nonempty),
        "sysfs": Key("/sys", str, "sysfs root.", check=_nonempty),
        "nics": Key([], list, "NICs to report; empty means all but loopback.", item_type=str),
    }),
    Section("windows", "Windowed statistics over 1-second buckets.", {
        "sizes": Key(["10s", "1m", "5m", "15m"], list, "Windows kept for every metric (s, m, h suffixes).", item_type=str,
                     check=lambda v: None if all(parse_duration(x, strict=False) for x in v) and v else "each must be a duration like 10s, 1m, 5m"),
    }),
    Section("api", "The local API on a Unix socket.", {
        "socket": Key("/run/egs-agent/agent.sock", str, "Socket path (env EGS_SOCKET or --socket override).", check=_nonempty),
        "socket_mode": Key(0o660, int, "Socket file mode.", min=0, max=0o777),
        "socket_group": Key("", str, "Group owning the socket; empty keeps the process's group."),
        "watch_queue": Key(16, int, "Updates buffered per Watch client before coalescing to the latest.", min=1, max=4096),
    }),
]


def parse_duration(text: str, strict: bool = True) -> float | None:
    """'10s', '1m', '5m', '1h', '250ms' or a bare number of seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        if strict:
            raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 1m, 5m)")
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


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
        raise where.error(path, f"must be {_type_name(key.type)}, got {type(value).__name__} {value!r}")
    if key.item_type is not None:
        for i, item in enumerate(value):
            if not isinstance(item, key.item_type):
                raise where.error(path, f"item {i} must be {_type_name(key.item_type)}, got {item!r}")
    if key.choices is not None and value not in key.choices:
        raise where.error(path, f"must be one of {', '.join(map(repr, key.choices))}, got {value!r}")
    if key.min is not None and value < key.min:
        raise where.error(path, f"must be >= {key.min}, got {value!r}")
    if key.max is not None and value > key.max:
        raise where.error(path, f"must be <= {key.max}, got {value!r}")
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise where.error(path, problem)
    return value


def parse(text: str, file: str = "<config>", known: dict[str, Section] | None = None) -> SimpleNamespace:
    """Validate TOML text; returns a namespace per section (`cfg.gpu.hz`).

    `known` replaces the agent's sections (the collector validates its own file this way)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise ConfigError(f"not valid TOML: {e}", file, int(m.group(1)) if m else None) from None
    where = Locator(text, file)
    known = sections() if known is None else known
    for name in raw:
        if name not in known:
            raise where.error((name,), f"unknown section (known: {', '.join(sorted(known))})")
    cfg = SimpleNamespace(file=file, locator=where)
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
        values = {k: _check_value(spec, given[k], (name, k), where) if k in given else spec.default
                  for k, spec in section.keys.items()}
        values = SimpleNamespace(**values)
        problem = section.check(values) if section.check is not None else None
        if problem:
            raise where.error((name, problem[0]), problem[1])
        setattr(cfg, name, values)
    return cfg


def read(path: str | os.PathLike | None, default_path: str) -> tuple[str, str]:
    """(text, file name) of a config file. An explicitly named file that is missing or
    unreadable is an error; the default path being absent reads as an empty file (the
    program then runs on its documented defaults)."""
    explicit = path is not None
    path = Path(path or default_path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        if explicit:
            raise ConfigError("file not found", str(path)) from None
        return "", str(path)
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", str(path)) from None


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> SimpleNamespace:
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
           "`egs-agent check-config FILE` validates a file without starting anything.",
           "SIGHUP reloads the file; a bad file on reload keeps the running config and logs why.",
           "", "Generated by `python -m agent.config --markdown`; do not edit by hand.", ""]
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
            if spec.min is not None or spec.max is not None:
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
