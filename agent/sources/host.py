"""The host source: CPU, load, memory and per-NIC traffic, from procfs (the NIC counters through psutil).

psutil reads `/proc/net/dev` under `psutil.PROCFS_PATH`, so pointing `[host] procfs` at a
fixture tree makes every figure here testable without this machine's own numbers. Three
files are read here directly, under the same root (docs/benchmarks.md has what each saves
on a cold tick):
- `<procfs>/loadavg`, because psutil takes the load from the `getloadavg(3)` syscall, which
  no fixture can change;
- `<procfs>/stat`, once a tick for both the total and the per-CPU times (`read_cpu_times`):
  psutil reads the whole file once for each;
- `<procfs>/meminfo`, for its MemTotal and MemAvailable lines (`read_memory`).

CPU utilization and network rates are differences between two readings; the first
reading after start therefore yields only the gauges (memory, load). A counter that went
backwards (a NIC re-created, a counter reset) yields no rate for that interval rather
than a huge or negative one.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import psutil

from agent.metrics import Metric, register
from agent.sources.base import Sample, Source

for _m in (
    Metric("load1", "", "Host load average over 1 minute (runnable + uninterruptible tasks).", scope="host"),
    Metric("load5", "", "Host load average over 5 minutes.", scope="host"),
    Metric("load15", "", "Host load average over 15 minutes.", scope="host"),
    Metric("memory_used_bytes", "bytes", "Host memory in use: total minus available.", scope="host"),
    Metric("memory_total_bytes", "bytes", "Host memory size (MemTotal).", scope="host"),
    Metric("net_rx_errors_per_second", "errors/s", "Receive errors per second.", scope="nic"),
    Metric("net_tx_errors_per_second", "errors/s", "Transmit errors per second.", scope="nic"),
    Metric("net_rx_drops_per_second", "packets/s", "Received packets dropped per second.", scope="nic"),
    Metric("net_tx_drops_per_second", "packets/s", "Transmitted packets dropped per second.", scope="nic"),
    Metric("net_rx_bytes_total", "bytes", "Bytes received since the NIC appeared (the kernel's counter).", kind="counter", scope="nic"),
    Metric("net_tx_bytes_total", "bytes", "Bytes sent since the NIC appeared (the kernel's counter).", kind="counter", scope="nic"),
    Metric("net_rx_packets_total", "packets", "Packets received since the NIC appeared (the kernel's counter).", kind="counter", scope="nic"),
    Metric("net_tx_packets_total", "packets", "Packets sent since the NIC appeared (the kernel's counter).", kind="counter", scope="nic"),
):
    register(_m)

# psutil field -> metric, for the per-NIC counters as the kernel keeps them (what Prometheus'
# rate() wants: a NIC re-created starts again from zero, which rate() reads as a reset).
_NET_TOTALS = (
    ("bytes_recv", "net_rx_bytes_total"),
    ("bytes_sent", "net_tx_bytes_total"),
    ("packets_recv", "net_rx_packets_total"),
    ("packets_sent", "net_tx_packets_total"),
)

# psutil field -> metric, for the per-NIC rates.
_NET_RATES = (
    ("bytes_recv", "net_rx_bytes_per_second"),
    ("bytes_sent", "net_tx_bytes_per_second"),
    ("packets_recv", "net_rx_packets_per_second"),
    ("packets_sent", "net_tx_packets_per_second"),
    ("errin", "net_rx_errors_per_second"),
    ("errout", "net_tx_errors_per_second"),
    ("dropin", "net_rx_drops_per_second"),
    ("dropout", "net_tx_drops_per_second"),
)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CpuTimes(NamedTuple):
    """One `cpu` line of /proc/stat in seconds, with psutil's field names. A kernel that gives
    fewer columns (before 2.6.33 there is no guest_nice) leaves the rest 0."""

    user: float = 0.0
    nice: float = 0.0
    system: float = 0.0
    idle: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    guest: float = 0.0
    guest_nice: float = 0.0


PROC_FILE_MAX = 16 << 20  # /proc/stat of a 1000-CPU host is well under 1 MiB


def read_proc(path: str, size: int = 1 << 16) -> bytes:
    """A small procfs file in one read (they are generated whole on the first read); OSError
    for one over PROC_FILE_MAX (`host.procfs` pointing somewhere it should not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks, got = [], 0
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return b"".join(chunks)
            got += len(chunk)
            if got > PROC_FILE_MAX:
                raise OSError(f"{path}: over {PROC_FILE_MAX >> 20} MiB, not a procfs file")
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_cpu_times(procfs: str) -> tuple[CpuTimes | None, dict[str, CpuTimes]]:
    """(all CPUs, {"0": cpu0, "1": cpu1, ...}) from one read of `<procfs>/stat`, by the
    kernel's CPU number; the total is None when the file has no `cpu` line. An offline CPU has
    no line of its own; a line that does not parse is left out, as if offline."""
    total, per_cpu = None, {}
    for line in read_proc(os.path.join(procfs, "stat")).splitlines():
        if not line.startswith(b"cpu"):
            break  # the cpu lines come first
        name, *ticks = line.split()
        try:
            times = CpuTimes(*(int(t) / _CLOCK_TICKS for t in ticks[:len(CpuTimes._fields)]))
        except ValueError:
            continue
        if name == b"cpu":
            total = times
        else:
            per_cpu[name[3:].decode("ascii", "replace")] = times
    return total, per_cpu


def read_memory(procfs: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from `<procfs>/meminfo`: the two lines the memory
    figures need, without parsing the other fifty. A kernel before 3.14 has no MemAvailable:
    then psutil's estimate of it (from free, cached and reclaimable memory) is used. A line
    that does not parse counts as missing; (0, 0) when there is no total to go by."""
    total = available = None
    for line in read_proc(os.path.join(procfs, "meminfo")).splitlines():
        if line.startswith(b"MemTotal:"):
            total = _kib_line(line)
        elif line.startswith(b"MemAvailable:"):
            available = _kib_line(line)
        else:
            continue
        if total is not None and available is not None:
            break  # the kernel puts both in the first three lines
    if total is None:
        return 0, 0
    if available is None:
        try:
            vm = psutil.virtual_memory()
        except (ValueError, IndexError, KeyError, OSError):  # the rest of the file is broken too
            return 0, 0
        return vm.total, vm.available
    return total, available


def _kib_line(line: bytes) -> int | None:
    """The bytes of a `Name: N kB` meminfo line; None for one that does not parse."""
    try:
        value = int(line.split()[1])
    except (IndexError, ValueError):
        return None
    return value * 1024 if value >= 0 else None


def cpu_busy_total(times) -> tuple[float, float]:
    """(busy, total) seconds of a psutil cputimes reading.

    guest and guest_nice are already counted inside user and nice by the kernel
    (kernel/sched/cputime.c), so they are left out of the total; idle and iowait are the
    not-busy part. This is the definition `top` and psutil's cpu_percent use.
    """
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def utilization(before, after) -> float | None:
    busy0, total0 = cpu_busy_total(before)
    busy1, total1 = cpu_busy_total(after)
    dt = total1 - total0
    if dt <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * (busy1 - busy0) / dt))


class HostSource(Source):
    name = "host"

    def __init__(self, settings: Any):
        super().__init__()
        self.settings = settings
        self._cpu = None
        self._percpu = None
        self._net = None
        self._net_at: float | None = None
        self._last_at: float | None = None

    def start(self) -> None:
        if not self.settings.enabled:
            self.status.state = "disabled"
            return
        self._apply_procfs()

    def reconfigure(self, settings: Any) -> None:
        self.settings = settings
        if settings.enabled and self.status.state == "disabled":
            self.status.state = "starting"
        if not settings.enabled:
            self.status.state = "disabled"
        self._apply_procfs()

    def _apply_procfs(self) -> None:
        # psutil keeps the root as a module global; the host source is its only user here.
        psutil.PROCFS_PATH = str(self.settings.procfs)

    def collect(self, now: float) -> list[Sample]:
        if not self.settings.enabled:
            return []
        # The daemon ticks once a second; a longer interval skips ticks (with a little slack
        # so a tick arriving a few ms early still counts).
        if self._last_at is not None and now - self._last_at < self.settings.interval - 0.05:
            return []
        self._last_at = now
        self._apply_procfs()
        out: list[Sample] = []
        out += self._cpu_samples(now)
        out += self._memory_samples(now)
        out += self._load_samples(now)
        out += self._net_samples(now)
        self.status.detail = {"procfs": self.settings.procfs}
        return out

    def _cpu_samples(self, now: float) -> list[Sample]:
        total, percpu = read_cpu_times(self.settings.procfs)
        out = []
        if self._cpu is not None and total is not None:
            value = utilization(self._cpu, total)
            if value is not None:
                out.append(Sample.reading("cpu_utilization_percent", {}, value, now))
            for cpu, b in percpu.items():  # a CPU offline at either reading has no figure
                a = self._percpu.get(cpu) if self._percpu is not None else None
                value = utilization(a, b) if a is not None else None
                if value is not None:
                    out.append(Sample.reading("cpu_utilization_percent", {"cpu": cpu}, value, now))
        self._cpu, self._percpu = total, percpu
        return out

    def _memory_samples(self, now: float) -> list[Sample]:
        total, available = read_memory(self.settings.procfs)
        if not total:  # a meminfo without MemTotal: no figures (null), never a made-up 0 %
            return []
        used = total - available
        return [Sample.reading("memory_used_percent", {}, 100.0 * used / total, now),
                Sample.reading("memory_used_bytes", {}, used, now),
                Sample.reading("memory_total_bytes", {}, total, now)]

    def _load_samples(self, now: float) -> list[Sample]:
        fields = read_proc(os.path.join(self.settings.procfs, "loadavg")).split()
        try:
            loads = [float(f) for f in fields[:3]]
        except ValueError:
            return []  # a loadavg that does not parse: no load figures, the rest still come
        return [Sample.reading(name, {}, value, now)
                for name, value in zip(("load1", "load5", "load15"), loads) if value == value]

    def _net_samples(self, now: float) -> list[Sample]:
        # nowrap=False: psutil's default papers over a counter going backwards by adding the
        # old value, which would turn a re-created NIC into a huge phantom rate.
        counters = psutil.net_io_counters(pernic=True, nowrap=False)
        wanted = set(self.settings.nics)
        if wanted:
            counters = {nic: c for nic, c in counters.items() if nic in wanted}
        else:
            counters = {nic: c for nic, c in counters.items() if nic != "lo"}
        out = [Sample.reading(metric, {"nic": nic}, float(getattr(c, field)), now)
               for nic, c in counters.items() for field, metric in _NET_TOTALS]
        if self._net is not None and self._net_at is not None and now > self._net_at:
            dt = now - self._net_at
            for nic, c in counters.items():
                prev = self._net.get(nic)
                if prev is None:
                    continue
                for field, metric in _NET_RATES:
                    delta = getattr(c, field) - getattr(prev, field)
                    if delta >= 0:
                        out.append(Sample.reading(metric, {"nic": nic}, delta / dt, now))
        self._net, self._net_at = counters, now
        return out

    @property
    def nics(self) -> set[str] | None:
        """The NICs of the latest reading (None before the first)."""
        return None if self._net is None else set(self._net)


def build(cfg, ctx) -> HostSource:
    """The host source (`agent.sources.SOURCES`)."""
    return HostSource(cfg.host)
