"""The attribution pass: who uses each GPU, bounded, as one `Snapshot`.

One pass:
1. asks every `ProcessSource` (in order of preference: the vendor libraries' lists, then DRM
   fdinfo) which processes use which GPU; a (GPU, PID) two sources name is one row, the first
   source's figures winning and a later one filling only what the first left None; a source
   that fails is reported with its reason and the others carry on;
2. ranks each GPU's processes by GPU memory (then SM %, then PID) and keeps the first `top_n`
   as rows; the rest are summed into that GPU's `other` (processes, memory, SM %) without
   being read further, so a GPU with 500 processes costs what one with `top_n` does;
3. for each kept row reads the process: its host figures (`hostproc`), its workload
   (`cgroups`: read once per process, by PID and start time, and again after `reclassify_s`),
   and for a Kubernetes workload the pod's names from the kubelet (`kubelet`); a process that
   cannot be read (exited, another PID namespace, hidepid) stays a row of workload kind
   "unknown" with the reason;
4. sums the rows per workload, per GPU: at most `top_n` workloads plus `other` per GPU.

Nothing is keyed by PID beyond one pass (the host reader's CPU counters, the workloads read
and the fdinfo source's engine counters hold the last pass's PIDs only), and no label carries a PID, so any
number of short-lived processes leaves the series and the memory where they were.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

from agent.workload import cgroups, procfs
from agent.workload.cgroups import Workload
from agent.workload.hostproc import HostFigures, HostReader
from agent.workload.kubelet import PodResources
from agent.workload.records import GpuProcess, GpuRef, ProcessSource, ProcessSourceError

DEFAULT_TOP_N = 10
RECLASSIFY_S = 60.0
_FILLABLE = ("used_memory_bytes", "sm_percent", "mem_percent", "enc_percent", "dec_percent", "kind")


class _Known(NamedTuple):
    started: float               # the process's start time: a reused PID is another process
    at: float                    # when its workload was read
    workload: Workload
    nspid: tuple[int, ...]


@dataclass
class ProcessRow:
    process: GpuProcess
    workload: Workload
    host: HostFigures | None = None
    nspid: tuple[int, ...] = ()          # the PID in each nested PID namespace (outermost first)
    reason: str | None = None            # why the process could not be read (fully)

    def to_dict(self) -> dict:
        p, h = self.process, self.host
        out = {"pid": p.pid, "source": p.source, "used_memory_bytes": p.used_memory_bytes,
               "sm_percent": p.sm_percent, "mem_percent": p.mem_percent, "enc_percent": p.enc_percent,
               "dec_percent": p.dec_percent, "kind": p.kind,
               "workload": self.workload.labels(), "cpu_percent": h.cpu_percent if h else None,
               "rss_bytes": h.rss_bytes if h else None, "user": h.user if h else self.workload.user,
               "command": h.command if h else self.workload.command, "reason": self.reason}
        if len(self.nspid) > 1:
            out["nspid"] = list(self.nspid)
        return out


@dataclass
class WorkloadTotals:
    """One workload's share of one GPU: the series of agent.workload.metrics."""

    labels: dict[str, str]               # workload, workload_kind (+ namespace, pod, container)
    processes: int = 0
    used_memory_bytes: int | None = None
    sm_percent: float | None = None

    def add(self, p: GpuProcess) -> None:
        self.processes += 1
        if p.used_memory_bytes is not None:
            self.used_memory_bytes = (self.used_memory_bytes or 0) + p.used_memory_bytes
        if p.sm_percent is not None:
            self.sm_percent = min(100.0, (self.sm_percent or 0.0) + p.sm_percent)

    def to_dict(self) -> dict:
        return {**self.labels, "processes": self.processes, "used_memory_bytes": self.used_memory_bytes,
                "sm_percent": self.sm_percent}


OTHER_LABELS = {"workload": "other", "workload_kind": "other"}


