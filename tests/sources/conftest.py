"""The sources room's own fixtures (shared ones such as sim_out and short_dir are in
tests/conftest.py)."""
import pytest

import sim_paths


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


@pytest.fixture
def amd_health_reads(sim_out, tmp_path, monkeypatch, two_health_reads):
    """`reads(scenario, script, n)`: the core's first and a later health read of the `n`
    simulated AMD GPUs of the scenario text, and the JSON that `script` (the official amdsmi
    package) prints on the same scenario."""
    from agent.native import Core

    def reads(scenario: str, script: str, n: int):
        path = tmp_path / "amd.toml"
        path.write_text(scenario)
        monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
        core = Core(amdsmi_library=str(sim_paths.AMDSMI_LIB), nvidia=False, events=False, hz=20.0,
                    health_hz=10.0, process_hz=0.0).start()
        try:
            first, later = two_health_reads(core, n)
        finally:
            core.stop()
        return first, later, sim_paths.reader_json(script, sim_paths.amdsmi_env(path))
    return reads
