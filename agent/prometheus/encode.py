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
from typing import Callable, Iterable

from prometheus_client.core import Metric
from prometheus_client.samples import Sample
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
        with its `content_type`) would write them. A collector with `rows()` (the agent's
        ScrapeCollector) hands its families over without making prometheus-client's
        per-sample objects; any other is read through `collect()`."""
        rows = collector.rows() if hasattr(collector, "rows") else _rows(collector)
        return self.encode_rows(rows, encoder, content_type)

    def encode_rows(self, rows: Iterable[tuple], encoder: Callable, content_type: str) -> bytes:
        """`rows`: (family, sample name, [(labels, value)]) with the family's samples left out,
        or (family, None, None) for one to render whole (histograms and the like)."""
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
        for fam, name, samples in rows:
            if name is None:
                text = encoder(_One(fam)).decode("utf-8")
                append(text[: -len(_EOF)] if openmetrics else text)
                continue
            key = (fam.name, fam.type, fam.documentation, fam.unit)
            header = headers.get(key)
            if header is None:
                text = encoder(_One(Metric(fam.name, fam.documentation, fam.type, fam.unit))).decode("utf-8")
                header = headers[key] = text[: -len(_EOF)] if openmetrics else text
            append(header)
            for labels, value in samples:
                # Keyed by the labels dict's identity (the families hand out the same dict
                # every scrape), held in the entry so the id cannot be reused meanwhile.
                entry = prefixes.get((name, id(labels)))
                if entry is None or entry[0] is not labels:
                    entry = prefixes[(name, id(labels))] = (labels, self._prefix(fam, name, labels, encoder))
                append(entry[1])
                append(floatToGoString(value))
                append("\n")
        if openmetrics:
            append(_EOF)
        return "".join(out).encode("utf-8")

    @staticmethod
    def _prefix(fam: Metric, name: str, labels: dict[str, str], encoder: Callable) -> str:
        one = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        one.samples = [Sample(name, labels, 0.0, None, None)]
        for line in encoder(_One(one)).decode("utf-8").split("\n"):
            if line and not line.startswith("#"):
                return line[: line.rindex(" ") + 1]
        raise ValueError(f"prometheus-client wrote no sample line for {name}")


def _rows(collector) -> Iterable[tuple]:
    """A prometheus-client collector's families as rows; a family whose samples do not all
    share one name (or of another type than gauge, counter, unknown) is rendered whole."""
    for fam in collector.collect():
        names = {s.name for s in fam.samples}
        if fam.type not in ("gauge", "counter", "unknown") or len(names) > 1:
            yield fam, None, None
        else:
            yield fam, (names.pop() if names else fam.name), [(s.labels, s.value) for s in fam.samples]
