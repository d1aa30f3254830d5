"""The alarm settings, declared beside the code that uses them.

`[[alarm]]` tables are rules (validated by `agent.alarms.rules.parse_rules`, which names the
file, line and key of any mistake); `[alarms]` is an ordinary section of declared keys. docs/alarms.md describes the rule keys with examples.
"""
from __future__ import annotations

from agent.alarms.rules import parse_rules
from agent.config import Key, Section

SECTIONS = [
    Section("alarm", "Alarm rules, one `[[alarm]]` table each (keys in docs/alarms.md). Bounds: `window` 1s..1h "
            "(and at most the longest of windows.sizes to be evaluated), `interval` 1s..1d, `silence` 0 or up to 30d, "
            "`hook_timeout` 100ms..10m (a hook holds one of alarms.hook_workers that long), `consecutive`, `breaches`, "
            "`of` and `recover_after` 1..1000, `description` 1024 characters, `command` 4096 characters or 256 "
            "arguments of 4096, `timezone` 64, `nic` 15, `gpus` 256 items, `effective` 32 windows, `labels` as "
            "agent.labels; numbers finite.",
            parse=parse_rules, default=()),
    Section("alarms", "Evaluating alarm rules on the node.", {
        "enabled": Key(True, bool, "Evaluate alarm rules (the built-in ones and every [[alarm]])."),
        "builtin_lost_gpu": Key(True, bool, "Built-in rule gpu-lost: alarm while a GPU does not answer."),
        "builtin_critical_xid": Key(True, bool, "Built-in rule gpu-critical-xid: alarm while a critical XID is in its hold period."),
        "builtin_gpu_signals": Key(True, bool, "Built-in rules gpu-health-failed and gpu-health-degraded: alarm while a "
                                   "health signal (ECC, row remapping, page retirement, slowdown) fails or degrades a GPU."),
        "hook_workers": Key(2, int, "Hook commands run at the same time at most.", min=1, max=32),
        "hook_queue": Key(32, int, "Hooks waiting for a worker at most; more are dropped and counted.", min=0, max=10000),
    }),
]
