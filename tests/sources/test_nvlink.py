"""NVLink data throughput (issue 15): the health pass's field-values call asks NVML for
NVLINK_THROUGHPUT_DATA_TX / _RX (ids 138 / 139) summed over all links (scopeId UINT_MAX), in
bytes as the counters gpu_nvlink_{tx,rx}_bytes_total; what pynvml reads through the same
field ids on the simulated NVML agrees; a GPU without NVLink has no value and no series."""
from __future__ import annotations

import time
from pathlib import Path

import sim_paths
from agent.native import HEALTH, Core
from agent.sources.gpu import health_samples

# 2 MiB/s and 4 MiB/s for the first half second, then nothing: the counters hold at 1024 and
# 2048 KiB from then on, so two readers at different moments see the same counts.
SCENARIO = """
[[gpu]]
vendor = "nvidia"
[gpu.fields]
nvlink_tx_kibps = { wave = "step", before = 2048, after = 0, at = 0.5 }
nvlink_rx_kibps = { wave = "step", before = 4096, after = 0, at = 0.5 }
[[gpu]]
vendor = "nvidia"
"""
TX_BYTES, RX_BYTES = 1024 * 1024, 2048 * 1024

PYNVML = """
import json, time, pynvml as N
N.nvmlInit()
time.sleep(0.7)
out = []
for i in range(2):
    h = N.nvmlDeviceGetHandleByIndex(i)
    got = N.nvmlDeviceGetFieldValues(h, [(138, 0xFFFFFFFF), (139, 0xFFFFFFFF), (138, 0), (138, 1)])
    out.append([[v.nvmlReturn, v.value.ullVal] for v in got])
print(json.dumps(out))
"""


def test_nvlink_counters_match_pynvml_and_are_absent_without_nvlink(sim_out, tmp_path: Path, monkeypatch):
    path = tmp_path / "nvlink.toml"
    path.write_text(SCENARIO)
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(path))
    core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, events=False, hz=20.0, health_hz=10.0,
                process_hz=0.0).start()
    try:
        deadline = time.monotonic() + 5
        while True:
            got = {h.gpu: h for h in core.health()}
            if len(got) == 2 and got[0].values["nvlink_tx_bytes"] == TX_BYTES:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
    finally:
        core.stop()
    ref = sim_paths.reader_json(PYNVML, sim_paths.nvml_env(path))
    (tx_rc, tx_kib), (rx_rc, rx_kib), (link0_rc, link0_kib), (link1_rc, link1_kib) = ref[0]
    assert tx_rc == rx_rc == link0_rc == link1_rc == 0
    assert got[0].values["nvlink_tx_bytes"] == tx_kib * 1024 == TX_BYTES
    assert got[0].values["nvlink_rx_bytes"] == rx_kib * 1024 == RX_BYTES
    # The core asks for the sum over all links (scopeId UINT_MAX), not link 0 (scopeId 0).
    assert link0_kib + link1_kib == tx_kib and link0_kib < tx_kib
    # The second GPU has no NVLink: NVML says NOT_SUPPORTED (3) per entry, the core None.
    assert [rc for rc, _ in ref[1]] == [3, 3, 3, 3]
    assert got[1].values["nvlink_tx_bytes"] is None and got[1].values["nvlink_rx_bytes"] is None


def test_nvlink_counters_are_series_only_where_given():
    labels = {"gpu": "0", "uuid": "GPU-0", "vendor": "nvidia", "model": "H100"}
    empty = dict.fromkeys(HEALTH)
    with_link = {**empty, "nvlink_tx_bytes": float(TX_BYTES), "nvlink_rx_bytes": float(RX_BYTES)}
    series = {s.metric: s.last for s in health_samples(with_link, labels, 1.0)}
    assert series == {"gpu_nvlink_tx_bytes_total": TX_BYTES, "gpu_nvlink_rx_bytes_total": RX_BYTES}
    assert health_samples({"nvlink_tx_bytes": None, "nvlink_rx_bytes": None}, labels, 1.0) == []
