"""prometheus-client's exposition, remembered: the same bytes for a fraction of the CPU.

prometheus-client's encoders escape and format every label of every sample on every scrape;
on an 8-GPU host that is about nine tenths of a scrape's CPU (bench/scrape.py), and it is the
same work each time, because the families and label sets change rarely and only the values
move. `CachingEncoder` asks prometheus-client itself to render each family's header lines
and each series' `name{labels} ` once (per content type, i.e. format, version and
escaping), remembers them, and writes only the value per scrape with prometheus-client's
own `floatToGoString`. The output is byte for byte prometheus-client's
(tests/prometheus/test_encode.py checks it on both formats).
"""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

MAX_REMEMBERED = 50_000  # series prefixes per content type; label churn past it starts afresh
_EOF = "# EOF\n"


class _One:
    """A collector of one family (prometheus-client's encoders take a collector)."""

    def __init__(self, metric: Metric):
        self.metric = metric

    def collect(self):
        yield self.metric


class CachingEncoder:
    def __init__(self) -> None:
        self._caches: dict[str, tuple[dict, dict]] = {}
        self._lock = threading.Lock()

    def encode(self, collector, encoder: Callable, content_type: str) -> bytes:
        """`collector`'s families as `encoder` (from prometheus-client's `choose_encoder`,
        with its `content_type`) would write them."""
        openmetrics = content_type.startswith("application/openmetrics-text")
        with self._lock:
            cache = self._caches.get(content_type)
            if cache is None:
                cache = self._caches[content_type] = ({}, {})
        headers, prefixes = cache
        if len(prefixes) > MAX_REMEMBERED:
            prefixes.clear()
        out: list[str] = []
        append = out.append
        for fam in collector.collect():
            if fam.type not in ("gauge", "counter", "unknown"):
                # histograms and the like: rendered whole, nothing to remember (the collector's
                # own ack histogram, a few lines)
                text = encoder(_One(fam)).decode("utf-8")
                append(text[: -len(_EOF)] if openmetrics else text)
                continue
            key = (fam.name, fam.type, fam.documentation, fam.unit)
            header = headers.get(key)
            if header is None:
                text = encoder(_One(Metric(fam.name, fam.documentation, fam.type, fam.unit))).decode("utf-8")
                header = headers[key] = text[: -len(_EOF)] if openmetrics else text
            append(header)
            for s in fam.samples:
                # Keyed by the labels dict's identity (the families hand out the same dict
                # every scrape), held in the entry so the id cannot be reused meanwhile.
                labels = s.labels
                entry = prefixes.get((s.name, id(labels)))
                if entry is None or entry[0] is not labels:
                    entry = prefixes[(s.name, id(labels))] = (labels, self._prefix(fam, s, encoder))
                append(entry[1])
                append(floatToGoString(s.value))
                append("\n")
        if openmetrics:
            append(_EOF)
        return "".join(out).encode("utf-8")

    @staticmethod
    def _prefix(fam: Metric, sample, encoder: Callable) -> str:
        one = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        one.samples = [sample._replace(value=0.0)]
        for line in encoder(_One(one)).decode("utf-8").split("\n"):
            if line and not line.startswith("#"):
                return line[: line.rindex(" ") + 1]
        raise ValueError(f"prometheus-client wrote no sample line for {sample.name}")
