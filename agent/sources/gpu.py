"""The GPU source: the native core's per-second aggregates, as samples for the windows.

The core's C thread samples every field at `gpu.hz`; once a tick this source drains one
(count, mean, min, max, last) record per (device, metric) and turns it into a `Sample`
labelled gpu/uuid/vendor/model. That is all Python ever does with GPU readings, so its cost
is the number of devices × fields, whatever the rate.

Missing vendor libraries are not failures (DESIGN.md): the core reports those backends as
`unavailable` with the reason, and this source stays up with no devices. If the native
extension itself is not built, both backends are reported unavailable with that reason.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable

from agent.metrics import GPU_METRICS
from agent.sources.base import Sample, Source

log = logging.getLogger("egs-agent")

VENDORS = ("nvidia", "amd")


def default_core_factory(settings: SimpleNamespace):
    from agent.native import Core  # the native extension may be missing on a bare checkout

    return Core.from_settings(settings)


class GpuSource(Source):
    name = "gpu"

    def __init__(self, settings: SimpleNamespace, core_factory: Callable[[SimpleNamespace], Any] | None = None):
        super().__init__()
        self.settings = settings
        self.core_factory = core_factory or default_core_factory
        self.core = None
        self._why_no_core: str | None = None
        self._devices: list = []
        self._labels: dict[int, dict[str, str]] = {}
        self._identity: list[tuple] = []

    def start(self) -> None:
        if not self.settings.enabled:
            self.status.state = "disabled"
            self._why_no_core = "gpu.enabled = false"
            return
        try:
            core = self.core_factory(self.settings)
        except ImportError as e:
            self.status.state = "unavailable"
            self._why_no_core = f"native core not built ({e}); run `make native`"
            return
        core.start()
        self.core = core
        self._refresh_devices()
        self.status.state = "ok" if self._devices else "unavailable"

    def stop(self) -> None:
        if self.core is not None:
            self.core.stop()

    def _refresh_devices(self) -> None:
        devices = list(self.core.devices())
        # The label dicts stay the same objects while the devices' identities do (they are
        # shared with every sample and series of the GPU): rebuilt only when one changed.
        identity = [(d.index, d.uuid, d.vendor, d.name) for d in devices]
        if identity != self._identity:
            self._labels = {d.index: {"gpu": str(d.index), "uuid": d.uuid, "vendor": d.vendor, "model": d.name}
                            for d in devices}
            self._identity = identity
        self._devices = devices

    @property
    def devices(self) -> list:
        """The devices as of the latest collection (their state, lost reason, unsupported fields)."""
        return self._devices

    def collect(self, now: float) -> list[Sample]:
        if self.core is None:
            return []
        stats = self.core.drain()
        # Device states change (lost) between drains; re-read them, it is one short C call.
        self._refresh_devices()
        out = []
        for s in stats:
            labels = self._labels.get(s.gpu)
            if labels is None or s.count <= 0 or s.mean is None:
                continue
            out.append(Sample(s.metric, labels, int(s.count), float(s.mean) * s.count, float(s.min),
                              float(s.max), float(s.last), float(s.last_ts)))
        self.status.state = "ok" if self._devices else "unavailable"
        sampler = getattr(self.core, "sampler_stats", None)
        if sampler is not None:
            self.status.detail = {"devices": len(self._devices), "sampler": sampler()}
        return out

    # --- for Status --------------------------------------------------------------------------
    def backend_status(self) -> dict[str, dict]:
        if self.core is None:
            detail = self._why_no_core or "not started"
            return {v: {"state": "unavailable", "detail": detail} for v in VENDORS}
        out = {}
        for name, b in self.core.backends.items():
            entry = {"state": b.state, "detail": b.detail}
            for attr in ("library", "driver_version", "symbols"):
                value = getattr(b, attr, None)
                if value is not None:
                    entry[attr] = dict(value) if isinstance(value, dict) else value
            out[name] = entry
        return out

    @property
    def labels(self) -> dict[int, dict[str, str]]:
        """Each device's labels, by index, matching `devices`."""
        return self._labels

    def gpu_status(self, windows, devices: list | None = None,
                   labels: dict[int, dict[str, str]] | None = None) -> list[dict]:
        """Per-GPU status from `devices` and their `labels` (default: the latest collection's)
        and the windows. Any thread may call it with both: it only reads Python objects and the
        (locked) windows, never the core."""
        out = []
        labels_of = self._labels if labels is None else labels
        for d in self._devices if devices is None else devices:
            labels = labels_of[d.index]
            unsupported = frozenset(getattr(d, "unsupported", ()) or ())
            lost = d.state != "ok"
            metrics = {m: None if (m in unsupported or lost) else windows.latest(m, labels) for m in GPU_METRICS}
            out.append({"index": d.index, "uuid": d.uuid, "vendor": d.vendor, "name": d.name,
                        "pci_bus_id": getattr(d, "pci_bus_id", None), "state": d.state,
                        "lost_reason": getattr(d, "lost_reason", None),
                        "unsupported": sorted(unsupported), "metrics": metrics})
        return out
