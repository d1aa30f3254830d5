"""The built-in rules: a lost GPU, a critical XID and the health signals alarm without any
configuration.

They are evaluated every second (reading a gauge costs nothing) so they fire within the
recorder's `after` period of the health event and share its recording. They are ordinary
rules over the health source's gauges (`agent.sources.health`), read from the windows like
any metric, so they share the state machine, persistence, silence period and recordings of
configured ones. Health is a state, so they read its latest value (`stat = "last"`): they
fire in the tick the state changes and resolve in the tick it clears. `[alarms]
builtin_lost_gpu = false` / `builtin_critical_xid = false` / `builtin_gpu_signals = false` turns
them off (the last both signal rules). A configured
`[[alarm]]` of the same name replaces the built-in one (to add a hook, say).
"""
from __future__ import annotations

from agent.alarms.rules import Level, Rule
from agent.sources.health import GPU_LOST, GPU_SIGNAL_DEGRADED, GPU_SIGNAL_FAILED, GPU_XID_CRITICAL

LOST_GPU = Rule(
    name="gpu-lost", metric=GPU_LOST.name, levels=(Level("critical", 1.0),), operator=">=",
    window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A GPU stopped answering its driver (lost): it needs a reset or a reboot.")

CRITICAL_XID = Rule(
    name="gpu-critical-xid", metric=GPU_XID_CRITICAL.name, levels=(Level("critical", 1.0),),
    operator=">=", window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A critical XID (ECC, NVLink, fallen off the bus): see the GPU's health reasons.")


SIGNAL_FAILED = Rule(
    name="gpu-health-failed", metric=GPU_SIGNAL_FAILED.name, levels=(Level("critical", 1.0),), operator=">=",
    window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A health signal failed the GPU (row remap failure, uncorrectable ECC errors): take it out of "
                "service; see the GPU's health reasons.")

SIGNAL_DEGRADED = Rule(
    name="gpu-health-degraded", metric=GPU_SIGNAL_DEGRADED.name, levels=(Level("warning", 1.0),), operator=">=",
    window_s=5.0, stat="last", interval_s=1.0, missing="ignore", builtin=True,
    description="A health signal degrades the GPU (row remap or page retirement pending: reset needed; thermal "
                "or power-brake slowdown while it holds); see the GPU's health reasons.")


def builtin_rules(alarms_cfg) -> list[Rule]:
    out = []
    if alarms_cfg.builtin_lost_gpu:
        out.append(LOST_GPU)
    if alarms_cfg.builtin_critical_xid:
        out.append(CRITICAL_XID)
    if alarms_cfg.builtin_gpu_signals:
        out += [SIGNAL_FAILED, SIGNAL_DEGRADED]
    return out
