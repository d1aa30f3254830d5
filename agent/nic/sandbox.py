"""Whether this process may do what apply mode does, checked before it matters.

The packaged unit (systemd/egs-agent.service) keeps /proc/irq and /sys read-only
(ProtectKernelTunables=) and mounts /proc with hidepid (ProtectProc=invisible). That suits
verify mode. Apply mode writes root-owned kernel files and must see whether irqbalance, a root
process, runs. Without the nic-apply drop-in it would fail on the first write. Worse, it could
stay silent: the affinity is already right on a pass, so nothing is written, while an
irqbalance it cannot see moves the interrupts back later. The checks here run on every apply
pass, so the NIC state names the setting that is missing.

Both checks use the real kernel's answers. The write check is faccessat(2) with AT_EACCESS,
which uses the effective ids and capabilities (CAP_DAC_OVERRIDE counts). statvfs(2) tells a
read-only mount apart from a permission problem. The hidepid check parses the procfs root's
own line in `<procfs>/self/mountinfo`. A fixture tree has no such file, so it is never hidden.
"""
from __future__ import annotations

import os
from pathlib import Path

DROP_IN = "apply mode needs the nic-apply drop-in (docs/nic.md, \"Running under systemd\")"

_CAP_NET_ADMIN = 12
_CAP_SYS_PTRACE = 19
# hidepid values as the kernel prints them: names since 5.8, numbers before.
_HIDEPID_OFF = ("0", "off")


def effective_caps(procfs: str | Path = "/proc") -> int | None:
    """This process's effective capability mask, or None when `<procfs>/self/status` is missing."""
    try:
        for line in (Path(procfs) / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def procfs_options(mountinfo: str, mount_point: str) -> dict[str, str] | None:
    """The superblock options of the proc mount at `mount_point`, parsed from mountinfo text.

    When several mounts share the point, the last one counts, since it hides the others.
    """
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        # mount point is field 5; after the separator come fstype, source, super options.
        if len(fields) < sep + 4 or fields[4] != mount_point or fields[sep + 1] != "proc":
            continue
        found = dict(opt.partition("=")[::2] for opt in fields[sep + 3].split(","))
    return found


def hidden_processes(procfs: str | Path) -> str | None:
    """Why other users' processes (irqbalance runs as root) are hidden under `procfs`, or None.

    hidepid hides the processes a reader may not ptrace-read. Root's own processes stay visible
    to uid 0, and CAP_SYS_PTRACE or membership of the mount's gid= group lifts it.
    """
    procfs = Path(procfs)
    try:
        mountinfo = (procfs / "self" / "mountinfo").read_text()
    except OSError:
        return None  # a fixture tree, or no procfs to ask
    opts = procfs_options(mountinfo, os.path.realpath(procfs))
    if opts is None:
        return None
    hidepid = opts.get("hidepid", "0")
    if hidepid in _HIDEPID_OFF or os.geteuid() == 0:
        return None
    caps = effective_caps(procfs)
    if caps is not None and caps >> _CAP_SYS_PTRACE & 1:
        return None
    gid = opts.get("gid")
    if gid is not None and gid.isdigit() and int(gid) in {os.getegid(), *os.getgroups()}:
        return None
    return (f"{procfs} is mounted hidepid={hidepid} (systemd ProtectProc=), so a running irqbalance, "
            f"a root process, is invisible to uid {os.geteuid()}; ProtectProc=default shows it")


def write_blocker(path: str | Path) -> str | None:
    """Why this process cannot write `path`, or None when it can (or the file is not there)."""
    try:
        if os.access(path, os.W_OK, effective_ids=True):
            return None
        read_only = os.statvfs(path).f_flag & os.ST_RDONLY
    except FileNotFoundError:
        return None  # the caller reports a missing file in its own words
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if read_only:
        return f"{path} is on a read-only mount (systemd ProtectKernelTunables=)"
    return (f"{path} is not writable by uid {os.geteuid()}: it belongs to root, so the agent needs "
            "CAP_DAC_OVERRIDE")


def missing_net_admin(procfs: str | Path) -> str | None:
    """xps_cpus also checks CAP_NET_ADMIN in the kernel, which faccessat cannot see."""
    caps = effective_caps(procfs)
    if caps is None or caps >> _CAP_NET_ADMIN & 1:
        return None
    return "writing xps_cpus needs CAP_NET_ADMIN, which this process lacks"


def summarize(problems: list[str], limit: int = 3) -> str:
    """One line for the state: the drop-in hint, the first few problems, and how many more."""
    shown = "; ".join(problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{DROP_IN}: {shown}{more}"
