"""A GPU process's host figures (CPU %, RSS, user, command line).

Each pass reads one file per process, `<procfs>/PID/stat`: CPU time (utime + stime), RSS and
the start time, which with the PID is the process's identity (a reused PID is a new process).
A process's user and command line are read through psutil once per process: psutil reads
`<psutil.PROCFS_PATH>/PID/{status,cmdline}`, and the reader points that at its procfs before
each pass (the host source does the same with the same `procfs` setting). Reading every
figure through psutil on every pass cost ~80 us a process here (three opens of the process's
files and one of /proc/stat for the boot time); one `stat` read costs a fraction of that
(bench/workload.py, docs/benchmarks.md).

CPU % is the process's CPU time between two passes over the wall time between them (100 = one
core, as top shows it), so a process's first pass has none. The state kept between passes is
one entry per process of the last pass, so PIDs that come and go leave nothing behind.
"""
from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import psutil

from agent.workload import procfs as procfs_mod
from agent.workload.procfs import ProcessUnreadable

MAX_COMMAND = 200  # characters of the command line kept
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class HostFigures(NamedTuple):
    cpu_percent: float | None
    rss_bytes: int | None
    user: str | None
    command: str | None   # the command line, else the command name
    started: int          # the process's start time (clock ticks after boot): its identity with the PID


class _Entry(NamedTuple):
    started: int
    user: str | None
    command: str | None
    cpu_s: float
    at: float


class HostReader:
    def __init__(self, procfs: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.procfs = procfs
        self.clock = clock
        self._entries: dict[int, _Entry] = {}
        self._seen: set[int] = set()

    def begin(self) -> None:
        """Start a pass: psutil reads this reader's procfs; entries of PIDs not read in this
        pass are dropped at `end`."""
        psutil.PROCFS_PATH = self.procfs
        self._seen = set()

    def end(self) -> None:
        for pid in [p for p in self._entries if p not in self._seen]:
            del self._entries[pid]

    def tracked(self) -> int:
        return len(self._entries)

    def read(self, pid: int) -> HostFigures:
        self._seen.add(pid)
        started, cpu, rss = parse_stat(procfs_mod.read(self.procfs, pid, "stat"), pid)
        now = self.clock()
        before = self._entries.get(pid)
        if before is None or before.started != started:
            before = None
            user, command = self._identity(pid)
        else:
            user, command = before.user, before.command
        self._entries[pid] = _Entry(started, user, command, cpu, now)
        percent = None
        if before is not None and now > before.at:
            percent = max(0.0, 100.0 * (cpu - before.cpu_s) / (now - before.at))
        return HostFigures(percent, rss, user, command, started)

    def _identity(self, pid: int) -> tuple[str | None, str | None]:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                cmdline = p.cmdline()
                command = (" ".join(cmdline) if cmdline else p.name())[:MAX_COMMAND] or None
                return p.username(), command
        except psutil.NoSuchProcess:  # ZombieProcess is one too: a zombie has no figures left
            raise ProcessUnreadable(pid, "gone", f"pid {pid}: exited while its figures were read") from None
        except psutil.AccessDenied:
            raise ProcessUnreadable(pid, "denied", f"pid {pid}: permission denied reading its command line "
                                                   f"in {self.procfs}") from None


def parse_stat(text: str, pid: int) -> tuple[int, float, int]:
    """(start time in ticks, CPU seconds, RSS bytes) of a /proc/PID/stat. The command name is
    in parentheses and may hold spaces and ')', so fields are counted after the last ')'."""
    fields = text.rpartition(")")[2].split()
    try:
        # fields 14 utime, 15 stime, 22 starttime, 24 rss (pages); fields[0] is field 3
        return int(fields[19]), (int(fields[11]) + int(fields[12])) * _TICK, int(fields[21]) * _PAGE
    except (IndexError, ValueError):
        raise ProcessUnreadable(pid, "gone", f"pid {pid}: its stat file is cut short (exiting?)") from None
