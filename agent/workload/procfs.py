"""Reading one process's files under a configurable procfs root, with the ways it fails named.

A PID a GPU source listed can be gone by the time we read it (it exited), belong to a PID
namespace this procfs does not show (the agent in a container without the host's PID
namespace), or be hidden (`hidepid=` on the proc mount: invisible, or visible but unreadable).
Each becomes a `ProcessUnreadable` with a reason an operator can act on; none is an error of
the pass.
"""
from __future__ import annotations

import functools
import os
import pwd
from dataclasses import dataclass
from pathlib import Path


class ProcessUnreadable(Exception):
    """One process's files could not be read. `state` is "gone" (no such PID in this procfs)
    or "denied" (the files are there but not readable by the agent)."""

    def __init__(self, pid: int, state: str, reason: str):
        super().__init__(reason)
        self.pid, self.state, self.reason = pid, state, reason


@dataclass(frozen=True)
class ProcStatus:
    """The fields of /proc/PID/status the attribution uses."""

    name: str                       # the command name (comm), at most 15 characters
    uid: int | None                 # real uid
    nspid: tuple[int, ...]          # this PID in each nested PID namespace, outermost first


def read(procfs: str | Path, pid: int, name: str, hide: str | None = None) -> str:
    """`<procfs>/<pid>/<name>` as text. `hide` is the proc mount's hidepid value, if any (see
    `hidepid`), named in the reason so the operator knows why a PID is not readable."""
    path = os.path.join(procfs, str(pid), name)
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        # ESRCH: the task exited while its directory was open.
        if os.path.isdir(os.path.join(procfs, str(pid))):
            raise ProcessUnreadable(pid, "gone", f"pid {pid}: exited while its {name} was read") from None
        if hide is not None:
            reason = (f"pid {pid}: not visible in {procfs}: mounted with hidepid={hide}, and the agent "
                      f"(uid {os.geteuid()}) may not see other users' processes")
        else:
            reason = (f"pid {pid}: not in {procfs} (exited since it was listed, or in a PID namespace "
                      f"this procfs does not show)")
        raise ProcessUnreadable(pid, "gone", reason) from None
    except PermissionError:
        hint = f"; {procfs} is mounted with hidepid={hide}" if hide is not None else ""
        raise ProcessUnreadable(pid, "denied", f"pid {pid}: permission denied reading {path} "
                                              f"(agent uid {os.geteuid()}){hint}") from None


def parse_status(text: str) -> ProcStatus:
    name, uid, nspid = "", None, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Uid":
            fields = value.split()
            uid = int(fields[0]) if fields and fields[0].isdigit() else None
        elif key == "NSpid":
            nspid = tuple(int(v) for v in value.split() if v.isdigit())
    return ProcStatus(name, uid, nspid)


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    """The user name of `uid` (as psutil gives it: the number when there is no such user)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def status(procfs: str | Path, pid: int, hide: str | None = None) -> ProcStatus:
    return parse_status(read(procfs, pid, "status", hide))


def hidepid(procfs: str | Path) -> str | None:
    """The `hidepid=` option of the proc filesystem mounted at `procfs`, from `<procfs>/mounts`
    (None: not set, or the mount table is not readable). Values are the kernel's: 0/1/2 or,
    since Linux 5.8, off/noaccess/invisible/ptraceable."""
    root = os.path.normpath(str(procfs))
    try:
        with open(os.path.join(root, "mounts"), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last mount on a path is the one in effect
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "proc" and os.path.normpath(parts[1]) == root:
            opts = dict(o.partition("=")[::2] for o in parts[3].split(","))
            found = opts.get("hidepid")
    return None if found in (None, "0", "off") else found


def pids(procfs: str | Path) -> list[int]:
    """The PIDs in `procfs`, ascending (what a hidepid mount hides is simply absent)."""
    try:
        return sorted(int(n) for n in os.listdir(procfs) if n.isdigit())
    except OSError:
        return []
