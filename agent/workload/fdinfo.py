"""Per-process GPU use from the kernel's DRM fdinfo (Documentation/gpu/drm-usage-stats.rst),
the way nvtop reads it: for GPUs whose vendor library gives no per-process figures (AMD
without AMD SMI, Intel).

Every open file of a DRM device (`/dev/dri/card*`, `/dev/dri/renderD*`) has
`/proc/PID/fdinfo/FD` with keys such as:

    drm-driver:     amdgpu
    drm-pdev:       0000:03:00.0          the PCI device: matched to a GPU's bus id
    drm-client-id:  42                    one DRM client (dup'ed fds and forked children share it)
    drm-engine-gfx: 1234567 ns            busy time of one engine, cumulative
    drm-engine-capacity-render: 2         engines of that class (default 1)
    drm-memory-vram: 5120 KiB             legacy spelling of resident memory
    drm-total-vram0 / drm-resident-vram0 / drm-shared-* / drm-purgeable-* / drm-active-*

Utilisation is the engine time a client used between two passes over the wall time between
them (divided by the capacity), so a client's first pass has none (None, not 0). Engine
classes: gfx, compute, render, ccs -> `sm_percent` (summed, at most 100); names starting
`enc` -> `enc_percent`; `dec` and i915/xe's `video` (one engine for both directions) ->
`dec_percent`. Engines counted in cycles (`drm-cycles-*`, xe) are not read. Memory: the
device-local regions (`vram*`, `local*`) resident size (else `drm-memory-*`, else total);
a GPU with no device-local region (integrated) reports all its regions.

A client counts once: a `drm-client-id` already seen on the same device (another fd, or a
child that inherited it) is skipped, so it belongs to the lowest PID that holds it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from agent.workload.procfs import pids as list_pids
from agent.workload.records import GpuProcess, GpuRef, normalise_bus_id

NAME = "drm-fdinfo"
_SM_ENGINES = ("gfx", "compute", "render", "ccs")
_UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_MEMORY_KINDS = ("resident", "memory", "total")  # preference order for a region's size


@dataclass
class Client:
    """One DRM client as one fdinfo file describes it."""

    driver: str = ""
    pdev: str = ""
    client_id: str = ""
    engines_ns: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    memory: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, region) -> bytes


def parse(text: str) -> Client | None:
    """One fdinfo file; None when it is not a DRM client's (no drm-driver or drm-client-id)."""
    c = Client()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.startswith("drm-"):
            continue
        value = value.strip()
        if key == "drm-driver":
            c.driver = value
        elif key == "drm-pdev":
            c.pdev = normalise_bus_id(value)
        elif key == "drm-client-id":
            c.client_id = value
        elif key.startswith("drm-engine-capacity-"):
            n = _int(value)
            if n:
                c.capacity[key[len("drm-engine-capacity-"):]] = n
        elif key.startswith("drm-engine-"):
            number, _, unit = value.partition(" ")
            n = _int(number)
            if n is not None and unit.strip() in ("ns", ""):
                c.engines_ns[key[len("drm-engine-"):]] = n
        else:
            kind, _, region = key[len("drm-"):].partition("-")
            # `drm-total-cycles-<engine>` (xe) shares the `total-` prefix but is not memory
            if region and not region.startswith("cycles-") and kind in ("memory", "total", "resident", "shared", "purgeable", "active"):
                number, _, unit = value.partition(" ")
                n = _int(number)
                scale = _UNITS.get(unit.strip())
                if n is not None and scale is not None:
                    c.memory[(kind, region)] = n * scale
    if not c.driver or not c.client_id:
        return None
    return c


def _int(text: str) -> int | None:
    """A counter or size as the kernel prints it: a decimal >= 0 (None for anything else: a
    sign, a fraction, NaN, more digits than int() takes)."""
    if not text.isdigit():
        return None
    try:
        return int(text)
    except ValueError:
        return None


