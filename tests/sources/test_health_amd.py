"""AMD health signals beyond ECC (issue 15): the power cap (amdsmi_get_power_cap_info, uW ->
W as gpu_power_limit_watts) and the bad-page count (amdsmi_get_gpu_bad_page_info, as
gpu_bad_pages) on the simulated AMD SMI are what the official amdsmi package reads there; a
GPU that gives neither has None and no series, and is not asked again."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sim_paths
from agent.native import Core
from agent.sources.gpu import health_samples

SCENARIO = """
[[gpu]]
vendor = "amd"
[gpu.fields]
power_limit = 300
bad_pages = 5
[[gpu]]
vendor = "amd"
"""

AMDSMI = """
import json, amdsmi as A
A.amdsmi_init()
h = A.amdsmi_get_processor_handles()[0]
print(json.dumps({"cap": A.amdsmi_get_power_cap_info(h), "bad": len(A.amdsmi_get_gpu_bad_page_info(h))}))
"""


def test_amd_power_cap_and_bad_pages_are_what_amdsmi_reads(sim_out, tmp_path: Path, monkeypatch, two_health_reads):
    path = tmp_path / "amd.toml"
    path.write_text(SCENARIO)
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
    core = Core(amdsmi_library=str(sim_paths.AMDSMI_LIB), nvidia=False, events=False, hz=20.0, health_hz=10.0,
                process_hz=0.0).start()
    try:
        first, later = two_health_reads(core, 2)
    finally:
        core.stop()
    result = subprocess.run([sys.executable, "-c", AMDSMI], env=sim_paths.amdsmi_env(path), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ref = json.loads(result.stdout.strip().splitlines()[-1])
    v = first[0].values
    assert v["power_limit_watts"] == ref["cap"]["power_cap"] / 1e6 == 300
    assert v["bad_pages"] == ref["bad"] == 5
    labels = {"gpu": "0", "uuid": "u", "vendor": "amd", "model": "MI300X"}
    series = {s.metric: s.last for s in health_samples(v, labels, 1.0)}
    assert series == {"gpu_power_limit_watts": 300.0, "gpu_bad_pages": 5.0}
    # The second GPU gives neither (nor ECC): None, and after its first read no call at all.
    assert first[1].values["power_limit_watts"] is None and first[1].values["bad_pages"] is None
    assert health_samples(first[1].values, labels, 1.0) == []
    assert later[1].calls == 0 and later[0].calls == 2   # GPU 0: no ECC in its scenario either
