"""The sources room's own fixture (shared ones such as sim_out and short_dir are in
tests/conftest.py)."""
import pytest


@pytest.fixture
def restore_procfs():
    """psutil's PROCFS_PATH as it was: the host source points it at its configured procfs."""
    import psutil

    before = psutil.PROCFS_PATH
    yield
    psutil.PROCFS_PATH = before


@pytest.fixture
def two_health_reads():
    """`reads(core, n)`: waits for the core's first health read of all `n` devices, then for a
    later read of each; returns (first, later), each {gpu: HealthReading}. Calls a read made
    after a device's first (what NOT_SUPPORTED switched off) show in `later`."""
    import time

    def reads(core, n: int, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while len(core.health()) < n:
            assert time.monotonic() < deadline, core.health()
            time.sleep(0.05)
        first = {h.gpu: h for h in core.health()}
        while min(h.ts for h in core.health()) <= max(h.ts for h in first.values()):
            assert time.monotonic() < deadline, core.health()
            time.sleep(0.05)
        return first, {h.gpu: h for h in core.health()}

    return reads
