"""The fuzz layer over configuration: every declared key of every section of the agent's
config (agent.config.sections(): the core sections, [alarms], [health], [recorder], [nic],
[stream], and every key of an `[[alarm]]` rule) and of the collector's
(agent.collector.settings.SECTIONS) gets hostile values — NaN, ±inf, 1e308, -1, 0, huge
integers, empty and 1 MB strings, control characters, wrong types, bogus durations such as
"999999h", invalid UTF-8 in the file — written to a real TOML file and loaded as `run` and
`check-config` load it. Each must give a ConfigError naming the file, a line and the dotted
key, or a config that is usable: what `run` builds from it (windows, durations, hook
timeouts, rule windows, the stream's backoff and channel options, the collector's
retentions) does not raise and stays within the documented bounds. Never a crash (any other
exception), a stall (pytest's timeout) or unbounded memory (`make fuzz` runs under ulimit -v).

Two layers: a sweep that gives every key every value of a fixed hostile list (the same in
every run, so each key is always covered), and a hypothesis test per section that draws
several keys and random values at once. `make test` runs the short `ci` profile, `make fuzz`
the `long` one (tests/conftest.py).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from agent import config
from agent.alarms import rules as rules_mod
from agent.config import parse_duration
from agent.backoff import Backoff
from agent.collector import settings as collector_settings
from agent.daemon import Daemon
from agent.sources.health import Health
from agent.windows import Windows

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(3600 if LONG else 300)]

BAD_BYTE = "\U0010fffd"  # stands for an invalid UTF-8 sequence; swapped for raw bytes on write
BAD_SEQUENCES = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80")
MEGA = "a" * 1_000_000
TOKEN = "0123456789abcdef-token"
RULE_BASE = {"name": "fuzz", "metric": "gpu_temperature_celsius", "threshold": 80}

# --- the targets: every declared key -------------------------------------------------------

AGENT_SECTIONS = {s.name: s for s in config.sections().values() if s.keys}
AGENT_KEYS = [(name, key) for name, s in AGENT_SECTIONS.items() for key in s.keys]
ALARM_KEYS = [("alarm", key) for key in rules_mod.KEYS]
COLLECTOR_KEYS = [(name, key) for name, s in collector_settings.SECTIONS.items() for key in s.keys]
ALL_KEYS = [("agent", t) for t in AGENT_KEYS + ALARM_KEYS] + [("collector", t) for t in COLLECTOR_KEYS]


def test_every_section_and_key_is_a_target():
    """A section added later (a `parse` one included) must be added here too."""
    parse_sections = {s.name for s in config.sections().values() if s.parse is not None}
    assert parse_sections == {"alarm"}, f"teach this fuzz layer the new parse sections: {parse_sections - {'alarm'}}"
    assert {"agent", "gpu", "host", "windows", "api", "alarms", "health", "recorder", "nic", "stream"} <= set(AGENT_SECTIONS)
    assert len(ALL_KEYS) == (sum(len(s.keys) for s in AGENT_SECTIONS.values()) + len(rules_mod.KEYS)
                             + sum(len(s.keys) for s in collector_settings.SECTIONS.values()))


def test_every_number_key_declares_both_bounds():
    """The sweep below finds an unbounded number only when it makes something fail; this
    asks for the bound itself, so a new key cannot ship without one."""
    for sections in (AGENT_SECTIONS, collector_settings.SECTIONS):
        for s in sections.values():
            for key, spec in s.keys.items():
                types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
                if (int in types or float in types) and bool not in types:
                    assert spec.min is not None and spec.max is not None, f"{s.name}.{key} has no min or max"
                if spec.duration:
                    assert spec.max is not None, f"{s.name}.{key}: a duration needs a max"


# --- writing TOML ----------------------------------------------------------------------------

_ESCAPES = str.maketrans({c: f"\\u{c:04x}" for c in [*range(0x20), 0x7F, ord('"'), ord("\\")]})


def _string(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write(path: Path, tables: list[tuple[str, dict]], bad: bytes = b"\xff") -> dict[tuple, int]:
    """`[name]` (or `[[alarm]]`) tables of key = value lines; returns the line of each key."""
    lines, where = [], {}
    for name, values in tables:
        lines.append("[[alarm]]" if name == "alarm" else f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {toml_value(value)}")
            where[(name, key)] = len(lines)
    path.write_bytes("\n".join(lines).encode("utf-8") .replace(BAD_BYTE.encode("utf-8"), bad) + b"\n")
    return where


def dotted(name: str, key: str) -> str:
    return f"alarm[0].{key}" if name == "alarm" else f"{name}.{key}"


# --- the two programs' loading, and what `run` builds ---------------------------------------

def load(kind: str, path: Path):
    return config.load(path, env={}) if kind == "agent" else collector_settings.load(path)


def tables_for(kind: str, given: dict[tuple, object]) -> list[tuple[str, dict]]:
    """The file for some (section, key) = value: the program's minimal valid file, overlaid."""
    sections: dict[str, dict] = {}
    if kind == "collector":
        sections["consumers"] = {"tokens": [TOKEN]}
    if any(name == "alarm" for name, _ in given):
        rule = dict(RULE_BASE)
        if ("alarm", "hook_timeout") in given and ("alarm", "command") not in given:
            rule["command"] = ["/bin/true"]
        sections["alarm"] = rule
    for (name, key), value in given.items():
        sections.setdefault(name, {})[key] = value
    return list(sections.items())


