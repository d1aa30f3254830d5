"""The kubelet pod-resources client against a real gRPC server (the generated servicer) on a
Unix socket, as a kubelet serves it; and the pass naming a real process's pod through it."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from agent.proto import podresources_pb2 as pb, podresources_pb2_grpc
from agent.workload.attribution import Attributor
from agent.workload.kubelet import PodResources
from agent.workload.records import GpuRef

UID = "8a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b"
CID = "ab" * 32
G0 = GpuRef(0, "GPU-aaaaaaaa-0000-0000-0000-000000000000", "00000000:3B:00.0", "nvidia", "T")
G1 = GpuRef(1, "GPU-bbbbbbbb-0000-0000-0000-000000000000", "00000000:86:00.0", "nvidia", "T")
G2 = GpuRef(2, "GPU-cccccccc-0000-0000-0000-000000000000", "0000:af:00.0", "amd", "T")


def pod(name, namespace, *containers):
    return pb.PodResources(name=name, namespace=namespace, containers=[
        pb.ContainerResources(name=c, devices=[pb.ContainerDevices(resource_name=r, device_ids=ids)])
        for c, r, ids in containers])


class Kubelet(podresources_pb2_grpc.PodResourcesListerServicer):
    def __init__(self):
        self.pods, self.calls, self.fail = [], 0, None

    def List(self, request, context):
        self.calls += 1
        if self.fail:
            context.abort(self.fail, "kubelet is restarting")
        return pb.ListPodResourcesResponse(pod_resources=self.pods)


@pytest.fixture
def kubelet(tmp_path):
    servicer = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
    path = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix:{path}")
    server.start()
    servicer.path = str(path)
    yield servicer
    server.stop(0)


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


def test_devices_map_to_their_containers_and_the_answer_is_cached(kubelet):
    kubelet.pods = [
        pod("train-0", "ml", ("trainer", "nvidia.com/gpu", [G0.uuid])),
        # time-slicing: two pods share G1 under replica ids
        pod("a", "team1", ("app", "nvidia.com/gpu", [G1.uuid + "::0"])),
        pod("b", "team2", ("app", "nvidia.com/gpu", [G1.uuid + "::1"])),
        pod("rocm", "hpc", ("main", "amd.com/gpu", ["0000:AF:00.0"])),
        pod("cpu-only", "default", ("c", "example.com/foo", ["x"])),
    ]
    clock = Clock()
    k = PodResources(kubelet.path, refresh_s=30, clock=clock)
    try:
        assert k.assigned(G0) == [("ml", "train-0", "trainer")]
        assert k.assigned(G1) == [("team1", "a", "app"), ("team2", "b", "app")]
        assert k.assigned(G2) == [("hpc", "rocm", "main")]
        assert k.status()["state"] == "ok" and kubelet.calls == 1
        kubelet.pods = []
        clock.t += 29
        assert k.assigned(G0) and kubelet.calls == 1   # cached
        clock.t += 2
        assert k.assigned(G0) == [] and kubelet.calls == 2
    finally:
        k.close()


def test_a_failing_kubelet_keeps_the_last_answer_and_says_why(kubelet):
    kubelet.pods = [pod("train-0", "ml", ("trainer", "nvidia.com/gpu", [G0.uuid]))]
    clock = Clock()
    k = PodResources(kubelet.path, refresh_s=1, clock=clock)
    try:
        k.assigned(G0)
        kubelet.fail = grpc.StatusCode.UNAVAILABLE
        clock.t += 5
        assert k.assigned(G0) == [("ml", "train-0", "trainer")]
        status = k.status()
        assert status["state"] == "error" and "UNAVAILABLE" in status["detail"] and "restarting" in status["detail"]
        kubelet.fail = None
        clock.t += 5
        k.assigned(G0)
        assert k.status()["state"] == "ok"
    finally:
        k.close()


def test_no_socket_is_absent_not_an_error(tmp_path):
    k = PodResources(str(tmp_path / "none.sock"))
    assert k.assigned(G0) == [] and k.status()["state"] == "absent"


def test_a_process_in_a_pod_cgroup_gets_the_pods_names(kubelet, cgroups, vendor, rec):
    kubelet.pods = [pod("train-0", "ml", ("trainer", "nvidia.com/gpu", [G0.uuid])),
                    pod("a", "team1", ("app", "nvidia.com/gpu", [G1.uuid + "::0"])),
                    pod("b", "team2", ("app", "nvidia.com/gpu", [G1.uuid + "::1"]))]
    p = cgroups.sleeper()
    cgroups.put(p.pid, "cpu", f"egs-test/kubepods/burstable/pod{UID}/{CID}")
    k = PodResources(kubelet.path)
    try:
        snap = Attributor([vendor([rec(G0, p.pid, memory=1 << 30), rec(G1, p.pid, memory=1 << 20)])],
                          kubelet=k).run([G0, G1])
    finally:
        k.close()
    w0, w1 = snap.gpus[0].rows[0].workload, snap.gpus[1].rows[0].workload
    assert w0.labels() == {"workload": "k8s:ml/train-0/trainer", "workload_kind": "kubernetes",
                           "namespace": "ml", "pod": "train-0", "container": "trainer"}
    assert w0.pod_uid == UID and w0.container_id == CID
    # a GPU shared by two pods cannot say which one this process is: the UID stays, no guess
    assert w1.name == f"k8s:pod-{UID}/{CID[:12]}" and w1.pod is None
    assert snap.kubelet["state"] == "ok"


def test_a_pod_on_a_gpu_it_was_not_given_gets_no_names(kubelet, cgroups, vendor, rec):
    # train-0 was given G0; a second pod (privileged, all GPUs visible) runs on it too: the
    # kubelet cannot say which process is whose, so neither is named.
    kubelet.pods = [pod("train-0", "ml", ("trainer", "nvidia.com/gpu", [G0.uuid]))]
    other_uid = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
    p1, p2 = cgroups.sleeper(), cgroups.sleeper()
    cgroups.put(p1.pid, "cpu", f"egs-test/kubepods/burstable/pod{UID}/{CID}")
    cgroups.put(p2.pid, "cpu", f"egs-test/kubepods/burstable/pod{other_uid}/{'cd' * 32}")
    k = PodResources(kubelet.path)
    try:
        rows = Attributor([vendor([rec(G0, p1.pid, memory=2), rec(G0, p2.pid, memory=1)])],
                          kubelet=k).run([G0]).gpus[0].rows
    finally:
        k.close()
    assert [r.workload.pod_uid for r in rows] == [UID, other_uid]
    assert [r.workload.pod for r in rows] == [None, None]
