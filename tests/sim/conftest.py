"""Fixtures for the simulated vendor library tests: build once per session, run readers in
subprocesses (pynvml and amdsmi pick their library at process start, from the environment)."""
import json
import subprocess
import sys

import pytest


def _run(code: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    # These tests check the libraries' own waits, whole: not the suite's 50 ms cap on them
    # (tests/conftest.py; test_nvml_sim checks the cap with a subprocess of its own).
    env = {k: v for k, v in env.items() if k != "EGS_SIM_EVENT_WAIT_MAX_MS"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_reader(sim_out):
    """run_reader(code, env) -> (result dict printed as JSON on the last stdout line, stderr).

    The snippet must print one JSON document as its last line of stdout.
    """
    def run(code: str, env: dict, timeout: float = 30.0, expect_rc: int = 0):
        result = _run(code, env, timeout)
        assert result.returncode == expect_rc, (
            f"reader exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        lines = result.stdout.strip().splitlines()
        assert lines, f"reader printed nothing; stderr:\n{result.stderr}"
        return json.loads(lines[-1]), result.stderr
    return run