def check_shape(value, spec: config.Key, where: str) -> None:
    if isinstance(value, float):
        assert math.isfinite(value), where
    if isinstance(value, str):
        assert len(value) <= (spec.max_len or config.MAX_STRING) and "\x00" not in value, where
    if isinstance(value, (list, dict)):
        assert len(value) <= (spec.max_items or config.MAX_ITEMS), where
    if spec.min is not None and not spec.duration and isinstance(value, (int, float)):
        assert spec.min <= value <= spec.max, where


def usable_agent(cfg) -> None:
    """What `run` builds from the file (Daemon.__init__, the components' settings)."""
    for name, s in AGENT_SECTIONS.items():
        for key, spec in s.keys.items():
            check_shape(getattr(getattr(cfg, name), key), spec, f"{name}.{key}")
    sizes = Daemon._window_sizes(cfg)
    assert sizes and all(1 <= size <= config.MAX_WINDOW_S for size in sizes)
    Windows(sizes, clock=lambda: 0.0).stats()
    Health(hold_s=parse_duration(cfg.health.xid_hold))
    for seconds in (parse_duration(cfg.health.xid_hold), parse_duration(cfg.recorder.before), parse_duration(cfg.recorder.after)):
        assert 0 < seconds <= 86400
    assert 1 <= parse_duration(cfg.stream.interval) <= 60  # what the outbox gathers buckets for
    from agent.native import slow_mask
    slow_mask(cfg.gpu.slow_fields)  # what the core is built with: no unknown field gets there
    for labels in (cfg.agent.labels,):
        assert len(labels) <= config.MAX_LABELS and all(isinstance(v, str) for v in labels.values())
    for rule in cfg.alarm:
        assert 1 <= rule.window_s <= config.MAX_WINDOW_S
        assert 1 <= rule.interval_s <= rules_mod.MAX_INTERVAL_S
        assert 0 <= rule.silence_s <= rules_mod.MAX_SILENCE_S
        assert 1 <= rule.trigger_m <= rule.trigger_n <= rules_mod.MAX_EVALUATIONS
        assert all(math.isfinite(level.threshold) for level in rule.levels)
        if rule.hook is not None:
            assert rules_mod.MIN_HOOK_TIMEOUT_S <= rule.hook.timeout_s <= rules_mod.MAX_HOOK_TIMEOUT_S
        rule.describe(), rule.fingerprint(), rule.schedule.active(time.time())
    s = cfg.stream
    backoff = Backoff(s.backoff_base, s.backoff_multiplier, s.backoff_jitter, s.backoff_max)
    assert all(0 <= backoff.next() <= s.backoff_max * (1 + s.backoff_jitter) for _ in range(50))
    assert s.spool_segment_bytes * 2 <= s.spool_max_bytes
    from agent.stream.client import channel_options
    channel_options(s)
    assert len(cfg.api.socket.encode("utf-8", "surrogatepass")) <= config.SOCKET_PATH_BYTES


def usable_collector(cfg) -> None:
    now = time.time()
    for name, s in collector_settings.SECTIONS.items():
        for key, spec in s.keys.items():
            value = getattr(getattr(cfg, name), key)
            check_shape(value, spec, f"{name}.{key}")
            if spec.duration:
                seconds = collector_settings.retention_seconds(value)
                assert seconds is not None and 0 < seconds <= spec.max and now - seconds > 0, f"{name}.{key}"
    assert all(16 <= len(t) <= 4096 and t.isascii() for t in cfg.consumer_tokens)


