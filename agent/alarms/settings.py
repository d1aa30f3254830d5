"""The alarm, health and flight-recorder settings, declared beside the code that uses them.

`[[alarm]]` tables are rules (validated by `agent.alarms.rules.parse_rules`, which names the
file, line and key of any mistake); `[alarms]`, `[health]` and `[recorder]` are ordinary
sections of declared keys. docs/alarms.md describes the rule keys with examples.
"""
from __future__ import annotations

from agent.alarms.rules import parse_rules
from agent.config import Key, Section, parse_duration


def _duration(value) -> str | None:
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as e:
        return str(e)
    return None if seconds and seconds > 0 else "must be a positive duration such as 30s or 5m"


SECTIONS = [
    Section("alarm", "Alarm rules, one `[[alarm]]` table each (keys in docs/alarms.md).",
            parse=parse_rules, default=()),
    Section("alarms", "Evaluating alarm rules on the node.", {
        "enabled": Key(True, bool, "Evaluate alarm rules (the built-in ones and every [[alarm]])."),
        "builtin_lost_gpu": Key(True, bool, "Built-in rule gpu-lost: alarm while a GPU does not answer."),
        "builtin_critical_xid": Key(True, bool, "Built-in rule gpu-critical-xid: alarm while a critical XID is in its hold period."),
        "hook_workers": Key(2, int, "Hook commands run at the same time at most.", min=1, max=32),
        "hook_queue": Key(32, int, "Hooks waiting for a worker at most; more are dropped and counted.", min=0, max=10000),
    }),
    Section("health", "GPU health from XID errors and lost devices.", {
        "xid_hold": Key("15m", (str, int, float), "How long a critical XID keeps a GPU degraded/failed after its last occurrence.", check=_duration),
    }),
    Section("recorder", "The flight recorder: raw samples around alarms and health events.", {
        "enabled": Key(True, bool, "Record when a rule fires or a GPU's health changes."),
        "before": Key("30s", (str, int, float), "Seconds of samples kept from before the event (before + after must fit gpu.ring_seconds).", check=_duration),
        "after": Key("10s", (str, int, float), "Seconds of samples kept from after the event.", check=_duration),
        "max_bytes": Key(64 << 20, int, "Total size of the recordings directory; the oldest are deleted first.", min=1 << 16),
    }),
]
