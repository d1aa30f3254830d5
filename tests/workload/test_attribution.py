"""The attribution pass: merging sources, top-N bounding with `other`, the faults a process
can throw at it (exited, another PID namespace, hidepid, unreadable files), and series and
memory staying bounded under a stream of short-lived processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from agent.workload import metrics
from agent.workload.attribution import Attributor, merge
from agent.workload.hostproc import HostReader
from agent.workload.records import GpuProcess, GpuRef, ProcessSourceError
from agent.workload.settings import SECTIONS
from agent.workload.source import WorkloadSource

REPO = Path(__file__).resolve().parents[2]
G0 = GpuRef(0, "GPU-0", "0000:3b:00.0", "nvidia", "H100")
G1 = GpuRef(1, "GPU-1", "0000:86:00.0", "nvidia", "H100")
GONE_PID = 4_000_000  # above pid_max's ceiling (2^22): never a live process


def test_merge_keeps_the_first_sources_figures_and_fills_the_gaps():
    nvml = GpuProcess(0, "GPU-0", 10, "nvml", used_memory_bytes=100, kind="compute")
    drm = GpuProcess(0, "GPU-0", 10, "drm-fdinfo", used_memory_bytes=999, sm_percent=40.0, enc_percent=1.0)
    other = GpuProcess(0, "GPU-0", 11, "drm-fdinfo", used_memory_bytes=5)
    out = {p.pid: p for p in merge([[nvml], [drm, other]])}
    assert out[10].used_memory_bytes == 100 and out[10].source == "nvml" and out[10].kind == "compute"
    assert out[10].sm_percent == 40.0 and out[10].enc_percent == 1.0 and out[10].dec_percent is None
    assert out[11] == other


def test_top_n_by_memory_and_the_rest_summed_as_other(proc_tree, vendor, rec):
    for pid in range(100, 106):
        proc_tree.add(pid, name=f"job{pid}", cgroup=f"0::/system.slice/job{pid}.service\n")
    records = [rec(G0, 100, memory=10, sm=5.0), rec(G0, 101, memory=50), rec(G0, 102, memory=None, sm=90.0),
               rec(G0, 103, memory=30, sm=1.0), rec(G0, 104, memory=20, sm=2.0), rec(G0, 105, memory=40)]
    snap = Attributor([vendor(records)], str(proc_tree.root), top_n=3).run([G0, G1])
    g0, g1 = snap.gpus
    assert [r.process.pid for r in g0.rows] == [101, 105, 103]
    assert (g0.other.processes, g0.other.used_memory_bytes, g0.other.sm_percent) == (3, 30, 97.0)
    assert [w.labels["workload"] for w in g0.workloads] == [
        "systemd:job101.service", "systemd:job103.service", "systemd:job105.service", "other"]
    assert g1.rows == [] and g1.workloads == []
    series = metrics.samples(snap)
    by = {(s.metric, s.labels["workload"]): s.last for s in series}
    assert by[("gpu_workload_memory_used_bytes", "systemd:job101.service")] == 50
    assert by[("gpu_workload_processes", "other")] == 3
    assert by[("gpu_workload_sm_utilization_percent", "other")] == 97.0
    # no utilisation sample for job101 and job105: left out, never 0
    assert ("gpu_workload_sm_utilization_percent", "systemd:job101.service") not in by
    assert all(set(s.labels) >= {"gpu", "uuid", "vendor", "model", "workload", "workload_kind"} for s in series)
    assert all(s.labels["gpu"] == "0" for s in series)
    doc = json.loads(json.dumps(snap.to_dict()))
    assert doc["gpus"][0]["processes"][0]["workload"]["workload"] == "systemd:job101.service"


def test_cpu_percent_over_the_interval_and_a_reused_pid_is_a_new_process(proc_tree, vendor, rec):
    clock = SimpleNamespace(t=100.0)
    proc_tree.add(100, name="trainer", cmdline=["python3", "train.py"], cgroup="0::/system.slice/a.service\n")
    a = Attributor([vendor([rec(G0, 100, memory=1)])], str(proc_tree.root),
                   host=HostReader(str(proc_tree.root), clock=lambda: clock.t), clock=lambda: clock.t)
    row, = a.run([G0]).gpus[0].rows
    assert (row.host.cpu_percent, row.host.command, row.workload.name) == (None, "python3 train.py", "systemd:a.service")
    clock.t += 2.0
    proc_tree.set_cpu(100, 3 * os.sysconf("SC_CLK_TCK"), "trainer")   # 3 s of CPU in 2 s: 150 % (two cores' worth)
    row, = a.run([G0]).gpus[0].rows
    assert abs(row.host.cpu_percent - 150.0) < 1e-6
    # PID 100 exits and a new process gets the PID: new start time, new cgroup, new command
    proc_tree.add(100, name="other", cmdline=["other"], cgroup="0::/system.slice/b.service\n", start=5000)
    clock.t += 1.0
    row, = a.run([G0]).gpus[0].rows
    assert (row.host.cpu_percent, row.host.command, row.workload.name) == (None, "other", "systemd:b.service")


def test_a_process_on_two_gpus_is_read_once_a_pass(proc_tree, vendor, rec):
    clock = SimpleNamespace(t=100.0)
    proc_tree.add(100, name="trainer", cgroup="0::/system.slice/a.service\n")
    a = Attributor([vendor([rec(G0, 100, memory=1), rec(G1, 100, memory=2)])], str(proc_tree.root),
                   host=HostReader(str(proc_tree.root), clock=lambda: clock.t), clock=lambda: clock.t)
    a.run([G0, G1])
    clock.t += 1.0
    proc_tree.set_cpu(100, os.sysconf("SC_CLK_TCK"), "trainer")
    g0, g1 = a.run([G0, G1]).gpus
    assert g0.rows[0].host.cpu_percent == g1.rows[0].host.cpu_percent == 100.0
    assert (g0.rows[0].process.used_memory_bytes, g1.rows[0].process.used_memory_bytes) == (1, 2)


def test_a_failing_source_is_reported_and_the_others_carry_on(proc_tree, vendor, rec):
    proc_tree.add(100)

    class Broken:
        name = "amdsmi"

        def processes(self, gpus):
            raise ProcessSourceError("amdsmi_get_gpu_process_list: AMDSMI_STATUS_NO_PERM")

    snap = Attributor([Broken(), vendor([rec(G0, 100, memory=1)])], str(proc_tree.root)).run([G0])
    assert snap.sources["amdsmi"] == {"state": "error", "processes": 0,
                                      "detail": "amdsmi_get_gpu_process_list: AMDSMI_STATUS_NO_PERM"}
    assert snap.sources["nvml"]["state"] == "ok" and len(snap.gpus[0].rows) == 1


def test_a_pid_that_exited_before_lookup_is_a_row_with_the_reason(vendor, rec):
    p = subprocess.Popen(["true"])
    p.wait()   # listed by the "driver", gone (and reaped) before the pass reads it
    snap = Attributor([vendor([rec(G0, p.pid, memory=1 << 20)])]).run([G0])
    row, = snap.gpus[0].rows
    assert row.workload.kind == "unknown" and row.host is None
    assert "not in /proc" in row.reason and "exited" in row.reason
    assert {s.labels["workload"] for s in metrics.samples(snap)} == {"unknown"}


def test_a_pid_that_exits_between_status_and_figures(proc_tree, vendor, rec):
    proc_tree.add(100, name="trainer", cgroup="0::/system.slice/train.service\n")
    (proc_tree.root / "100" / "stat").unlink()   # psutil now finds no such process
    row, = Attributor([vendor([rec(G0, 100, memory=1)])], str(proc_tree.root)).run([G0]).gpus[0].rows
    assert row.workload.name == "systemd:train.service" and row.host is None
    assert "exited while its stat was read" in row.reason


def test_a_process_in_another_pid_namespace_shows_both_pids(vendor, rec):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a PID namespace")
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while not psutil.Process(outer.pid).children() and time.monotonic() < deadline:
            time.sleep(0.01)
        inner, = psutil.Process(outer.pid).children()
        row, = Attributor([vendor([rec(G0, inner.pid, memory=1)])]).run([G0]).gpus[0].rows
        assert row.nspid == (inner.pid, 1) and row.to_dict()["nspid"] == [inner.pid, 1]
        assert row.host.command == "sleep 60" and row.reason is None
    finally:
        outer.kill()
        outer.wait()


def test_fixture_nspid_and_a_pid_this_procfs_does_not_show(proc_tree, vendor, rec):
    proc_tree.add(100, nspid=(100, 42, 7))
    rows = Attributor([vendor([rec(G0, 100, memory=2), rec(G0, 101, memory=1)])],
                      str(proc_tree.root)).run([G0]).gpus[0].rows
    assert rows[0].nspid == (100, 42, 7)
    assert rows[1].workload.kind == "unknown" and "PID namespace" in rows[1].reason


def test_hidepid_in_the_mount_table_is_named(proc_tree, vendor, rec):
    proc_tree.hide("invisible")
    row, = Attributor([vendor([rec(G0, 77, memory=1)])], str(proc_tree.root)).run([G0]).gpus[0].rows
    assert "hidepid=invisible" in row.reason and row.workload.kind == "unknown"


_AS_NOBODY = """
import json, sys
from agent.workload.attribution import Attributor
from agent.workload.records import GpuProcess, GpuRef
class Src:
    name = "nvml"
    def processes(self, gpus):
        return [GpuProcess(0, "GPU-0", int(sys.argv[2]), "nvml", used_memory_bytes=1)]
