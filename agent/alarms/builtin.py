"""The built-in rules: a lost GPU and a critical XID alarm without any configuration.

They are evaluated every second (reading a gauge costs nothing) so they fire within the
recorder's `after` period of the health event and share its recording. They are ordinary
rules over the health source's gauges (`agent.sources.health`), read from the windows like
any metric, so they share the state machine, persistence, silence period and recordings of
configured ones. Health is a state, so they read its latest value (`stat = "last"`): they
fire in the tick the state changes and resolve in the tick it clears. `[alarms]
builtin_lost_gpu = false` / `builtin_critical_xid = false` turns them off. A configured
`[[alarm]]` of the same name replaces the built-in one (to add a hook, say).
"""
from __future__ import annotations

from agent.alarms.rules import Level, Rule
from agent.sources.health import GPU_LOST, GPU_XID_CRITICAL

LOST_GPU = Rule(
    name="gpu-lost", metric=GPU_LOST.name, levels=(Level("critical", 1.0),), operator=">=",
    window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A GPU stopped answering its driver (lost): it needs a reset or a reboot.")

CRITICAL_XID = Rule(
    name="gpu-critical-xid", metric=GPU_XID_CRITICAL.name, levels=(Level("critical", 1.0),),
    operator=">=", window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A critical XID (ECC, NVLink, fallen off the bus): see the GPU's health reasons.")


def builtin_rules(alarms_cfg) -> list[Rule]:
    out = []
    if alarms_cfg.builtin_lost_gpu:
        out.append(LOST_GPU)
    if alarms_cfg.builtin_critical_xid:
        out.append(CRITICAL_XID)
    return out
