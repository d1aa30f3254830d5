"""The vendor libraries' process lists, read by the C core, as `ProcessSource`s.

The core's sampler thread reads them on its own period (`agent.native.Core(process_hz=...)`,
default `PROCESS_HZ`: every 5 s): NVML's compute and graphics lists with used memory and the
per-process SM / memory / encoder / decoder utilisation (mean of the driver's samples over the
pass's window), AMD SMI's list with VRAM and engine busy-time counters (native/egs_core.h,
"Per-process reads"). A pass here only copies the latest lists out of the core, so it costs
no library call.

    nvml = NvmlProcessSource(lambda: gpu_source.core)     # or a Core itself
    amd = AmdSmiProcessSource(lambda: gpu_source.core)

What the library does not give stays None: a GPU whose library has no list
(NOT_SUPPORTED) adds no process; an NVIDIA process with no utilisation source has
`sm_percent=None`; an AMD process's first pass has no rate yet (two counter readings make one).
A list older than `STALE_PERIODS` pass periods (a sampler held up in a hung call) is not
used. A library failure on every GPU the source serves raises `ProcessSourceError` with the
library's text; a failure on some of them leaves those out and says so in `errors`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from agent.workload.records import GpuProcess, GpuRef, ProcessSourceError

# A list is stale after this many pass periods (and at least MIN_STALE_S) without a new one.
STALE_PERIODS = 3.0
MIN_STALE_S = 15.0


def _kind(compute: bool, graphics: bool) -> str | None:
    if compute and graphics:
        return "compute+graphics"
    return "compute" if compute else "graphics" if graphics else None


class CoreProcessSource:
    """The process lists of one backend of the core ("nvidia" or "amd"). `core` is an
    `agent.native.Core` or a callable giving it (None while the GPU source has not started
    it: no processes, no error)."""

    name = ""
    backend = ""

    def __init__(self, core: Any | Callable[[], Any], clock: Callable[[], float] = time.time):
        self._core = core
        self.clock = clock
        self.errors: list[str] = []   # this pass's per-GPU failures, when some GPUs answered

    def core(self) -> Any:
        return self._core if hasattr(self._core, "processes") else self._core()

    def stale_after(self, core: Any) -> float:
        hz = getattr(core, "process_hz", 0.0)
        return max(MIN_STALE_S, STALE_PERIODS / hz) if hz > 0 else MIN_STALE_S

    def processes(self, gpus: Sequence[GpuRef]) -> list[GpuProcess]:
        core = self.core()
        self.errors = []
        if core is None or not hasattr(core, "processes"):   # not started, or a stand-in without lists
            return []
        by_uuid = {g.uuid: g for g in gpus}
        now, bound = self.clock(), self.stale_after(core)
        out: list[GpuProcess] = []
        answered = 0
        for plist in core.processes(self.backend):
            gpu = by_uuid.get(plist.uuid)
            if gpu is None or plist.state in ("none", "unsupported", "lost"):
                continue
            if plist.state != "ok":
                self.errors.append(f"GPU {gpu.index}: {plist.detail or plist.state}")
                continue
            if now - plist.ts > bound:
                self.errors.append(f"GPU {gpu.index}: process list {now - plist.ts:.0f} s old")
                continue
            answered += 1
            out.extend(self.convert(gpu, plist))
        self.finish()
        if self.errors and not answered:
            raise ProcessSourceError("; ".join(self.errors))
        return out

    def convert(self, gpu: GpuRef, plist: Any) -> list[GpuProcess]:
        raise NotImplementedError

    def finish(self) -> None:
        """End of a pass: drop state of processes not seen in it."""


class NvmlProcessSource(CoreProcessSource):
    """NVML's compute and graphics lists. Utilisation: NVML's per-process samples."""

    name = "nvml"
    backend = "nvidia"

    def convert(self, gpu: GpuRef, plist: Any) -> list[GpuProcess]:
        return [GpuProcess(gpu.index, gpu.uuid, p.pid, self.name, used_memory_bytes=_int(p.used_memory_bytes),
                           sm_percent=p.sm_percent, mem_percent=p.mem_percent, enc_percent=p.enc_percent,
                           dec_percent=p.dec_percent, kind=_kind(p.compute, p.graphics))
                for p in plist.processes]


class AmdSmiProcessSource(CoreProcessSource):
    """AMD SMI's process list. Utilisation: the gfx and encoder engines' busy time between two
    passes over the wall time between the lists (the core's timestamps), so a process's first
    pass has none. State: the previous counters of the processes of the previous pass."""

    name = "amdsmi"
    backend = "amd"

    def __init__(self, core: Any | Callable[[], Any], clock: Callable[[], float] = time.time):
        super().__init__(core, clock)
        self._previous: dict[tuple[str, int], tuple[float, float | None, float | None]] = {}
        self._current: dict[tuple[str, int], tuple[float, float | None, float | None]] = {}

    def convert(self, gpu: GpuRef, plist: Any) -> list[GpuProcess]:
        out = []
        for p in plist.processes:
            key = (gpu.uuid, p.pid)
            self._current[key] = (plist.ts, p.gfx_busy_ns, p.enc_busy_ns)
            before = self._previous.get(key)
            sm = enc = None
            if before is not None and plist.ts > before[0]:
                dt_ns = (plist.ts - before[0]) * 1e9
                sm = _share(before[1], p.gfx_busy_ns, dt_ns)
                enc = _share(before[2], p.enc_busy_ns, dt_ns)
            out.append(GpuProcess(gpu.index, gpu.uuid, p.pid, self.name, used_memory_bytes=_int(p.used_memory_bytes),
                                  sm_percent=sm, enc_percent=enc))
        return out

    def finish(self) -> None:
        self._previous, self._current = self._current, {}


def _share(before: float | None, after: float | None, dt_ns: float) -> float | None:
    """Busy share in percent of one engine between two counter readings; None without both or
    across a counter reset."""
    if before is None or after is None or after < before:
        return None
    return min(100.0, 100.0 * (after - before) / dt_ns)


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def vendor_sources(core: Any | Callable[[], Any]) -> list[CoreProcessSource]:
    """Both vendor sources over one core (or a callable giving it), NVML first."""
    return [NvmlProcessSource(core), AmdSmiProcessSource(core)]


# The core's roles (Backend.symbols) that serve a vendor's process list.
_LIST_ROLES = {"nvidia": ("compute_processes", "graphics_processes"), "amd": ("processes",)}


def covered_vendors(core: Any) -> tuple[str, ...]:
    """The vendors whose GPUs these sources cover, once the core has started: a backend that
    is up with a process-list call resolved. Their GPUs can be left out of the DRM fdinfo walk
    (`DrmFdinfoSource(skip_vendors=...)`). An AMD host read through the pyamdgpuinfo fallback
    has no AMD SMI symbols, so fdinfo still reads its GPUs."""
    return tuple(name for name, b in core.backends.items()
                 if b.state == "ok" and any(b.symbols.get(role) for role in _LIST_ROLES.get(name, ())))