@dataclass
class GpuWorkloads:
    gpu: GpuRef
    rows: list[ProcessRow] = field(default_factory=list)
    other: WorkloadTotals = field(default_factory=lambda: WorkloadTotals(dict(OTHER_LABELS)))
    workloads: list[WorkloadTotals] = field(default_factory=list)   # `other` last, when it has any

    def to_dict(self) -> dict:
        return {**self.gpu.labels(), "processes": [r.to_dict() for r in self.rows],
                "other": self.other.to_dict(), "workloads": [w.to_dict() for w in self.workloads]}


@dataclass
class Snapshot:
    ts: float
    gpus: list[GpuWorkloads]
    sources: dict[str, dict]
    kubelet: dict | None
    top_n: int
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        """The `workloads` document (what `status --json` and `top --json` carry)."""
        return {"ts": self.ts, "top_n": self.top_n, "duration_s": self.duration_s, "sources": self.sources,
                "kubelet": self.kubelet, "gpus": [g.to_dict() for g in self.gpus]}


def merge(lists: Sequence[list[GpuProcess]]) -> list[GpuProcess]:
    """One record per (GPU, PID): the earliest list's, with None fields filled from later ones."""
    merged: dict[tuple[str, int], GpuProcess] = {}
    for records in lists:
        for p in records:
            key = (p.gpu_uuid, p.pid)
            have = merged.get(key)
            if have is None:
                merged[key] = p
                continue
            fill = {f: getattr(p, f) for f in _FILLABLE if getattr(have, f) is None and getattr(p, f) is not None}
            if fill:
                merged[key] = dataclasses.replace(have, **fill)
    return list(merged.values())


def rank_key(p: GpuProcess):
    return (-(p.used_memory_bytes if p.used_memory_bytes is not None else -1),
            -(p.sm_percent if p.sm_percent is not None else -1.0), p.pid)


