"""The flight recorder as a daemon component, triggered by events.

Nobody calls the recorder: it listens to the events the daemon delivers and decides for
itself. A health event with a GPU (other than a recovery) and an alarm notification
(`firing` or `escalated`) whose rule asked for one (`data.record`) schedule a recording of
that GPU around the event's time. A fault that changes health and the built-in rule that
fires on it in the same tick share one recording (`Recorder.trigger`); its header's
`reason` names the first event and `also` the others. Once a file is written, an
`Event(kind="recording")` with its header and path goes out (the outbox ships the file).
"""
from __future__ import annotations

from typing import Any

from agent.config import parse_duration
from agent.events import Event
from agent.recorder.store import Recorder


class RecorderComponent:
    name = "recorder"

    def __init__(self, cfg, ctx):
        self.ctx = ctx
        before, after = parse_duration(cfg.recorder.before), parse_duration(cfg.recorder.after)
        ring = float(cfg.gpu.ring_seconds)
        if before + after > ring:
            # The ring would already have overwritten the start by the time we copy it.
            ctx.log.warning("recorder.before + recorder.after = %gs exceeds gpu.ring_seconds = %gs; "
                            "recordings will start later than asked", before + after, ring)
        self._settings = (before, after, int(cfg.recorder.max_bytes))
        self.recorder = self._make()
        self._stopped = False

    def _make(self) -> Recorder:
        before, after, max_bytes = self._settings
        return Recorder(self.ctx.state_dir / "recordings", self.ctx.core, self.ctx.clock, before, after, max_bytes,
                        labels_of=self._labels_of, on_written=self._written)

    def _labels_of(self, gpu: int) -> dict[str, str]:
        for d in self.ctx.gpu_devices():
            if d.index == gpu:
                return {"gpu": str(d.index), "uuid": d.uuid, "vendor": d.vendor, "model": d.name}
        return {"gpu": str(gpu)}

    def start(self) -> None:
        if self._stopped:  # a restart after a failure: the stopped recorder's worker is gone
            self.recorder, self._stopped = self._make(), False

    def on_event(self, event: Event) -> None:
        gpu = event.labels.get("gpu", "")
        if not gpu.isdigit():
            return
        data = event.data
        if event.kind == "health" and data.get("cause", {}).get("kind") != "recovered":
            self.recorder.trigger([int(gpu)], {"kind": "health", "labels": dict(event.labels), "state": data.get("state"),
                                               "cause": data.get("cause")}, event.ts, tag=f"health-gpu{gpu}")
        elif event.kind == "alarm" and data.get("notify") in ("firing", "escalated") and data.get("record"):
            self.recorder.trigger([int(gpu)], {"kind": "alarm", "rule": data.get("rule"), "labels": dict(event.labels),
                                               "severity": data.get("severity"), "value": data.get("value")},
                                  event.ts, tag=f"{data.get('rule')}-gpu{gpu}")

    def tick(self, now: float) -> None:
        self.recorder.tick(now)

    def _written(self, header: dict[str, Any]) -> None:
        """Runs on the recorder's thread; `emit` is safe from any thread."""
        gpus = header.get("gpus", [])
        labels = self._labels_of(gpus[0]) if len(gpus) == 1 else {}
        data = {k: header.get(k) for k in ("id", "reason", "gpus", "event_ts", "from", "to", "samples",
                                           "size_bytes", "path")}
        self.ctx.emit(Event("recording", float(header.get("created") or self.ctx.clock()), labels, data))

    def status(self) -> dict[str, Any]:
        """For `status --json` under "recorder", every tick: no directory listing (`egs-agent
        alarms` shows the full `Recorder.status()`)."""
        return self.recorder.summary()

    def stop(self) -> None:
        self.recorder.stop()
        self._stopped = True


def build(cfg, ctx) -> RecorderComponent | None:
    """The recorder component, or None when `[recorder] enabled = false`."""
    return RecorderComponent(cfg, ctx) if cfg.recorder.enabled else None
