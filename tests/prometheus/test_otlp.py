"""OTLP: a receiver implementing OTLP/gRPC's MetricsService (opentelemetry-proto's generated
service) gets the agent's export; decoded, it carries the /metrics names and labels, the
resource attributes of the semantic conventions, and the values of status --json."""
from __future__ import annotations

import queue
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from engines import free_port
from agent.exposition import series_name
from agent.otlp import ucum


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self):
        self.requests: queue.Queue = queue.Queue()

    def Export(self, request, context):
        self.requests.put(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def receiver():
    service = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(service, server)
    port = free_port()
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    service.endpoint = f"127.0.0.1:{port}"
    yield service
    server.stop(0)


def _attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


def decode(request) -> tuple[dict, dict]:
    """(resource attributes, {(metric name, gpu): (value, attributes, kind, unit)})."""
    points = {}
    resource = {}
    for rm in request.resource_metrics:
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                for p in data.data_points:
                    attrs = _attrs(p.attributes)
                    value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                    points[(m.name, attrs.get("gpu"), attrs.get("cpu"))] = (value, attrs, kind, m.unit)
                    if kind == "sum":
                        assert data.is_monotonic and data.aggregation_temporality == 2  # cumulative
    return resource, points


def test_otlp_export_carries_the_metrics_names_labels_and_status_values(start_agent, receiver):
    agent = start_agent("constant", agent='host_id = "gpu-host-7"\nlabels = { rack = "r7" }',
                        extra=f'[otlp]\nendpoint = "{receiver.endpoint}"\ninsecure = true\ninterval = "1s"\n')
    agent.wait_ticks(3)
    resource, points = decode(receiver.requests.get(timeout=20))
    doc = agent.status()  # the constant scenario: every gauge is the same in both
    assert resource["host.name"] == "gpu-host-7" and resource["service.name"] == "egs-agent"
    assert resource["service.instance.id"] == "gpu-host-7" and resource["egs.label.rack"] == "r7"
    compared = 0
    for g in doc["gpus"]:
        for metric, value in g["metrics"].items():
            key = (series_name(metric), str(g["index"]), None)
            if value is None:
                assert key not in points, key
                continue
            got, attrs, kind, unit = points[key]
            assert attrs["uuid"] == g["uuid"] and attrs["vendor"] == g["vendor"] and attrs["model"] == g["name"]
            assert attrs["rack"] == "r7"
            assert attrs["hw.type"] == "gpu" and attrs["hw.id"] == g["uuid"]
            if metric.endswith("_total"):
                assert kind == "sum"
                continue  # energy keeps counting between the export and the status read
            assert kind == "gauge"
            assert got == pytest.approx(value, rel=1e-12), (metric, g["index"])
            compared += 1
    assert compared >= 20
    assert points[("egs_gpu_temperature_celsius", "0", None)][3] == "Cel" == ucum("celsius")
    assert points[("egs_gpu_power_watts", "0", None)][3] == "W"
    assert ("egs_cpu_utilization_percent", None, None) in points or ("egs_memory_used_percent", None, None) in points
    status = agent.status()["otlp"]
    assert status["exports"] >= 1 and status["failed"] == 0


def test_an_unreachable_receiver_is_counted_not_fatal(start_agent):
    port = free_port()  # nothing listens there
    agent = start_agent("constant", extra=f'[otlp]\nendpoint = "127.0.0.1:{port}"\ninsecure = true\n'
                                          'interval = "1s"\ntimeout = "1s"\n')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = agent.status()
        if doc["otlp"]["failed"] >= 1:
            break
        time.sleep(0.5)
    assert doc["otlp"]["failed"] >= 1 and "failed" in doc["otlp"]["last_error"]
    assert doc["components"]["otlp"]["state"] == "ok"
    assert doc["gpus"][0]["metrics"]["gpu_temperature_celsius"] is not None


def test_insecure_otlp_to_a_remote_endpoint_is_refused_by_check_config(tmp_path):
    from daemon_helpers import cli, write_config
    config = write_config(tmp_path, extra='[otlp]\nendpoint = "collector.example:4317"\ninsecure = true\n')
    result = cli("check-config", str(config))
    assert result.returncode == 2 and "otlp.insecure" in result.stderr, result.stderr