class Attributor:
    """Runs passes. Holds the sources, the host reader and the kubelet client; `run` may be
    called from one thread at a time."""

    def __init__(self, sources: Sequence[ProcessSource], procfs_root: str = "/proc", top_n: int = DEFAULT_TOP_N,
                 kubelet: PodResources | None = None, clock: Callable[[], float] = time.time,
                 host: HostReader | None = None):
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {top_n}")
        self.sources = list(sources)
        self.procfs = procfs_root
        self.top_n = top_n
        self.kubelet = kubelet
        self.clock = clock
        self.host = host or HostReader(procfs_root)
        self.hidepid = procfs.hidepid(procfs_root)
        # A process's workload is read once per process and again after reclassify_s (a process
        # moved to another cgroup, a container started in an existing process's place).
        self.reclassify_s = RECLASSIFY_S
        self._known: dict[int, _Known] = {}
        self._seen: dict[int, ProcessRow] = {}   # this pass's rows by PID

    def run(self, gpus: Sequence[GpuRef]) -> Snapshot:
        started = time.perf_counter()
        lists, statuses = [], {}
        for source in self.sources:
            try:
                found = source.processes(gpus)
            except ProcessSourceError as e:
                statuses[source.name] = {"state": "error", "detail": str(e), "processes": 0}
                continue
            statuses[source.name] = {"state": "ok", "detail": "", "processes": len(found)}
            lists.append(found)
        by_gpu: dict[str, list[GpuProcess]] = {}
        for p in merge(lists):
            by_gpu.setdefault(p.gpu_uuid, []).append(p)
        out = []
        self.host.begin()
        self._seen = {}
        try:
            for gpu in gpus:
                out.append(self._gpu(gpu, sorted(by_gpu.get(gpu.uuid, ()), key=rank_key)))
        finally:
            self.host.end()
            for pid in [pid for pid in self._known if pid not in self._seen]:
                del self._known[pid]
            self._seen = {}
        return Snapshot(self.clock(), out, statuses, self.kubelet.status() if self.kubelet else None,
                        self.top_n, time.perf_counter() - started)

    def _gpu(self, gpu: GpuRef, ranked: list[GpuProcess]) -> GpuWorkloads:
        g = GpuWorkloads(gpu)
        g.rows = [self.read(p) for p in ranked[:self.top_n]]
        if self.kubelet is not None:
            self._name_pods(g.rows, gpu)
        totals: dict[str, WorkloadTotals] = {}
        for row in g.rows:
            labels = row.workload.labels()
            totals.setdefault(labels["workload"], WorkloadTotals(labels)).add(row.process)
        for p in ranked[self.top_n:]:
            g.other.add(p)
        g.workloads = sorted(totals.values(), key=lambda t: t.labels["workload"])
        if g.other.processes:
            g.workloads.append(g.other)
        return g

    def read(self, p: GpuProcess) -> ProcessRow:
        """One process's row; never raises for a process that cannot be read. A process on
        several GPUs is read once a pass (a second read would make its CPU % over no time)."""
        done = self._seen.get(p.pid)
        if done is None:
            done = self._seen[p.pid] = self._read(p)
        return dataclasses.replace(done, process=p)   # a copy: each GPU names its pods on its own

    def _read(self, p: GpuProcess) -> ProcessRow:
        try:
            host = self.host.read(p.pid)
        except procfs.ProcessUnreadable as e:
            # Say why as precisely as procfs can (hidepid, another PID namespace, exited).
            try:
                st = procfs.status(self.procfs, p.pid, self.hidepid)
            except procfs.ProcessUnreadable as e2:
                return ProcessRow(p, Workload("unknown", "unknown"), reason=e2.reason)
            return ProcessRow(p, self._classify(p.pid, st, None), None, st.nspid, e.reason)
        known = self._known.get(p.pid)
        now = self.clock()
        if known is None or known.started != host.started or now - known.at >= self.reclassify_s:
            try:
                st = procfs.status(self.procfs, p.pid, self.hidepid)
            except procfs.ProcessUnreadable as e:   # exited since its figures were read
                return ProcessRow(p, Workload("unknown", "unknown"), host, reason=e.reason)
            known = self._known[p.pid] = _Known(host.started, now, self._classify(p.pid, st, host), st.nspid)
        return ProcessRow(p, known.workload, host, known.nspid)

    def _classify(self, pid: int, st: procfs.ProcStatus, host: HostFigures | None) -> Workload:
        """The workload from the process's cgroups, else its command and user."""
        try:
            workload = cgroups.classify(procfs.read(self.procfs, pid, "cgroup", self.hidepid))
        except procfs.ProcessUnreadable:
            workload = None
        if workload is None:
            user = host.user if host else (procfs.user_name(st.uid) if st.uid is not None else None)
            workload = cgroups.process_workload(st.name, user)
        return workload

    def _name_pods(self, rows: list[ProcessRow], gpu: GpuRef) -> None:
        """Names from the kubelet for this GPU's Kubernetes rows (module `kubelet`): only when
        the kubelet gave the GPU to one pod and every Kubernetes row here is of one pod UID
        (a pod using a GPU it was not given, e.g. a privileged one, must not get the names
        of the pod that was)."""
        uids = {r.workload.pod_uid for r in rows if r.workload.kind == "kubernetes"}
        if len(uids) != 1:
            return
        assigned = self.kubelet.assigned(gpu)
        pods = {(ns, pod) for ns, pod, _c in assigned}
        if len(pods) != 1:
            return
        (namespace, pod), = pods
        containers = {c for _ns, _pod, c in assigned}
        container = containers.pop() if len(containers) == 1 else None
        name = f"k8s:{namespace}/{pod}" + (f"/{container}" if container else "")
        for r in rows:
            if r.workload.kind == "kubernetes":
                r.workload = dataclasses.replace(r.workload, name=name, namespace=namespace, pod=pod,
                                                 container=container)
