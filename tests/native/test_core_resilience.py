"""The core against a slow or hung vendor library: queries never wait for vendor init or
shutdown, stop is bounded when a thread is stuck inside a vendor call, and such a thread is
reported (abandoned_threads) instead of hanging the daemon's shutdown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import sim_paths

from agent.native import Core, ffi, lib


def _abandoned(core: Core) -> int:
    return core.sampler_stats()["abandoned_threads"]


def _poll(what, deadline_s: float = 20.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + deadline_s
    while not what():
        assert time.monotonic() < deadline, "condition not reached before a generous deadline"
        time.sleep(every)


def test_queries_answer_while_a_slow_vendor_init_runs(sim_out, monkeypatch, scenario_here):
    monkeypatch.setenv("EGS_SIM_SCENARIO", str(scenario_here("slow-enumeration")))
    core = Core(nvml_library=str(sim_paths.NVML_LIB), amd=False, events=False, hz=20)
    starter = threading.Thread(target=core.start)
    n = ffi.new("unsigned int *")
    info = ffi.new("struct egs_backend_info *")
    answered_during_start = 0
    starter.start()
    try:
        # Enumeration takes over a second here; a query blocked on the core's lock for the
        # whole of it would answer at most once before start returns.
        while starter.is_alive():
            assert lib.egs_device_count(core._core, n) == lib.EGS_OK
            assert lib.egs_backend_get(core._core, lib.EGS_BACKEND_NVIDIA, info) == lib.EGS_OK
            if starter.is_alive():
                answered_during_start += 1
            time.sleep(0.01)
    finally:
        starter.join()
    assert answered_during_start >= 3
    # The new run was swapped in whole: both GPUs, described.
    assert [d.pci_bus_id for d in core.devices()] == ["00000000:00:08.0", "00000000:00:09.0"]
    assert all(d.uuid and d.name for d in core.devices())
    # Past t = 3 s the calls are fast again, so the run then stops without abandoning a thread.
    _poll(lambda: core.sampler_stats()["ticks"] >= 5)
    core.stop()
    assert _abandoned(core) == 0


def test_a_healthy_stop_abandons_no_thread(make_core):
    core = make_core("constant", hz=50, amd=False)
    _poll(lambda: core.sampler_stats()["ticks"] >= 3)
    core.stop()
    assert _abandoned(core) == 0
    core.start()                   # a clean stop leaves the core restartable
    core.stop()


_STUCK = r"""
import json, os, sys, time
from agent.native import Core, StateError, ffi, lib
# Every polled field on the fast tier, so every tick calls the library (not only the slow ones).
core = Core(nvml_library=sys.argv[1], amd=False, events=False, hz=20, slow_fields=()).start()
# t >= 0.5 s: every query now hangs 10 s, so the sampler sits inside the library.
time.sleep(1.0)
core.stop()
s = ffi.new("struct egs_sampler_stats *")
lib.egs_sampler_get(core._core, s)
n = ffi.new("unsigned int *")
rc_count = lib.egs_device_count(core._core, n)
try:
    core.start()
    restart = "started"
except StateError:
    restart = "refused"
print(json.dumps({"abandoned": s.abandoned_threads, "running": core.running(),
                  "count_rc": rc_count, "count": n[0], "restart": restart}), flush=True)
os._exit(0)   # the abandoned thread is still inside the simulator's 10 s sleep
"""


def test_stop_gives_up_on_a_thread_stuck_in_a_vendor_call_and_reports_it(sim_out, scenario_here):
    env = dict(os.environ, EGS_SIM_SCENARIO=str(scenario_here("stuck-call")))
    # Without a bounded join, stop would wait for the stuck tick: several 10 s calls, over a
    # minute, far past this timeout. With it, stop returns after a few seconds.
    r = subprocess.run([sys.executable, "-c", _STUCK, str(sim_paths.NVML_LIB)], env=env,
                       capture_output=True, text=True, timeout=40, cwd=str(sim_paths.ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"abandoned": 1, "running": False, "count_rc": 0, "count": 1,
                   "restart": "refused"}
