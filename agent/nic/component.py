"""The NIC tuning as a daemon component (docs/internals.md, "Components").

Channel ioctls and sysfs writes are quick but not guaranteed to be (a driver reconfiguring its
rings can take a second), and the metadata lookup waits on the network, so both run on their own
threads; `tick` only copies the latest figures into the windows. The component reports under
"nic" in `status`; drift and state changes go out as `Event(kind="nic")`.
"""
from __future__ import annotations

import threading
from typing import Any

from agent.events import Event
from agent.nic import metrics
from agent.nic.instance_types import InstanceTable
from agent.nic.manager import NicManager
from agent.nic.metadata import MetadataLookup
from agent.sources.base import Sample
from agent.threads import name_os_thread


def build(cfg: Any, ctx: Any) -> "NicComponent | None":
    if cfg.nic.mode == "off":
        return None
    return NicComponent(cfg.nic, ctx)


class NicComponent:
    name = "nic"

    def __init__(self, settings: Any, ctx: Any):
        self.ctx = ctx
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metadata: MetadataLookup | None = None
        self._metadata_value: str | None = None
        self._last: dict[str, Any] | None = None
        self._error: str | None = None
        self._configure(settings)

    def _configure(self, settings: Any) -> None:
        self.settings = settings
        self.manager = NicManager(settings, InstanceTable.load(settings.instance_types),
                                  clock=self.ctx.clock, emit=self._emit)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        if not s.instance_type and s.metadata_enabled:
            self._metadata = MetadataLookup(s.metadata_url, s.metadata_timeout, on_found=self._found_type)
            self._metadata.start()
        self._thread = threading.Thread(target=self._run, name="nic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._metadata is not None:
            self._metadata.stop(timeout=1.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def reload(self, cfg: Any) -> None:
        """New [nic] settings take effect on the next pass; drift counts restart with them."""
        with self._lock:
            self._configure(cfg.nic)
        self._wake.set()

    def check_now(self) -> None:
        """Run a pass now instead of at the next interval."""
        self._wake.set()

    # --- the worker ---------------------------------------------------------------------
    def _found_type(self, name: str) -> None:
        with self._lock:
            self._metadata_value = name
        self.ctx.log.info("nic: the metadata service says the instance type is %s", name)
        self._wake.set()

    def _requirement(self):
        s = self.settings
        if s.instance_type:
            return self.manager.requirement(s.instance_type, "config")
        if self._metadata is not None:
            if self._metadata_value:
                return self.manager.requirement(self._metadata_value, "metadata")
            meta = self._metadata.status()
            return self.manager.requirement(None, "metadata", pending=f"waiting for the metadata service: "
                                                                     f"{meta['detail']}")
        return self.manager.requirement(None, "none")

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.is_set():
            with self._lock:
                manager, mode = self.manager, self.settings.mode
                interval = self.settings.check_interval
                requirement = self._requirement()
            action = "apply" if mode == "apply" else "verify"
            try:
                report = manager.run_pass(action, requirement)
                error = None
            except Exception as e:  # a bug here must not end the checks for good
                self.ctx.log.exception("nic: check failed")
                report, error = None, f"{type(e).__name__}: {e}"
            with self._lock:
                blocked_before = (self._last or {}).get("apply_blocked")
                if report is not None:
                    self._last = report
                self._error = error
            if report is not None and report.get("apply_blocked") and report["apply_blocked"] != blocked_before:
                # Once per new reason: the unit's sandbox does not change between passes.
                self.ctx.log.warning("nic: %s", report["apply_blocked"])
            self._wake.wait(interval)
            self._wake.clear()

    def _emit(self, interface: str, data: dict[str, Any]) -> None:
        self.ctx.emit(Event("nic", self.ctx.clock(), {**self.ctx.labels, "nic": interface}, data))

    # --- daemon hooks -------------------------------------------------------------------
    def tick(self, now: float) -> None:
        # Every tick, not every pass: the windows then hold the gauges continuously.
        with self._lock:
            report = self._last
        if report is None:
            return
        for row in report["interfaces"]:
            for name, value in metrics.values(row).items():
                self.ctx.windows.add(Sample.reading(name, {"nic": row["interface"]}, value, now))

    def status(self) -> dict[str, Any]:
        with self._lock:
            s, report = self.settings, self._last
            out: dict[str, Any] = {"mode": s.mode, "state": "checking" if report is None else (
                "ok" if report["ok"] else "attention"), "error": self._error,
                "check_interval_s": s.check_interval}
            if self._metadata is not None:
                out["metadata"] = self._metadata.status()
        if report is not None:
            out.update(report)
        return out
