"""The collector room's own fixture: processes shared by a whole test module. The per-test
process fixtures (pki, collector_factory, agent_factory, wait) are in tests/conftest.py."""
from __future__ import annotations

import pytest

from collector_procs import AgentProc, CollectorProc, wait_for


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory, pki):
    """(make_collector, make_agent, wait_for) for processes shared by a whole test module."""
    root = tmp_path_factory.mktemp("procs")
    made: list = []

    def collector(name: str = "c", plaintext: bool = False, extra: str = "") -> CollectorProc:
        made.append(CollectorProc(root / name, pki, plaintext, extra))
        return made[-1]

    def agent(host: str, endpoints: list[str], name: str | None = None, **kw) -> AgentProc:
        made.append(AgentProc(root / (name or f"agent-{host}"), host, endpoints, pki, **kw))
        return made[-1]

    yield collector, agent, wait_for
    for proc in made:
        proc.stop()
