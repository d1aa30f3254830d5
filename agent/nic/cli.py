"""`egs-agent nic plan|apply|verify`: the NIC tuning, run once, in this process.

No daemon is needed: the verbs read the same `[nic]` settings and run one pass of the same
manager the daemon's component runs. Exit codes: plan 0 (1 when it cannot read a NIC);
verify 0 when every managed interface holds its requirement, else 1; apply 0 when after
the pass every managed interface holds it, else 1; 2 for bad usage or config.
"""
from __future__ import annotations

import argparse
import json
import sys

from agent import config as config_mod
from agent.nic.manager import NicManager

_READ_FAILURES = ("gone", "unsupported", "error")


def register(subparsers) -> None:
    nic = subparsers.add_parser("nic", help="NIC multi-queue tuning by instance type",
                                description="Plan, verify or apply the NIC queue count, IRQ affinity and XPS "
                                            "the instance type needs (no daemon needed).")
    verbs = nic.add_subparsers(dest="nic_action", metavar="ACTION")
    verbs.required = True
    for action, text in (("plan", "show what apply would change"),
                         ("verify", "check, change nothing; exit 1 when something differs"),
                         ("apply", "set what differs and read it back")):
        p = verbs.add_parser(action, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--interface", action="append", metavar="NAME",
                       help="manage this interface (repeatable; default: nic.interfaces, else the default route's)")
        p.add_argument("--instance-type", metavar="TYPE", help="instance type (default: nic.instance_type)")
        p.add_argument("--config", metavar="FILE", help=f"config file (default {config_mod.DEFAULT_PATH})")
        p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    settings = cfg.nic
    manager = NicManager(settings)
    if args.instance_type:
        requirement = manager.requirement(args.instance_type, "command line")
    elif settings.instance_type:
        requirement = manager.requirement(settings.instance_type, "config")
    else:
        # The CLI does not wait on the metadata service; the daemon asks it in the background.
        requirement = manager.requirement(None, "none")
    report = manager.run_pass(args.nic_action, requirement, names=args.interface)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(render(report))
    if args.nic_action == "plan":
        return 1 if not report["interfaces"] or any(r["state"] in _READ_FAILURES for r in report["interfaces"]) else 0
    return 0 if report["ok"] else 1


def render(report: dict) -> str:
    req = report["requirement"]
    lines = [f"instance type: {req['instance_type'] or '(unknown)'} ({req['source']}): {req['detail']}"]
    if not report["interfaces"]:
        lines.append(f"no interface: {report['interfaces_reason']}")
    for row in report["interfaces"]:
        queues = "" if row["queues"] is None else f" queues {row['queues']}/{row['max_queues']} max"
        driver = f" [{row['driver']}]" if row["driver"] else ""
        lines.append(f"{row['interface']}{driver}:{queues} -> {row['state']}: {row['detail']}")
        aff = row.get("affinity") or {}
        for part in ("irq", "xps"):
            if part in aff:
                lines.append(f"  {part}: {aff[part]['state']}: {aff[part]['detail']}")
        for action in row["actions"]:
            lines.append(f"  - {action}")
    lines.append(f"irqbalance: {report['irqbalance']['detail']}")
    if report.get("apply_blocked"):
        lines.append(f"blocked: {report['apply_blocked']}")
    return "\n".join(lines)
