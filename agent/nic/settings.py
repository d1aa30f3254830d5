"""The `[nic]` configuration section, declared beside the code that uses it.

The instance-type overrides live in the same section as a sub-table
(`[nic.instance_types]`, name = queue count) so one place describes the NIC feature.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agent.config import Key, Section, _short

MODES = ("off", "verify", "apply")
MAX_QUEUES = 256  # above any NIC in use; catches typos such as 40 for 4
# Instance-type names are short (ecs.gn7i-c32g1.32xlarge is 23 characters); the overrides
# table holds a fleet's types, and the built-in table a few hundred.
MAX_TYPE_NAME = 128
MAX_OVERRIDES = 4096


def _check_overrides(value: dict[str, Any]) -> str | None:
    for name, queues in value.items():
        if not name.strip():
            return "instance type names must not be empty"
        if len(name) > MAX_TYPE_NAME:
            return f"instance type names must be at most {MAX_TYPE_NAME} characters, got {len(name)}"
        if isinstance(queues, bool) or not isinstance(queues, int):
            return f"{name!r}: queue count must be an integer (0 = no requirement), got {_short(queues)}"
        if not 0 <= queues <= MAX_QUEUES:
            return f"{name!r}: queue count must be 0..{MAX_QUEUES}, got {_short(queues)}"
    return None


def _check_interfaces(value: list[str]) -> str | None:
    for name in value:
        # IFNAMSIZ is 16 including the terminating NUL; '/' and whitespace are never valid.
        if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            return f"not a valid interface name: {name!r}"
    return None


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _check_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a port out of range)
    except ValueError as e:
        return f"must be an http:// or https:// URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        return "must be an http:// or https:// URL with a host"
    return None


SECTIONS = [
    Section("nic", "NIC multi-queue tuning by instance type (see docs/nic.md).", {
        "mode": Key("verify", str, "off: do nothing; verify: report only, never change; apply: set at start, "
                    "re-check every interval and re-apply on drift.", choices=MODES),
        "instance_type": Key("", str, "This host's instance type, e.g. ecs.gn5-c8g1.14xlarge (with or without "
                             "'ecs.'); empty: ask the metadata service when enabled.", max_len=MAX_TYPE_NAME),
        "metadata_enabled": Key(False, bool, "Learn the instance type from the cloud metadata service when "
                                "instance_type is empty."),
        "metadata_url": Key("http://100.100.100.200/latest/meta-data/instance/instance-type", str,
                            "Metadata URL whose body is the instance type (at most 2048 characters).", max_len=2048,
                            check=_check_url),
        "metadata_timeout": Key(2.0, (int, float), "Seconds one metadata request may take.", min=0.1, max=30),
        "interfaces": Key([], list, "Interfaces to manage; empty means the interface of the default route. "
                          "No other interface is ever touched. At most 64.", item_type=str, max_items=64,
                          check=_check_interfaces),
        "check_interval": Key(30.0, (int, float), "Seconds between checks (and re-applies in apply mode).",
                              min=1, max=86400),
        "exact": Key(False, bool, "Require exactly the table's queue count; by default more queues than "
                     "required also satisfy it and are left alone."),
        "irq_affinity": Key(True, bool, "Spread the queues' interrupts over the online CPUs (skipped while "
                            "irqbalance runs)."),
        "xps": Key(True, bool, "Set transmit packet steering so each tx queue is used by the CPU serving it."),
        "procfs": Key("/proc", str, "procfs root (net/route, interrupts, irq/N/smp_affinity_list).",
                      check=_nonempty),
        "sysfs": Key("/sys", str, "sysfs root (class/net/DEV/queues, device/msi_irqs, cpu/online).",
                     check=_nonempty),
        "instance_types": Key({}, dict, "Extra or overriding instance types: name = required queue count "
                              f"(0 = no requirement), as [nic.instance_types]; at most {MAX_OVERRIDES} entries.",
                              max_items=MAX_OVERRIDES, check=_check_overrides),
    }),
]
