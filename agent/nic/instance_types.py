"""Which queue count each instance type needs: the shipped table plus the operator's overrides.

The slides write some names with the provider's `ecs.` prefix and some without, and operators
copy names from either the console (with) or older docs (without), so lookups compare the name
with that prefix removed and case folded.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PREFIX = "ecs."
# The shipped table, beside the package's code (read as a file: importlib.resources would bring
# tempfile, zipfile and more into the daemon, ~2 MiB of RSS for one read at start).
TABLE = Path(__file__).resolve().parent.parent / "data" / "instance_types.toml"


def normalize(name: str) -> str:
    """The comparison key of an instance type name: trimmed, lower case, without `ecs.`."""
    key = name.strip().lower()
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


@dataclass(frozen=True)
class InstanceType:
    name: str  # as written in the table or the override
    queues: int  # required NIC queues; 0 = no requirement
    source: str  # "table" or "config"
    vcpu: int | None = None
    memory_gib: int | None = None
    max_pps: int | None = None
    bandwidth_mbps: int | None = None

    @property
    def required(self) -> int | None:
        """The queue count to enforce, or None when the type has no requirement."""
        return self.queues or None


class InstanceTable:
    """The lookup: shipped table first, then config overrides replacing or adding entries."""

    def __init__(self, types: Mapping[str, InstanceType]):
        self._by_key = {normalize(t.name): t for t in types.values()}

    @classmethod
    def load(cls, overrides: Mapping[str, int] | None = None, text: str | None = None) -> "InstanceTable":
        if text is None:
            text = TABLE.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
        types: dict[str, InstanceType] = {}
        for name, row in raw.get("types", {}).items():
            queues = row.get("queues")
            if not isinstance(queues, int) or isinstance(queues, bool) or queues < 0:
                raise ValueError(f"instance_types.toml: {name}: queues must be an integer >= 0, got {queues!r}")
            types[normalize(name)] = InstanceType(
                name=name, queues=queues, source="table", vcpu=row.get("vcpu"),
                memory_gib=row.get("memory_gib"), max_pps=row.get("max_pps"),
                bandwidth_mbps=row.get("bandwidth_mbps"))
        for name, queues in (overrides or {}).items():
            # An override keeps the table's descriptive figures; only the requirement changes.
            base = types.get(normalize(name))
            types[normalize(name)] = InstanceType(
                name=name.strip(), queues=int(queues), source="config",
                vcpu=base.vcpu if base else None, memory_gib=base.memory_gib if base else None,
                max_pps=base.max_pps if base else None, bandwidth_mbps=base.bandwidth_mbps if base else None)
        return cls(types)

    def lookup(self, name: str) -> InstanceType | None:
        return self._by_key.get(normalize(name))

    def names(self) -> list[str]:
        return sorted(t.name for t in self._by_key.values())
