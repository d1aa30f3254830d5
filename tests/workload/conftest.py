"""Fixtures for the workload attribution tests: procfs fixture trees, real cgroups (v1 and v2)
with real processes in them, and a stand-in for the vendor libraries' process lists.

`proc_tree` writes the files the attribution reads (status, stat, statm, cmdline, cgroup,
fd links and fdinfo) for made-up PIDs under a temporary procfs root. `cgroup` makes cgroups
under this machine's real hierarchies (cgroup v1 controllers at /sys/fs/cgroup/<name>, v2 at
/sys/fs/cgroup/unified here, or /sys/fs/cgroup on a pure v2 host) and moves a process in; the
finalizer moves everything back to the root and removes what it made. `vendor` returns a
ProcessSource that answers fixed records, as the C core's NVML list will.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from agent.workload.records import GpuProcess

CGROUP_ROOT = Path("/sys/fs/cgroup")


class ProcTree:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "stat").write_text("cpu  1 0 1 100 0 0 0 0 0 0\nbtime 1700000000\n")
        (root / "mounts").write_text(f"proc {root} proc rw,nosuid,nodev,noexec,relatime 0 0\n")

    def add(self, pid: int, name: str = "python3", uid: int = 0, cgroup: str = "0::/\n",
            nspid: tuple[int, ...] | None = None, cmdline: list[str] | None = None,
            cpu_ticks: int = 0, rss_pages: int = 100, fds: dict[int, tuple[str, str]] | None = None,
            start: int = 1000) -> Path:
        d = self.root / str(pid)
        (d / "fd").mkdir(parents=True, exist_ok=True)
        (d / "fdinfo").mkdir(exist_ok=True)
        ns = "\t".join(str(p) for p in (nspid or (pid,)))
        (d / "status").write_text(f"Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
                                  f"Pid:\t{pid}\nPPid:\t1\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
                                  f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\nNSpid:\t{ns}\n")
        self.set_cpu(pid, cpu_ticks, name, rss_pages, start)
        (d / "statm").write_text(f"{rss_pages * 4} {rss_pages} 10 1 0 50 0\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in (cmdline or [name])) + b"\0")
        (d / "cgroup").write_text(cgroup)
        for fd, (target, info) in (fds or {}).items():
            (d / "fd" / str(fd)).symlink_to(target)
            (d / "fdinfo" / str(fd)).write_text(info)
        return d

    def set_cpu(self, pid: int, ticks: int, name: str = "python3", rss_pages: int = 100, start: int = 1000) -> None:
        # fields 14/15 utime/stime, 22 starttime (ticks after boot), 24 rss (pages)
        fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194304", "0", "0", "0", "0",
                  str(ticks), "0", "0", "0", "20", "0", "1", "0", str(start), "100000", str(rss_pages)]
        fields += ["0"] * 27
        (self.root / str(pid) / "stat").write_text(f"{pid} ({name}) " + " ".join(fields) + "\n")

    def hide(self, value: str = "invisible") -> None:
        (self.root / "mounts").write_text(f"proc {self.root} proc rw,relatime,hidepid={value} 0 0\n")


@pytest.fixture
def proc_tree(tmp_path):
    return ProcTree(tmp_path / "proc")


@pytest.fixture(autouse=True)
def _restore_psutil_procfs():
    yield
    psutil.PROCFS_PATH = "/proc"


class FixedSource:
    """A ProcessSource answering `records` (a list, or a callable of the GPUs)."""

    def __init__(self, records, name: str = "nvml"):
        self.records, self.name = records, name

    def processes(self, gpus):
        return list(self.records(gpus) if callable(self.records) else self.records)


@pytest.fixture
def vendor():
    def make(records, name="nvml"):
        return FixedSource(records, name)
    return make


def record(gpu, pid, memory=None, sm=None, source="nvml"):
    return GpuProcess(gpu.index, gpu.uuid, pid, source, used_memory_bytes=memory, sm_percent=sm)


@pytest.fixture
def rec():
    return record


def _v2_root() -> Path | None:
    for path in (CGROUP_ROOT / "unified", CGROUP_ROOT):
        if (path / "cgroup.controllers").exists() or (path / "cgroup.procs").exists() and \
                (path / "cgroup.subtree_control").exists():
            return path
    return None


class Cgroups:
    def __init__(self):
        self.made: list[tuple[Path, Path]] = []  # (hierarchy root, cgroup made)
        self.procs: list[subprocess.Popen] = []

    def hierarchy(self, name: str) -> Path:
        """A v1 controller's mount ("cpu", "freezer", "systemd" for name=systemd) or "v2"."""
        root = _v2_root() if name == "v2" else CGROUP_ROOT / name
        if os.geteuid() != 0:
            pytest.skip("needs root to create cgroups")
        if root is None or not (root / "cgroup.procs").exists():
            pytest.skip(f"no cgroup hierarchy {name!r} mounted on this machine")
        return root

    def put(self, pid: int, hierarchy: str, path: str) -> Path:
        """Make `path` in `hierarchy` and move `pid` into it."""
        root = self.hierarchy(hierarchy)
        d = root / path.strip("/")
        for parent in reversed([d, *d.parents]):
            if parent == root or root not in parent.parents:
                continue
            if not parent.exists():
                parent.mkdir()
                self.made.append((root, parent))
        (d / "cgroup.procs").write_text(str(pid))
        return d

    def sleeper(self) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "60"])
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for root, d in reversed(self.made):
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.fixture
def cgroups():
    c = Cgroups()
    yield c
    c.cleanup()
