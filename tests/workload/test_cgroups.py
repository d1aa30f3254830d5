"""Workload classification from /proc/PID/cgroup: every path shape docs/workloads.md lists,
v1 and v2 files, and real processes in real cgroups this test creates."""
from __future__ import annotations

import pytest

from agent.workload import cgroups
from agent.workload.attribution import Attributor
from agent.workload.records import GpuRef

UID = "8a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b"
UID_ = UID.replace("-", "_")
CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100"
GPU = GpuRef(0, "GPU-11111111-2222-3333-4444-555555555555", "0000:3b:00.0", "nvidia", "Test GPU")

# (path, kind, workload label, extra fields) -- the same examples as docs/workloads.md
SHAPES = [
    (f"/kubepods/burstable/pod{UID}/{CID}", "kubernetes", f"k8s:pod-{UID}/{CID[:12]}",
     {"pod_uid": UID, "container_id": CID, "runtime": None}),
    (f"/kubepods/pod{UID}/{CID}", "kubernetes", f"k8s:pod-{UID}/{CID[:12]}", {"pod_uid": UID}),
    (f"/kubepods/besteffort/pod{UID}", "kubernetes", f"k8s:pod-{UID}", {"container_id": None}),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     "kubernetes", f"k8s:pod-{UID}/{CID[:12]}", {"pod_uid": UID, "runtime": "containerd"}),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope", "kubernetes",
     f"k8s:pod-{UID}/{CID[:12]}", {"runtime": "cri-o"}),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope",
     "kubernetes", f"k8s:pod-{UID}/{CID[:12]}", {"runtime": "cri-o"}),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope",
     "kubernetes", f"k8s:pod-{UID}/{CID[:12]}", {"runtime": "docker"}),
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope", "kubernetes",
     f"k8s:pod-{UID}/{CID[:12]}", {"runtime": "containerd"}),
    ("/slurm/uid_1000/job_4242/step_0/task_1", "slurm", "slurm:4242.0", {"slurm_job": "4242", "slurm_step": "0"}),
    ("/slurm/uid_1000/job_4242/step_batch/task_0", "slurm", "slurm:4242.batch", {"slurm_step": "batch"}),
    ("/slurm_node07/uid_1000/job_77/step_extern", "slurm", "slurm:77.extern", {"slurm_job": "77"}),
    ("/slurm/uid_1000/job_4242", "slurm", "slurm:4242", {"slurm_step": None}),
    ("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", "slurm", "slurm:4242.0", {}),
    ("/system.slice/slurmstepd.scope/job_4242/step_interactive/slurm", "slurm", "slurm:4242.interactive", {}),
    ("/system.slice/node07_slurmstepd.scope/job_9/step_batch/user/task_0", "slurm", "slurm:9.batch", {}),
    (f"/docker/{CID}", "container", f"docker:{CID[:12]}", {"runtime": "docker", "container_id": CID}),
    (f"/system.slice/docker-{CID}.scope", "container", f"docker:{CID[:12]}", {"runtime": "docker"}),
    (f"/machine.slice/libpod-{CID}.scope", "container", f"podman:{CID[:12]}", {"runtime": "podman"}),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", "container",
     f"podman:{CID[:12]}", {"runtime": "podman"}),
    (f"/libpod_parent/libpod-{CID}", "container", f"podman:{CID[:12]}", {"runtime": "podman"}),
    ("/lxc.payload.web01", "container", "lxc:web01", {"runtime": "lxc"}),
    ("/lxc/web01", "container", "lxc:web01", {"runtime": "lxc"}),
    ("/machine.slice/machine-build7.scope", "container", "nspawn:build7", {"runtime": "nspawn"}),
    (f"/default/{CID}", "container", f"container:{CID[:12]}", {"runtime": None}),
    ("/system.slice/ollama.service", "systemd", "systemd:ollama.service", {"unit": "ollama.service"}),
    ("/system.slice/run-u42.scope", "systemd", "systemd:run-u42.scope", {}),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service", "systemd",
     "systemd:user@1000/jupyter.service", {"unit": "jupyter.service"}),
]

NOT_A_WORKLOAD = [
    "/", "/user.slice/user-1000.slice/session-3.scope", "/init.scope",
    "/user.slice/user-1000.slice/user@1000.service/init.scope", "/process_api/3e9a43ca427c81e1",
    "/some/unknown/shape", "/kubepods/burstable/notapod", f"/kubepods/burstable/pod{UID[:-1]}",
]


