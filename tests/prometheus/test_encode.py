"""The caching encoder writes exactly what prometheus-client writes, scrape after scrape,
whatever the values, label values and content type."""
from __future__ import annotations

import math

import pytest
from prometheus_client import Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Sample

from agent.prometheus.encode import CachingEncoder

ACCEPTS = ["", "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0",
           "application/openmetrics-text;version=0.0.1", "text/plain;version=1.0.0;escaping=allow-utf-8",
           "application/openmetrics-text;version=1.0.0;escaping=values"]


class Families:
    def __init__(self):
        self.values = [1.0, 0.1, 1e21, -0.0, math.inf, math.nan, 12345678.9]
        self.histogram = Histogram("egs_collector_ack_latency_seconds", "Acks.", registry=None, buckets=(0.1, 1))

    def collect(self):
        g = Metric("egs_gpu_temperature_celsius", 'Temp "core" \\ edge\nsecond line.', "gauge", "celsius")
        g.samples = [Sample("egs_gpu_temperature_celsius",
                            {"gpu": str(i), "model": 'Tesla "P100"\\x\nñ', "rack": "r1"}, v, None, None)
                     for i, v in enumerate(self.values)]
        yield g
        c = Metric("egs_gpu_energy_joules", "Energy.", "counter", "joules")
        c.samples = [Sample("egs_gpu_energy_joules_total", {"gpu": "0"}, self.values[0] * 3, None, None)]
        yield c
        u = Metric("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "mJ.", "unknown")
        u.samples = [Sample("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {"gpu": "0", "modelName": "X"}, 5.0, None, None)]
        yield u
        e = Metric("egs_agent_windows_series", "No labels.", "gauge")
        e.samples = [Sample("egs_agent_windows_series", {}, 80.0, None, None)]
        yield e
        yield from self.histogram.collect()


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_caching_encoder_writes_prometheus_clients_bytes(accept):
    families = Families()
    encoder, content_type = choose_encoder(accept)
    caching = CachingEncoder()
    for round_ in range(4):
        families.histogram.observe(0.05 * round_)
        assert caching.encode(families, encoder, content_type) == encoder(families), (accept, round_)
        families.values = [v * 1.5 + round_ for v in families.values]  # the values move, the labels stay
    families.values.append(7.0)  # a new series
    assert caching.encode(families, encoder, content_type) == encoder(families)


def test_one_encoder_serves_every_content_type_apart():
    families, caching = Families(), CachingEncoder()
    bodies = {}
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        bodies[content_type] = caching.encode(families, encoder, content_type)
        assert bodies[content_type] == encoder(families)
    assert len(set(bodies.values())) >= 2  # text and OpenMetrics differ