def outcome(kind: str, path: Path, lines: dict[tuple, int], given: dict[tuple, object]) -> str:
    """Load the file: a located ConfigError, or a usable config. Returns which."""
    try:
        cfg = load(kind, path)
    except config.ConfigError as e:
        text = str(e)
        assert e.file == str(path), text
        assert "\n" not in text and len(text) < 2000, text[:300]
        if path.stat().st_size > config.MAX_FILE_BYTES:
            assert "at most" in e.message, text
            return "refused"
        assert e.line is not None and e.key, f"no line or key: {text[:300]}"
        assert text.startswith(f"{path}:{e.line}: {e.key}: "), text[:300]
        names = {name for name, _ in given}
        allowed = tuple(("alarm[0]" if n == "alarm" else f"{n}") for n in names)
        if kind == "collector" and ("tls", "plaintext") in given:
            allowed += ("ingest.listen", "consumers")  # plaintext only on loopback; no tokens needed
        assert e.key == "alarm[0]" or e.key.startswith(tuple(a + "." for a in allowed) + tuple(a + "[" for a in allowed)) \
            or e.key in allowed, f"{e.key} for {sorted(given)}: {text[:300]}"
        for (name, key) in given:
            if e.key == dotted(name, key):
                assert e.line == lines[(name, key)], text[:300]
        return "refused"
    (usable_agent if kind == "agent" else usable_collector)(cfg)
    return "loaded"


# --- layer 1: every key gets every value of a fixed hostile list ----------------------------

FIXED = [
    math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -1.0, 0.0, -1, 0, 1, 2**31, 2**63 - 1, -2**63, 10**100,
    True, False, "", " ", "0", "-1", "nan", "inf", "1e308", "999999h", "100000h", "0s", "-5m", "1e308s", "10s", "1h",
    "30d", "250ms", "5 minutes", MEGA, "\x00", "a\nb", "\u202e", "😀" * 100, "127.evil.example:7443", "localhost:7443",
    "[::1]:0", "/dev/zero", "/", "http://[", "00:00-23:59", "Mars/Olympus", "mon-fri", "x" * 5000,
    [], [math.nan], ["10s"] * 10_000, ["a" * 100_000], [[[]]], [1, "a", 2.5],
    {}, {"a": 1}, {"a": {"b": math.inf}}, {f"k{i}": "v" for i in range(5000)}, {"": ""}, {"x" * 10_000: "v"},
]


HEAVY = {id(v): type(v) for v in FIXED if len(toml_value(v)) > 50_000}


def fixed_for(kind: str, target: tuple) -> list:
    """FIXED for this key; the heavy values (a megabyte of TOML to parse) only where the key
    takes that type, except under the long profile: for any other key they are refused on
    their type after the same parse, which one key already shows."""
    name, key = target
    if LONG or name == "alarm":
        return FIXED
    spec = (AGENT_SECTIONS if kind == "agent" else collector_settings.SECTIONS)[name].keys[key]
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    return [v for v in FIXED if id(v) not in HEAVY or HEAVY[id(v)] in types]


@pytest.mark.parametrize("kind, target", ALL_KEYS, ids=[f"{k}:{dotted(*t)}" for k, t in ALL_KEYS])
def test_every_key_takes_every_hostile_value(tmp_path, kind, target):
    path = tmp_path / "fuzz.toml"
    for value in fixed_for(kind, target):
        given = {target: value}
        lines = write(path, tables_for(kind, given))
        outcome(kind, path, lines, given)


@pytest.mark.parametrize("kind, target", ALL_KEYS, ids=[f"{k}:{dotted(*t)}" for k, t in ALL_KEYS])
@pytest.mark.parametrize("bad", BAD_SEQUENCES, ids=[b.hex() for b in BAD_SEQUENCES])
def test_invalid_utf8_in_any_value_names_its_line_and_key(tmp_path, kind, target, bad):
    path = tmp_path / "fuzz.toml"
    given = {target: f"a{BAD_BYTE}b"}
    lines = write(path, tables_for(kind, given), bad)
    with pytest.raises(config.ConfigError) as info:
        load(kind, path)
    e = info.value
    assert (e.file, e.line, e.key) == (str(path), lines[target], dotted(*target)), str(e)
    assert "UTF-8" in e.message


