"""One pass of NIC tuning: read every managed interface, compare with the instance type's
requirement, and in apply mode set what differs, then read it back.

The manager keeps what it saw between passes, so a periodic caller (the daemon component)
gets drift detection for free: an interface that held the requirement on one pass and not on
the next has drifted (someone ran `ethtool -L`, a driver reset, a hot-plug), which is counted
and reported as an event; apply mode sets it back in the same pass.

Decisions, so operators can predict it:
- "N queues" means N combined channels on combined drivers (virtio_net, ena, mlx5) and N rx plus
  N tx on rx/tx drivers (gve, veth). By default more than N satisfies the requirement and is left
  alone (`nic.exact` makes it exactly N).
- When the NIC's maximum is below N, nothing on the host can fix it: the state says so with the
  cloud-side remedy, and apply mode still raises the count to the maximum, the best this NIC can do.
- Success is reported only for what the kernel reads back after a change.
- IRQ affinity and XPS follow the channel count and are re-applied after every channel change,
  since drivers reset affinity when they re-request their interrupts.
- Apply mode checks that it may write the affinity files and see irqbalance (agent/nic/sandbox.py);
  what it may not is the part's `blocked` state and the pass's `apply_blocked` line, naming the
  nic-apply drop-in, rather than a write error on some later drift or a fight with irqbalance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.nic import affinity, ethtool, interfaces, sandbox
from agent.nic.instance_types import InstanceTable

# Channel states: which of them mean "as required" for the verify exit code and the summary.
SATISFIED = ("ok", "applied", "no-requirement")
AFFINITY_SATISFIED = ("ok", "applied", "none", "skipped", "off")


def host_side_message(required: int, maximum: int) -> str:
    return (f"needs {required} queues, the NIC offers at most {maximum}: raise the queue count on the "
            "cloud side and restart the instance")


@dataclass
class Requirement:
    state: str  # known | not-required | unknown-type | not-configured | pending
    instance_type: str | None
    source: str  # config | metadata | command line | none
    required: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Memory:
    """What the last pass saw on one interface."""
    state: str | None = None
    held: bool = False  # the requirement held after the last pass
    affinity_held: dict[str, bool] = field(default_factory=lambda: {"irq": False, "xps": False})
    drifts: dict[str, int] = field(default_factory=lambda: {"channels": 0, "irq": 0, "xps": 0})


class NicManager:
    def __init__(self, settings: Any, table: InstanceTable | None = None,
                 clock: Callable[[], float] = time.time,
                 emit: Callable[[str, dict[str, Any]], None] | None = None):
        """`settings` is the `[nic]` section; `emit(interface, data)` receives each event."""
        self.settings = settings
        self.table = table if table is not None else InstanceTable.load(settings.instance_types)
        self.clock = clock
        self.emit = emit or (lambda interface, data: None)
        self._memory: dict[str, _Memory] = {}

    # --- requirement ------------------------------------------------------------------

    def requirement(self, instance_type: str | None, source: str, pending: str | None = None) -> Requirement:
        if not instance_type:
            if pending:
                return Requirement("pending", None, "metadata", None, pending)
            return Requirement("not-configured", None, "none", None,
                               "instance type not known: set nic.instance_type or nic.metadata_enabled")
        entry = self.table.lookup(instance_type)
        if entry is None:
            return Requirement("unknown-type", instance_type, source, None,
                               f"instance type {instance_type!r} is not in the table: add it under "
                               "[nic.instance_types] with its queue count")
        if entry.required is None:
            return Requirement("not-required", instance_type, source, None,
                               f"{entry.name} has no queue requirement")
        return Requirement("known", instance_type, source, entry.required,
                           f"{entry.name} needs {entry.required} queues ({entry.source})")

    # --- the pass -----------------------------------------------------------------------

    def run_pass(self, action: str, requirement: Requirement, names: list[str] | None = None) -> dict[str, Any]:
        """action: "plan" or "verify" (read only) or "apply"; `names` overrides the configured interfaces."""
        if action not in ("plan", "verify", "apply"):
            raise ValueError(f"unknown action {action!r}")
        s = self.settings
        chosen, why = interfaces.choose(list(names or s.interfaces), s.procfs)
        try:
            cpus = affinity.online_cpus(s.sysfs)
            cpu_problem = None
        except (OSError, ValueError) as e:
            cpus, cpu_problem = [], f"cannot read the online CPUs under {s.sysfs}: {e}"
        try:
            balancer = affinity.irqbalance_pid(s.procfs)
        except OSError:
            balancer = None
        # Under hidepid an irqbalance of root's is invisible, and "not found" means nothing.
        hidden = sandbox.hidden_processes(s.procfs) if balancer is None else None
        rows = [self._interface(name, requirement, action, cpus, cpu_problem, balancer, hidden) for name in chosen]
        blocked = list(dict.fromkeys(problem for r in rows for part in ("irq", "xps")
                                     for problem in ((r["affinity"] or {}).get(part, {}).get("blocked") or [])))
        return {
            "action": action,
            "checked_at": self.clock(),
            "requirement": requirement.to_dict(),
            "interfaces_reason": why,
            "irqbalance": {"pid": balancer, "visible": hidden is None,
                           "detail": self._irqbalance_detail(balancer, hidden)},
            "apply_blocked": sandbox.summarize(blocked) if blocked else None,
            "cpus": cpus,
            "interfaces": rows,
            "drifts_total": sum(sum(r["drifts"].values()) for r in rows),
            "ok": bool(rows) and all(r["ok"] for r in rows),
        }

    @staticmethod
    def _irqbalance_detail(pid: int | None, hidden: str | None = None) -> str:
        if pid is None and hidden:
            return f"unknown: {hidden}"
        if pid is None:
            return "not running: the agent places queue interrupts itself"
        return (f"running (pid {pid}): it moves interrupts itself, so the agent leaves IRQ affinity to it "
                "and sets only XPS; stop irqbalance or ban these IRQs for the agent to place them")

    def _interface(self, name: str, req: Requirement, action: str, cpus: list[int],
                   cpu_problem: str | None, balancer: int | None, hidden: str | None) -> dict[str, Any]:
        mem = self._memory.setdefault(name, _Memory())
        apply = action == "apply"
        row: dict[str, Any] = {"interface": name, "driver": None, "required": req.required, "state": None,
                               "detail": "", "actions": [], "channels": None, "queues": None,
                               "max_queues": None, "affinity": None, "drifts": None, "ok": False}
        try:
            before = ethtool.get_channels(name)
            row["driver"] = ethtool.driver_name(name)
        except ethtool.InterfaceGone as e:
            return self._finish(row, mem, "gone", str(e))
        except ethtool.NotSupported as e:
            return self._finish(row, mem, "unsupported", str(e))
        except ethtool.EthtoolError as e:
            return self._finish(row, mem, "error", str(e))
        current = before
        row.update(channels=before.to_dict(), queues=before.queues, max_queues=before.max_queues)
        if req.required is None:
            state = "no-requirement" if req.state == "not-required" else "unknown"
            return self._finish(row, mem, state, req.detail)

        required = req.required
        insufficient = before.max_queues < required
        target = min(required, before.max_queues)
        conforming = self._conforms(before, required)

        def at_target(ch: ethtool.Channels) -> bool:
            # An undersized NIC at its maximum is as good as it gets; leaving that is drift too.
            return self._conforms(ch, required) or (insufficient and ch.queues == ch.max_queues)

        if mem.held and not at_target(before):
            mem.drifts["channels"] += 1
            self.emit(name, {"what": "drift", "part": "channels", "queues": before.queues, "required": required,
                             "reapplying": apply})
        needs_change = (not conforming) and before.queues != target and target > 0
        changed = False
        if needs_change:
            want = before.with_queues(target)
            row["actions"].append(self._describe_change(before, want, done=False))
            if apply:
                try:
                    current = ethtool.set_channels(name, want)
                except ethtool.NoPermission as e:
                    return self._finish(row, mem, "no-permission", str(e))
                except ethtool.NotSupported as e:
                    return self._finish(row, mem, "unsupported", str(e))
                except ethtool.InvalidRequest as e:
                    return self._finish(row, mem, "refused", str(e))
                except ethtool.InterfaceGone as e:
                    return self._finish(row, mem, "gone", str(e))
                except ethtool.EthtoolError as e:
                    return self._finish(row, mem, "error", str(e))
                row.update(channels=current.to_dict(), queues=current.queues)
                if current.queues != target:
                    return self._finish(row, mem, "error", (
                        f"{name}: the driver accepted {target} queues but reads back {current.queues}"))
                row["actions"][-1] = self._describe_change(before, current, done=True)
                changed = True

        if insufficient:
            state = "insufficient"
            detail = host_side_message(required, before.max_queues)
            if changed:
                detail += f"; raised to the NIC's maximum, {current.queues}"
        elif self._conforms(current, required):
            state = "applied" if changed else "ok"
            detail = (f"{current.queues} queues, set and read back" if changed
                      else f"{current.queues} queues, {required} required")
        else:
            state = "mismatch"
            detail = (f"has {current.queues} queues, needs {required}: `egs-agent nic apply` or "
                      "nic.mode = \"apply\" sets it")
        if needs_change and not apply:
            # Queue files and interrupts for the new count exist only after the change.
            parts = [p for p, on in (("irq", self.settings.irq_affinity), ("xps", self.settings.xps)) if on]
            row["affinity"] = {p: {"state": "after-channels", "detail": f"planned once {target} queues exist"}
                               for p in parts}
            if parts and target > 1:
                row["actions"].append(f"would then spread {' and '.join(parts)} over {target} queues")
        else:
            row["affinity"] = self._affinity(name, current.queues, cpus, cpu_problem, balancer, hidden, apply,
                                             mem, channels_changed=changed)
            row["actions"] += row["affinity"].pop("actions")
        return self._finish(row, mem, state, detail, held=at_target(current))

    def _finish(self, row: dict[str, Any], mem: _Memory, state: str, detail: str, held: bool = False) -> dict:
        row["state"], row["detail"] = state, detail
        row["drifts"] = dict(mem.drifts)  # a copy: status readers must not see later passes' counts
        aff = row["affinity"] or {}
        row["ok"] = state in SATISFIED and all(
            aff.get(part, {}).get("state", "off") in AFFINITY_SATISFIED for part in ("irq", "xps"))
        if mem.state != state:
            self.emit(row["interface"], {"what": "state", "from": mem.state, "to": state, "detail": detail})
        mem.state, mem.held = state, held
        if not held:
            mem.affinity_held = {"irq": False, "xps": False}
        return row

    def _conforms(self, ch: ethtool.Channels, required: int) -> bool:
        return ch.queues == required if self.settings.exact else ch.queues >= required

    @staticmethod
    def _describe_change(before: ethtool.Channels, after: ethtool.Channels, done: bool) -> str:
        verb = "set" if done else "would set"
        if before.style == "combined":
            return f"{verb} combined {before.combined} -> {after.combined}"
        return f"{verb} rx {before.rx} -> {after.rx}, tx {before.tx} -> {after.tx}"

    # --- IRQ affinity and XPS ---------------------------------------------------------

    def _affinity(self, name: str, queues: int, cpus: list[int], cpu_problem: str | None, balancer: int | None,
                  hidden: str | None, apply: bool, mem: _Memory, channels_changed: bool) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"actions": []}
        parts = {"irq": s.irq_affinity, "xps": s.xps}
        for part, enabled in parts.items():
            if not enabled:
                out[part] = {"state": "off", "detail": f"nic.{'irq_affinity' if part == 'irq' else 'xps'} is false"}
                continue
            if cpu_problem:
                out[part] = {"state": "error", "detail": cpu_problem}
                continue
            if queues < 2:
                out[part] = {"state": "none", "detail": "a single queue: nothing to spread"}
                continue
            if part == "irq" and balancer is not None:
                out[part] = {"state": "skipped", "detail": self._irqbalance_detail(balancer)}
                continue
            # Writing affinity next to an irqbalance it cannot see would start the fight that
            # "skipped" avoids (a NIC without queue interrupts has nothing to fight over);
            # xps_cpus checks CAP_NET_ADMIN in the kernel, which faccessat cannot see.
            why = None
            if apply and part == "irq" and hidden:
                has_irqs = affinity.queue_irqs(name, queues, s.sysfs, s.procfs)
                why = hidden if has_irqs else None
            elif apply and part == "xps":
                why = sandbox.missing_net_admin(s.procfs)
            if why:
                out[part] = {"state": "blocked", "detail": sandbox.summarize([why]), "blocked": [why],
                             "changed": 0, "rows": []}
                mem.affinity_held[part] = False
                continue
            try:
                if part == "irq":
                    report = affinity.irq_pass(name, queues, cpus, s.sysfs, s.procfs, apply)
                else:
                    report = affinity.xps_pass(name, queues, cpus, s.sysfs, apply)
            except OSError as e:  # the interface vanished between reads, a root that is not there
                report = {"state": "error", "detail": str(e), "changed": 0, "rows": []}
            # A change right after a channel change is the driver's reset, not someone's drift.
            moved = report["changed"] or report["state"] == "mismatch"
            if moved and mem.affinity_held[part] and not channels_changed:
                mem.drifts[part] += 1
                self.emit(name, {"what": "drift", "part": part, "reapplying": apply})
            for r in report["rows"]:
                if r["want"] != r["have"]:
                    label = f"irq {r['irq']} ({r['name']})" if part == "irq" else f"xps tx-{r['queue']}"
                    out["actions"].append(f"would set {label} -> CPUs {affinity.format_cpu_list(r['want'])}")
            if report["changed"]:
                out["actions"].append(f"set {part} on {report['changed']} queue(s), read back as planned")
            mem.affinity_held[part] = report["state"] in ("ok", "applied")
            out[part] = report
        return out