snap = Attributor([Src()], sys.argv[1]).run([GpuRef(0, "GPU-0")])
print(json.dumps(snap.to_dict()))
"""


@pytest.mark.parametrize("hidepid,state", [("2", "gone"), ("1", "denied")])
def test_a_real_hidepid_mount_read_by_an_unprivileged_agent(tmp_path, hidepid, state):
    tools = [shutil.which(t) for t in ("unshare", "setpriv", "mount")]
    if os.geteuid() != 0 or None in tools:
        pytest.skip("needs root, unshare, setpriv and mount for a hidepid proc mount")
    mnt = Path(tempfile.mkdtemp(prefix="egs-hidepid-"))
    mnt.chmod(0o755)
    target = subprocess.Popen(["sleep", "60"])   # root's: hidden from uid 65534
    try:
        script = (f"mount -t proc -o hidepid={hidepid} proc {mnt} && exec setpriv --reuid=65534 --regid=65534 "
                  f"--clear-groups {sys.executable} -c '{_AS_NOBODY}' {mnt} {target.pid}")
        out = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        row, = json.loads(out.stdout)["gpus"][0]["processes"]
    finally:
        target.kill()
        target.wait()
        mnt.rmdir()
    assert row["workload"]["workload_kind"] == "unknown"
    if state == "gone":
        assert "mounted with hidepid=invisible" in row["reason"] and "uid 65534" in row["reason"]
    else:
        assert "permission denied" in row["reason"] and "hidepid=noaccess" in row["reason"]


def test_short_lived_processes_keep_series_and_state_bounded(vendor, rec):
    """A scaled-down `bench/workload.py --churn`: 300 real short-lived processes and 10,000
    made-up PIDs come and go over 100 passes on 2 GPUs; the series of every pass stay within
    2 x (top_n + 1) workloads, the label sets seen over the whole run are a handful (no PID in
    any label), and the state kept between passes and the allocated memory stay flat."""
    top_n = 4
    procs: list[subprocess.Popen] = []
    fake = iter(range(GONE_PID, GONE_PID + 10_000))
    listed: list[int] = []

    def listing(gpus):
        return [rec(gpus[i % 2], pid, memory=1000 + i) for i, pid in enumerate(listed)]

    a = Attributor([vendor(listing)], top_n=top_n)
    label_sets = set()
    sizes = []
    tracemalloc.start()
    try:
        for n in range(100):
            if n < 30:
                procs += [subprocess.Popen(["sleep", "0.05"]) for _ in range(10)]
            listed = [p.pid for p in procs[-20:]] + [next(fake) for _ in range(100)]
            snap = a.run([G0, G1])
            series = metrics.samples(snap)
            assert len({tuple(sorted(s.labels.items())) for s in series}) <= 2 * (top_n + 1)
            label_sets |= {tuple(sorted(s.labels.items())) for s in series}
            assert a.host.tracked() <= 2 * top_n
            if n in (40, 99):
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        for p in procs:
            p.wait()
    assert {dict(ls)["workload"] for ls in label_sets} <= {"cmd:sleep@root", "unknown", "other"}
    assert not any("pid" in dict(ls) for ls in label_sets)
    assert sizes[1] - sizes[0] < 64 * 1024, sizes   # 60 passes after the churn: no growth


def test_the_daemon_source_runs_on_its_interval_and_documents_the_pass(proc_tree, vendor, rec):
    proc_tree.add(100, name="python3", uid=0)
    settings = SECTIONS[0].defaults()
    settings.procfs, settings.kubelet_socket, settings.interval = str(proc_tree.root), "", "5s"
    gpu_source = SimpleNamespace(devices=[SimpleNamespace(index=0, uuid="GPU-0", pci_bus_id="0000:3b:00.0",
                                                          vendor="nvidia", name="H100", state="ok"),
                                          SimpleNamespace(index=1, uuid="GPU-1", pci_bus_id="", vendor="nvidia",
                                                          name="H100", state="lost")])
    src = WorkloadSource(settings, gpu_source, vendor_sources=[vendor([rec(G0, 100, memory=7)])])
    assert [s.name for s in src.attributor.sources] == ["nvml", "drm-fdinfo"]
    assert src.document() is None
    first = src.collect(1000.0)
    assert {s.metric for s in first} == {"gpu_workload_memory_used_bytes", "gpu_workload_processes"}
    assert src.collect(1004.0) == [] and src.collect(1005.0)
    doc = src.document()
    assert [g["gpu"] for g in doc["gpus"]] == ["0"]   # the lost GPU is not asked about
    assert doc["gpus"][0]["processes"][0]["workload"]["workload"] == "cmd:python3@root"
    assert src.status.detail["sources"]["nvml"]["processes"] == 1


def test_the_workload_section_validates_like_any_other():
    from agent import config
    known = {**config.sections(), "workload": SECTIONS[0]}
    cfg = config.parse('[workload]\ntop_n = 20\ninterval = "10s"\nprocfs = "/host/proc"\n', "agent.toml", known)
    assert (cfg.workload.top_n, cfg.workload.interval, cfg.workload.procfs) == (20, "10s", "/host/proc")
    for text, key in (("[workload]\n\ntop_n = 500\n", "workload.top_n"), ('[workload]\nprocfs = " "\n', "workload.procfs"),
                      ('[workload]\ninterval = "0s"\n', "workload.interval")):
        with pytest.raises(config.ConfigError) as e:
            config.parse(text, "agent.toml", known)
        assert e.value.key == key and e.value.file == "agent.toml" and e.value.line == text.count("\n")