def used_memory(c: Client) -> int | None:
    """The client's GPU memory in bytes (module docstring), None when fdinfo names none."""
    regions = sorted({region for _kind, region in c.memory})
    local = [r for r in regions if r.startswith(("vram", "local"))]
    total = None
    for region in local or regions:
        for kind in _MEMORY_KINDS:
            if (kind, region) in c.memory:
                total = (total or 0) + c.memory[(kind, region)]
                break
    return total


class DrmFdinfoSource:
    """The DRM fdinfo `ProcessSource`. State between passes: the previous engine counters of
    the clients seen in the last pass only."""

    name = NAME

    def __init__(self, procfs: str = "/proc", clock: Callable[[], int] = time.monotonic_ns,
                 skip_vendors: Sequence[str] = ()):
        self.procfs = procfs
        self.clock = clock
        # GPUs of these vendors are left to their library's process list; with no GPU left the
        # walk of every process's fds (the cost of this source) is not made at all.
        self.skip_vendors = frozenset(skip_vendors)
        self._previous: dict[tuple[str, str], tuple[int, dict[str, int]]] = {}
        self.files_read = 0  # fdinfo files read in the last pass (bench/ reports it)

    def clients(self) -> dict[int, list[Client]]:
        """Each PID's DRM clients, every client once (module docstring)."""
        out: dict[int, list[Client]] = {}
        seen: set[tuple[str, str]] = set()
        self.files_read = 0
        for pid in list_pids(self.procfs):
            fd_dir = os.path.join(self.procfs, str(pid), "fd")
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # exited, or not ours to read (hidepid, no CAP_SYS_PTRACE)
                continue
            for fd in fds:
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if not target.startswith("/dev/dri/"):
                    continue
                try:
                    with open(os.path.join(self.procfs, str(pid), "fdinfo", fd), "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                except OSError:
                    continue
                self.files_read += 1
                c = parse(text)
                if c is None or (c.pdev, c.client_id) in seen:
                    continue
                seen.add((c.pdev, c.client_id))
                out.setdefault(pid, []).append(c)
        return out

    def processes(self, gpus: Sequence[GpuRef]) -> list[GpuProcess]:
        by_bus = {normalise_bus_id(g.pci_bus_id): g for g in gpus
                  if g.pci_bus_id and g.vendor not in self.skip_vendors}
        if not by_bus:
            self._previous = {}
            return []
        now = self.clock()
        previous, self._previous = self._previous, {}
        per: dict[tuple[int, str], dict] = {}
        for pid, clients in self.clients().items():
            for c in clients:
                gpu = by_bus.get(c.pdev)
                if gpu is None:
                    continue
                acc = per.setdefault((pid, gpu.uuid), {"gpu": gpu, "memory": None, "sm": None, "enc": None,
                                                       "dec": None})
                mem = used_memory(c)
                if mem is not None:
                    acc["memory"] = (acc["memory"] or 0) + mem
                key = (c.pdev, c.client_id)
                self._previous[key] = (now, dict(c.engines_ns))
                before = previous.get(key)
                if before is None or now <= before[0]:
                    continue
                dt = now - before[0]
                for engine, ns in c.engines_ns.items():
                    used = ns - before[1].get(engine, ns)
                    if used < 0:  # a counter reset: no figure this pass
                        continue
                    share = 100.0 * used / dt / c.capacity.get(engine, 1)
                    slot = ("sm" if engine in _SM_ENGINES else "enc" if engine.startswith("enc")
                            else "dec" if engine.startswith("dec") or engine == "video" else None)
                    if slot is not None:
                        acc[slot] = (acc[slot] or 0.0) + share
        out = []
        for (pid, _uuid), acc in per.items():
            gpu = acc["gpu"]
            out.append(GpuProcess(gpu.index, gpu.uuid, pid, NAME, used_memory_bytes=acc["memory"],
                                  sm_percent=_clamp(acc["sm"]), enc_percent=_clamp(acc["enc"]),
                                  dec_percent=_clamp(acc["dec"])))
        return out


def _clamp(value: float | None) -> float | None:
    return None if value is None else min(100.0, value)
