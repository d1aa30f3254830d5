"""Fixtures for the native core tests: the simulated vendor libraries, a Core running on a
scenario, and the official readers (pynvml, amdsmi) run in subprocesses on the same library.

The readers pick their library at process start (LD_LIBRARY_PATH, ROCM_HOME), so they run in
a child process; the core runs in this process with EGS_SIM_SCENARIO set before its start,
which is when the simulated library reads it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import sim_paths
from agent.native import Core  # (fails with "run make native" when not built)


HERE = Path(__file__).resolve().parent


def own_scenario(name: str) -> Path:
    """A scenario kept beside these tests (tests/native/scenarios/)."""
    return HERE / "scenarios" / f"{name}.toml"


@pytest.fixture
def make_core(sim_out, monkeypatch):
    """make_core(scenario, **Core kwargs) -> a started Core; stopped after the test."""
    cores: list[Core] = []

    def make(scenario: str | Path | None, start: bool = True, **kw) -> Core:
        if scenario is None:
            monkeypatch.delenv("EGS_SIM_SCENARIO", raising=False)
        else:
            path = scenario if isinstance(scenario, Path) else sim_paths.scenario(scenario)
            monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
        kw.setdefault("nvml_library", str(sim_paths.NVML_LIB))
        kw.setdefault("amdsmi_library", str(sim_paths.AMDSMI_LIB))
        core = Core(**kw)
        cores.append(core)
        return core.start() if start else core

    yield make
    for core in cores:
        core.stop()



@pytest.fixture
def run_json(sim_out):
    """run_json(code, env) -> the JSON document a reader snippet printed last."""
    return sim_paths.reader_json


@pytest.fixture
def scenario_here():
    return own_scenario
