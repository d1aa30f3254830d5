"""Pod name, namespace and container from the kubelet's pod-resources API (what dcgm-exporter
does): `List` on `/var/lib/kubelet/pod-resources/kubelet.sock` answers, for every pod on the
node, the devices each container was given. The cgroup path gives a process's pod UID and
container ID but not the pod's name; the kubelet's answer gives names but no UIDs, so the two
meet at the GPU: the Kubernetes processes on a GPU assigned to exactly one container (the
usual, unshared case) get that container's names, when they are all of one pod UID
(`Attributor._name_pods`). A GPU shared by several containers (time-slicing) names the pod
only when they are all in one pod, else nothing: a guess would be worse.

The answer is cached for `refresh_s` (a List walks every pod; dcgm-exporter asks once per
scrape, we ask far less often). No socket: the feature is simply off (state "absent"). A
failing kubelet keeps the previous answer and says why.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import grpc

from agent.proto import podresources_pb2, podresources_pb2_grpc
from agent.workload.records import GpuRef, normalise_bus_id

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The kubelet's answer grows with the pods on the node (a few hundred bytes each); 16 MiB is
# far above any node's (110 pods by default) and keeps a broken peer from making us read more.
MAX_MESSAGE = 16 << 20
MAX_ASSIGNMENTS = 100_000


class PodResources:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 2.0, refresh_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.clock = clock
        self.state = "absent"   # absent | ok | error
        self.detail = f"no socket at {socket_path}"
        self._channel: grpc.Channel | None = None
        self._by_device: dict[str, list[tuple[str, str, str]]] = {}
        self._fetched_at: float | None = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def status(self) -> dict:
        return {"state": self.state, "detail": self.detail, "socket": self.socket_path,
                "devices": len(self._by_device)}

    def assigned(self, gpu: GpuRef) -> list[tuple[str, str, str]]:
        """(namespace, pod, container) of every container given `gpu`, refreshed when due."""
        self._refresh()
        found = self._by_device.get(gpu.uuid.lower(), [])
        if gpu.pci_bus_id:
            found = found + self._by_device.get(normalise_bus_id(gpu.pci_bus_id), [])
        return sorted(set(found))

    def _refresh(self) -> None:
        now = self.clock()
        if self._fetched_at is not None and now - self._fetched_at < self.refresh_s:
            return
        self._fetched_at = now
        if not os.path.exists(self.socket_path):
            self.state, self.detail = "absent", f"no socket at {self.socket_path}"
            self._by_device = {}
            self.close()
            return
        try:
            if self._channel is None:
                self._channel = grpc.insecure_channel(
                    f"unix:{self.socket_path}", options=[("grpc.max_receive_message_length", MAX_MESSAGE)])
            stub = podresources_pb2_grpc.PodResourcesListerStub(self._channel)
            reply = stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as e:
            self.state = "error"
            self.detail = (f"List on {self.socket_path} failed: {e.code().name}: {e.details()} "
                           f"(keeping the answer of the last success)")
            self.close()
            return
        self._by_device = index(reply)
        self.state = "ok"
        self.detail = f"{len(reply.pod_resources)} pods listed"


def index(reply) -> dict[str, list[tuple[str, str, str]]]:
    """device id (lower case, replica suffix `::N` removed, PCI addresses normalised) ->
    the containers given it."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    n = 0
    for pod in reply.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                for device_id in devices.device_ids:
                    n += 1
                    if n > MAX_ASSIGNMENTS:
                        return out
                    key = device_id.split("::", 1)[0].strip().lower()
                    if key.count(":") == 2 and "." in key:
                        key = normalise_bus_id(key)
                    out.setdefault(key, []).append((pod.namespace, pod.name, container.name))
    return out