@pytest.mark.parametrize("path,kind,name,fields", SHAPES, ids=[s[0][:60] for s in SHAPES])
def test_every_documented_shape_is_recognised_in_v1_and_v2_files(path, kind, name, fields):
    for text in (f"0::{path}\n", f"12:cpu,cpuacct:{path}\n3:memory:/\n1:name=systemd:/init.scope\n"):
        w = cgroups.classify(text)
        assert w is not None and (w.kind, w.name) == (kind, name), text
        for key, value in fields.items():
            assert getattr(w, key) == value, key
        assert w.cgroup == path


@pytest.mark.parametrize("path", NOT_A_WORKLOAD)
def test_an_unknown_shape_or_a_login_session_names_no_workload(path):
    assert cgroups.classify(f"0::{path}\n") is None


def test_paths_outside_the_readers_cgroup_namespace_are_recognised():
    # An agent in its own cgroup namespace reads other processes' paths relative to its root.
    w = cgroups.classify(f"0::/../../kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n")
    assert (w.kind, w.pod_uid, w.container_id) == ("kubernetes", UID, CID)
    assert cgroups.classify("0::/../slurm/uid_5/job_8/step_0\n").name == "slurm:8.0"


def test_the_most_specific_hierarchy_wins_on_a_v1_host():
    # Slurm's tasks stay in slurmd.service under name=systemd but are in the job under freezer.
    text = ("9:name=systemd:/system.slice/slurmd.service\n7:freezer:/slurm/uid_1000/job_5/step_0/task_0\n"
            "4:memory:/slurm/uid_1000/job_5/step_0/task_0\n1:cpu:/\n0::/system.slice/slurmd.service\n")
    w = cgroups.classify(text)
    assert (w.kind, w.name) == ("slurm", "slurm:5.0")


def test_garbage_in_the_cgroup_file_is_no_error():
    for text in ("", "\n\n", "nonsense\n", "1:cpu\n", "\x00\xff:::\n", "0::" + "/x" * 5000 + "\n"):
        assert cgroups.classify(text) is None


def test_a_process_of_no_known_cgroup_is_named_by_command_and_user():
    w = cgroups.process_workload("python3", "alice")
    assert (w.kind, w.name) == ("process", "cmd:python3@alice")
    assert w.labels() == {"workload": "cmd:python3@alice", "workload_kind": "process"}


def test_label_values_are_bounded():
    w = cgroups.classify_path("/system.slice/" + "x" * 1000 + ".service")
    assert len(w.labels()["workload"]) == cgroups.MAX_LABEL_VALUE


# --- real processes in real cgroups -----------------------------------------------------------

def _attribute(vendor, rec, pid):
    a = Attributor([vendor([rec(GPU, pid, memory=1 << 20)])])
    return a.run([GPU]).gpus[0].rows[0]


REAL_V1 = [
    ("cpu", f"egs-test/kubepods/burstable/pod{UID}/{CID}", "kubernetes", f"k8s:pod-{UID}/{CID[:12]}"),
    ("freezer", "egs-test/slurm/uid_0/job_31337/step_2/task_0", "slurm", "slurm:31337.2"),
    ("systemd", "egs-test/system.slice/egs-gpu-job.service", "systemd", "systemd:egs-gpu-job.service"),
    ("cpu", f"egs-test/docker/{CID}", "container", f"docker:{CID[:12]}"),
    ("cpu", "egs-test/some/unknown/shape", "process", "cmd:sleep@root"),
]


@pytest.mark.parametrize("hierarchy,path,kind,name", REAL_V1, ids=[r[2] + "-" + r[0] for r in REAL_V1])
def test_a_real_process_in_a_real_v1_cgroup(cgroups, vendor, rec, hierarchy, path, kind, name):
    p = cgroups.sleeper()
    cgroups.put(p.pid, hierarchy, path)
    row = _attribute(vendor, rec, p.pid)
    assert (row.workload.kind, row.workload.name) == (kind, name)
    assert row.reason is None and row.host.command == "sleep 60" and row.host.user == "root"


def test_a_real_process_in_a_real_v2_cgroup(cgroups, vendor, rec):
    p = cgroups.sleeper()
    cgroups.put(p.pid, "v2", f"egs-test.slice/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope")
    row = _attribute(vendor, rec, p.pid)
    assert (row.workload.kind, row.workload.pod_uid, row.workload.runtime) == ("kubernetes", UID, "containerd")


def test_kubernetes_in_one_hierarchy_beats_a_unit_in_another(cgroups, vendor, rec):
    p = cgroups.sleeper()
    cgroups.put(p.pid, "systemd", "egs-test/system.slice/containerd.service")
    cgroups.put(p.pid, "cpu", f"egs-test/kubepods/pod{UID}/{CID}")
    assert _attribute(vendor, rec, p.pid).workload.kind == "kubernetes"
