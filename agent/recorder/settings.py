"""The flight recorder's settings, declared beside the code that uses them."""
from __future__ import annotations

from agent.config import Key, Section

SECTIONS = [
    Section("recorder", "The flight recorder: raw samples around alarms and health events.", {
        "enabled": Key(True, bool, "Record when a rule fires or a GPU's health changes."),
        "before": Key("30s", (str, int, float), "Seconds of samples kept from before the event (before + after must fit "
                      "gpu.ring_seconds; 100ms..1h, the largest ring).", duration=True, min=0.1, max=3600),
        "after": Key("10s", (str, int, float), "Seconds of samples kept from after the event (100ms..1h).", duration=True,
                     min=0.1, max=3600),
        "max_bytes": Key(64 << 20, int, "Total size of the recordings directory; the oldest are deleted first. At most 1 TiB.",
                         min=1 << 16, max=1 << 40),
    }),
]
