"""AMD's bad-page threshold (issue 15): amdsmi_get_gpu_bad_page_threshold on the simulated AMD
SMI is what the official amdsmi package reads there (gpu_bad_pages_threshold); a GPU whose bad
pages reach it is failed, with the reason ("should be replaced", AMD's RAS guidance), below it
and without a threshold (NOT_SUPPORTED: None, asked once; or 0, retirement off) it is not."""
from __future__ import annotations

import pytest

from agent.sources.gpu import health_samples
from agent.sources.health import Health

SCENARIO = """
[[gpu]]
vendor = "amd"
[gpu.fields]
bad_pages = 5
bad_page_threshold = 5
[[gpu]]
vendor = "amd"
[gpu.fields]
bad_pages = 4
bad_page_threshold = 5
[[gpu]]
vendor = "amd"
[gpu.fields]
bad_pages = 3
"""

AMDSMI = """
import json, amdsmi as A
A.amdsmi_init()
out = []
for h in A.amdsmi_get_processor_handles():
    try:
        out.append(A.amdsmi_get_gpu_bad_page_threshold(h))
    except A.AmdSmiLibraryException as e:
        out.append(e.get_error_code())
print(json.dumps(out))
"""


def test_the_threshold_is_what_amdsmi_reads_and_reaching_it_fails_the_gpu(amd_health_reads):
    first, later, ref = amd_health_reads(SCENARIO, AMDSMI, 3)
    assert ref == [5, 5, 2]     # the third GPU: AMDSMI_STATUS_NOT_SUPPORTED
    assert [first[g].values["bad_page_threshold"] for g in range(3)] == [5, 5, None]
    labels = {"gpu": "0", "uuid": "u", "vendor": "amd", "model": "MI300X"}
    series = {s.metric: s.last for s in health_samples(first[0].values, labels, 1.0)}
    assert series == {"gpu_bad_pages": 5.0, "gpu_bad_pages_threshold": 5.0}
    assert "gpu_bad_pages_threshold" not in {s.metric for s in health_samples(first[2].values, labels, 1.0)}
    # Unsupported on the third GPU: asked on its first read only (then only bad pages is read).
    assert later[2].calls == 1 and later[0].calls == 2
    health = Health()
    events = health.observe_signals(later.values(), later[0].ts)
    states = {g["gpu"]: g for g in health.status()}
    assert states[0]["state"] == "failed" and states[1]["state"] == "ok" and states[2]["state"] == "ok"
    assert any("bad pages at the threshold (5 of 5)" in str(e.data) for e in events), events


@pytest.mark.parametrize("values,failed", [
    ({"bad_pages": 10.0, "bad_page_threshold": 0.0}, False),     # retirement off in the driver
    ({"bad_pages": 10.0, "bad_page_threshold": None}, False),
    ({"bad_pages": None, "bad_page_threshold": 3.0}, False),
    ({"bad_pages": 11.0, "bad_page_threshold": 10.0}, True),
])
def test_only_a_count_at_a_real_threshold_fails(values, failed):
    from agent.sources.health import SIGNALS
    active = {name: on(values) for name, _, on, _ in SIGNALS}
    assert active["bad_page_threshold"] is failed
