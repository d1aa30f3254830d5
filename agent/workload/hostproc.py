"""A GPU process's host figures (CPU %, RSS, user, command line), read through psutil.

psutil reads `<psutil.PROCFS_PATH>/PID/{stat,statm,status,cmdline}`; the reader points that at
its procfs before each pass (the host source does the same with the same `procfs` setting).
CPU % is the process's CPU time between two passes over the wall time between them (100 = one
core, as top shows it), so a process's first pass has none. The state kept between passes is
one entry per process of the last pass, so PIDs that come and go leave nothing behind.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import psutil

from agent.workload.procfs import ProcessUnreadable

MAX_COMMAND = 200  # characters of the command line kept


class HostFigures(NamedTuple):
    cpu_percent: float | None
    rss_bytes: int | None
    user: str | None
    command: str | None   # the command line, else the command name


class HostReader:
    def __init__(self, procfs: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.procfs = procfs
        self.clock = clock
        self._cpu: dict[int, tuple[float, float, float]] = {}   # pid -> (create time, cpu s, at)
        self._seen: set[int] = set()

    def begin(self) -> None:
        """Start a pass: psutil reads this reader's procfs; entries of PIDs not read in this
        pass are dropped at `end`."""
        psutil.PROCFS_PATH = self.procfs
        self._seen = set()

    def end(self) -> None:
        for pid in [p for p in self._cpu if p not in self._seen]:
            del self._cpu[pid]

    def tracked(self) -> int:
        return len(self._cpu)

    def read(self, pid: int) -> HostFigures:
        self._seen.add(pid)
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                created = p.create_time()
                times = p.cpu_times()
                rss = p.memory_info().rss
                user = p.username()
                cmdline = p.cmdline()
                name = p.name()
        except psutil.NoSuchProcess:  # ZombieProcess is one too: a zombie has no figures left
            raise ProcessUnreadable(pid, "gone", f"pid {pid}: exited while its figures were read") from None
        except psutil.AccessDenied:
            raise ProcessUnreadable(pid, "denied", f"pid {pid}: permission denied reading its figures "
                                                   f"in {self.procfs}") from None
        now = self.clock()
        cpu = times.user + times.system
        before = self._cpu.get(pid)
        self._cpu[pid] = (created, cpu, now)
        percent = None
        if before is not None and before[0] == created and now > before[2]:
            percent = max(0.0, 100.0 * (cpu - before[1]) / (now - before[2]))
        command = " ".join(cmdline) if cmdline else name
        return HostFigures(percent, rss, user, command[:MAX_COMMAND] if command else None)
