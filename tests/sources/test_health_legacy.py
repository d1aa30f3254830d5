"""Health signals on a driver without nvmlDeviceGetFieldValues (issue 15): the core reads ECC
(nvmlDeviceGetTotalEccErrors), retired pages (nvmlDeviceGetRetiredPages, count only, and
...PendingStatus), remapped rows (nvmlDeviceGetRemappedRows) and the PCIe replay counter
from their own calls on the legacy simulated NVML, and they are what pynvml reads through
those calls; a
GPU that gives none of them has None for each, and those calls are not made again."""
from __future__ import annotations

from pathlib import Path

import sim_paths
from agent.native import Core

SCENARIO = """
[[gpu]]
vendor = "nvidia"
[gpu.fields]
ecc_corrected = 12
ecc_uncorrected = 2
retired_sbe = 3
retired_dbe = 1
retired_pending = 1
remapped_correctable = 4
remapped_uncorrectable = 1
remap_pending = 0
remap_failure = 1
pcie_replays = 7
[[gpu]]
vendor = "nvidia"
"""

PYNVML = """
import json, pynvml as N
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
print(json.dumps({
    "ecc": [N.nvmlDeviceGetTotalEccErrors(h, e, c) for e in (0, 1) for c in (0, 1)],
    "retired": [len(N.nvmlDeviceGetRetiredPages(h, cause)) for cause in (0, 1)],
    "pending": N.nvmlDeviceGetRetiredPagesPendingStatus(h),
    "remapped": list(N.nvmlDeviceGetRemappedRows(h)),
    "replays": N.nvmlDeviceGetPcieReplayCounter(h),
}))
"""
def test_an_old_driver_reads_each_signal_from_its_own_call(sim_out, tmp_path: Path, monkeypatch, two_health_reads):
    path = tmp_path / "legacy.toml"
    path.write_text(SCENARIO)
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
    core = Core(nvml_library=str(sim_paths.NVML_LEGACY_LIB), amd=False, events=False, hz=20.0, health_hz=10.0,
                process_hz=0.0).start()
    try:
        symbols = core.backends["nvidia"].symbols
        assert not symbols.get("field_values") and symbols["retired_pages"] == "nvmlDeviceGetRetiredPages"
        first, later = two_health_reads(core, 2)
    finally:
        core.stop()
    # pynvml itself needs nvmlDeviceGetHandleByIndex_v2, which the legacy build lacks: it reads
    # the same scenario through the same calls (one source, sim_nvml.c) on the current build.
    ref = sim_paths.reader_json(PYNVML, sim_paths.nvml_env(path))
    v = first[0].values
    assert [v["ecc_corrected_volatile"], v["ecc_corrected_aggregate"], v["ecc_uncorrected_volatile"],
            v["ecc_uncorrected_aggregate"]] == ref["ecc"] == [12, 12, 2, 2]
    assert [v["retired_pages_sbe"], v["retired_pages_dbe"]] == ref["retired"] == [3, 1]
    assert v["retired_pages_pending"] == ref["pending"] == 1
    assert [v["remapped_rows_correctable"], v["remapped_rows_uncorrectable"], v["row_remap_pending"],
            v["row_remap_failure"]] == ref["remapped"] == [4, 1, 0, 1]
    assert v["pcie_replays"] == ref["replays"] == 7
    assert later[0].values == v
    # The second GPU gives none of them: None, and after its first read (NOT_SUPPORTED) none of
    # its calls is made again; the first makes 4 ECC + 2 retired + pending + rows + replays.
    bare = first[1].values
    assert all(bare[name] is None for name in ("ecc_corrected_volatile", "retired_pages_sbe", "retired_pages_pending",
                                               "remapped_rows_correctable", "pcie_replays"))
    assert later[1].calls == 0
    assert later[0].calls == 9
