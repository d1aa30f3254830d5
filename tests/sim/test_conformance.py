"""The simulated NVML answers edge cases as a real driver does.

native/sim/nvml_probe.py was run on an NVIDIA H100 with driver 580.159.04 (the result is
native/sim/conformance/nvml-h100-580.159.04.json). Running the same probe on the simulator
must give the same return codes and string formats, apart from the differences listed here,
each for a stated reason.
"""
import json
import subprocess
import sys

import sim_paths

RECORDED = sim_paths.SIM_SRC / "conformance" / "nvml-h100-580.159.04.json"

EXPECTED_DIFFERENCES = {
    # Device data, not behaviour: the H100 is passively cooled, the scenario's GPU has a fan.
    "fan": 0,
    # Scenarios have no video clock, so the simulator reports it NOT_SUPPORTED.
    "clock_3": 3,
    "clock_video": 3,
    # Real UUIDs are random hex; scenario UUIDs are whatever the file says.
    "uuid_shape": None,
}


def test_simulator_answers_edge_cases_like_the_recorded_driver(sim_out):
    result = subprocess.run([sys.executable, str(sim_paths.SIM_SRC / "nvml_probe.py")],
                            env=sim_paths.nvml_env("constant"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    sim = json.loads(result.stdout)
    real = json.loads(RECORDED.read_text())
    assert set(sim) == set(real)
    for key in sorted(real):
        if key in EXPECTED_DIFFERENCES:
            want = EXPECTED_DIFFERENCES[key]
            assert want is None or sim[key] == want, key
            continue
        assert sim[key] == real[key], f"{key}: simulator {sim[key]!r}, driver {real[key]!r}"
