"""Which interfaces the NIC tuning manages: the configured names, else the default route's.

The default route is read from `<procfs>/net/route` (IPv4), falling back to
`<procfs>/net/ipv6_route` for IPv6-only hosts, with the lowest metric winning as the kernel's
own route lookup does. Nothing else is ever chosen: a host with no default route and no
configured names has no managed interface, and the state says so.
"""
from __future__ import annotations

from pathlib import Path

RTF_UP = 0x1


def _ipv4_default(procfs: Path) -> list[tuple[int, str]]:
    try:
        lines = (procfs / "net" / "route").read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        f = line.split()
        # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & RTF_UP:
            found.append((int(f[6]), f[0]))
    return found


def _ipv6_default(procfs: Path) -> list[tuple[int, str]]:
    try:
        lines = (procfs / "net" / "ipv6_route").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        f = line.split()
        # dest dest_len src src_len next_hop metric refcnt use flags iface
        if len(f) >= 10 and int(f[0], 16) == 0 and f[1] == "00" and int(f[8], 16) & RTF_UP and f[9] != "lo":
            found.append((int(f[5], 16), f[9]))
    return found


def default_route_interface(procfs: str | Path) -> str | None:
    """The interface of the default route (IPv4 first, then IPv6), or None when there is none."""
    procfs = Path(procfs)
    for routes in (_ipv4_default(procfs), _ipv6_default(procfs)):
        if routes:
            return min(routes)[1]
    return None


def choose(configured: list[str], procfs: str | Path) -> tuple[list[str], str]:
    """The interfaces to manage and a sentence saying why these (for status)."""
    if configured:
        return list(dict.fromkeys(configured)), "configured in nic.interfaces"
    found = default_route_interface(procfs)
    if found is None:
        return [], (f"no default route in {Path(procfs) / 'net' / 'route'} (nor ipv6_route) and "
                    "nic.interfaces is empty: no interface is managed")
    return [found], "interface of the default route"
