"""The core under ThreadSanitizer: callers on three threads, the sampler and event threads,
and twenty restarts, on the simulated libraries. Any data race report fails the test."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sim_paths

NATIVE = sim_paths.ROOT / "native"
HERE = Path(__file__).resolve().parent


def _tsan_available(tmp: Path) -> str | None:
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    r = subprocess.run(["cc", "-fsanitize=thread", str(probe), "-o", str(tmp / "probe")],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr.strip()[-300:]


@pytest.mark.parametrize("scenario", ["nvidia-xid", "amd-two"])
def test_no_data_races_under_concurrent_use_and_restarts(sim_out, tmp_path, scenario):
    why = _tsan_available(tmp_path)
    if why:
        pytest.skip(f"the C compiler cannot build with -fsanitize=thread: {why}")
    exe = tmp_path / "race_driver"
    sources = [str(HERE / "race_driver.c")] + [str(NATIVE / f) for f in ("core.c", "nvml.c", "amdsmi.c")]
    subprocess.run(["cc", "-g", "-O1", "-fsanitize=thread", "-pthread", "-I", str(NATIVE), "-o", str(exe),
                    *sources, "-ldl", "-lm"], check=True)
    env = dict(os.environ, EGS_SIM_SCENARIO=str(sim_paths.scenario(scenario)),
               TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    r = subprocess.run([str(exe), str(sim_paths.NVML_LIB), str(sim_paths.AMDSMI_LIB)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert "ThreadSanitizer" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0, r.stderr[-4000:]
    assert int(r.stdout.split()[-1]) > 0
