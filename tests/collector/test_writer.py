"""The store writer process (agent/collector/writer.py) lives and dies with the collector.

Real processes on loopback (plaintext: TLS is not what is tested here).
"""
from __future__ import annotations

import os
import signal

import psutil
import pytest

pytestmark = pytest.mark.timeout(90)


def _writer(col) -> psutil.Process:
    (child,) = [p for p in psutil.Process(col.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    return child


def test_killing_the_collector_leaves_no_store_writer_behind(collector_factory, wait):
    col = collector_factory(plaintext=True).start()
    writer = _writer(col)
    col.kill9()
    # PR_SET_PDEATHSIG: the kernel kills the writer with its parent, so a restarted collector
    # never shares the store with a writer still finishing the old one's work.
    wait(lambda: not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE, timeout=10,
         what="the orphaned writer to die")


def test_a_dead_store_writer_stops_the_collector_and_a_restart_stores_everything_once(
        collector_factory, agent_factory, wait):
    col = collector_factory(plaintext=True).start()
    agent = agent_factory("host-a", [f"127.0.0.1:{col.ingest_port}"], plaintext=True).start(first=1, count=300, rate=100)
    wait(lambda: len(col.stored_markers()) >= 50, what="the first markers to be stored")
    os.kill(_writer(col).pid, signal.SIGKILL)
    # The collector cannot store anything any more: it exits non-zero (systemd restarts it)
    # rather than keep accepting batches it cannot acknowledge.
    assert col.proc.wait(15) == 1
    assert "store writer process exited" in col.log.read_text()
    col.start()
    wait(lambda: len(agent.spooled()) == 300, what="all markers spooled")
    wait(lambda: agent.status().get("backlog") == 0, what="the backlog to drain")
    stored = col.stored_markers("host-a")
    assert stored == agent.spooled() == list(range(1, 301)), "a marker was lost or stored twice"


def test_a_store_that_cannot_be_opened_is_named_and_the_collector_exits(collector_factory):
    col = collector_factory(plaintext=True)
    col.data.mkdir(parents=True)
    (col.data / "collector.db").write_bytes(b"this is not a SQLite database, not even its header" * 100)
    with pytest.raises(AssertionError, match=r"the store could not be opened: .*collector\.db: DatabaseError"):
        col.start()