# --- layer 2: hypothesis, several keys of a section at once ---------------------------------

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -1.0, 0.0, -0.0, 0.5, 1e-9]
SPECIAL_INTS = [-1, 0, 1, 2**31, 2**53 + 1, 2**63 - 1, -2**63, 10**100, 4096, 65536, 1 << 40]
SPECIAL_STRINGS = [s for s in FIXED if isinstance(s, str)] + ["1.5m", "0.1s", "3650d", "3651d", "1d", "24h", "60m"]
plain_text = st.text(st.characters(exclude_characters=BAD_BYTE, exclude_categories=("Cs",)), max_size=40)

scalars = st.one_of(
    st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_INTS), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
    st.sampled_from(SPECIAL_STRINGS), plain_text,
    plain_text.map(lambda s: s[:3] + BAD_BYTE + s[3:]),  # invalid UTF-8 somewhere in the value
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=6),
    st.dictionaries(plain_text, scalars, max_size=6),
    st.sampled_from([["10s"] * 10_000, {f"k{i}": "v" for i in range(3000)}, [MEGA], {"a": [[{"b": MEGA}]]}]),
)

SECTION_TARGETS = ([("agent", name, [(name, k) for k in s.keys]) for name, s in AGENT_SECTIONS.items()]
                   + [("agent", "alarm", ALARM_KEYS)]
                   + [("collector", name, [(name, k) for k in s.keys]) for name, s in collector_settings.SECTIONS.items()])


@pytest.mark.parametrize("kind, section, keys", SECTION_TARGETS, ids=[f"{k}:{s}" for k, s, _ in SECTION_TARGETS])
@given(data=st.data())
def test_random_values_of_a_section_are_refused_with_a_location_or_usable(tmp_path, kind, section, keys, data):
    chosen = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=min(4, len(keys)), unique=True))
    given = {target: data.draw(values, label=dotted(*target)) for target in chosen}
    path = tmp_path / "fuzz.toml"
    lines = write(path, tables_for(kind, given), data.draw(st.sampled_from(BAD_SEQUENCES)))
    outcome(kind, path, lines, given)


@pytest.mark.parametrize("kind", ["agent", "collector"])
@given(data=st.data())
def test_values_drawn_near_the_bounds_load_or_are_refused_at_their_key(tmp_path, kind, data):
    """Values that look right (durations, in-range numbers, short names): most of these load,
    so this is where the "usable" half of the contract gets its exercise."""
    keys = AGENT_KEYS if kind == "agent" else COLLECTOR_KEYS
    sections = AGENT_SECTIONS if kind == "agent" else collector_settings.SECTIONS
    chosen = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=5, unique=True))
    given = {}
    for name, key in chosen:
        spec = sections[name].keys[key]
        given[(name, key)] = data.draw(near(spec, spec.default), label=f"{name}.{key}")
    path = tmp_path / "fuzz.toml"
    lines = write(path, tables_for(kind, given))
    outcome(kind, path, lines, given)


def near(spec: config.Key, default):
    if spec.duration:
        units = ["ms", "s", "m", "h"] + (["d"] if spec.days else [])
        return st.builds(lambda n, u: f"{n}{u}", st.integers(0, 5000), st.sampled_from(units))
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, (int, float)) and spec.min is not None:
        low, high = spec.min, spec.max
        if isinstance(default, int) and spec.type is int:
            return st.integers(int(low) - 2, int(high) + 2)
        return st.floats(low - 1, high + 1, allow_nan=False)
    if spec.choices:
        return st.sampled_from(list(spec.choices) + ["", "x"])
    if isinstance(default, list):
        return st.lists(st.sampled_from(["10s", "1m", "1h", "2h", "eth0", "127.0.0.1:7443", "[::1]:1", "x:1", TOKEN]),
                        max_size=5)
    if isinstance(default, dict):
        return st.dictionaries(st.sampled_from(["rack", "zone", "ecs.gn5", "__x", "1a"]),
                               st.one_of(st.sampled_from(["r1", "", "v" * 300]), st.integers(0, 300)), max_size=4)
    return st.one_of(st.just(default), st.sampled_from(["", "/tmp/x", "x" * 300, "127.0.0.1:0", "http://h/x"]))
