"""Queries of the remote-write store, through the engine's Prometheus HTTP API; agents and
events from the store's ledger.

A point is rebuilt from the five series it was written as (agent/collector/store/promwrite.py):
- raw: the samples themselves, `/api/v1/query` of a range selector `{...}[span]` at `end`
  (an engine returns a range selector's samples as stored);
- 10 s / 1 min: `/api/v1/query_range` with the bucket as step and window, evaluated 1 ms
  before each bucket's end so that the window (end - width, end] holds exactly the samples
  of [bucket, bucket + width): `last_over_time` of the value, `min_over_time` of `_min`,
  `max_over_time` of `_max`, `sum_over_time` of `_sum` and `_count` — the same buckets the
  SQLite store's rollups hold. (Prometheus 2's range selectors include their first
  millisecond as well: there a point stamped exactly 1 ms before a bucket's start would
  count in both buckets. Agents stamp points at whole seconds.)
`/api/v1/series` counts the matching series first, so a query past `max_query_series` is
refused before any point is read.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from agent.collector.store import QueryBounds, QueryTooLarge, StoreConfigError, StoredSeries
from agent.collector.store.engine import Answer, Auth, EngineClient, EngineDown
from agent.collector.store.promwrite import AGGREGATES
from agent.collector.store.promwrite import stats as stats_written
from agent.collector.store.reader import SQLiteReader
from agent.exposition import AGGREGATE_SUFFIXES, HOST_LABEL, label_name, series_name

WIDTHS = {"10s": 10, "1m": 60}
RESOLUTIONS = {"raw": "raw", "1s": "raw", "10s": "10s", "1m": "1m", "60s": "1m"}
DEFAULT_SPAN = {"raw": 3600.0, "10s": 2 * 86400.0}  # as the SQLite store's default retentions
MAX_STEPS = 10_000  # points per series in one query_range request (Prometheus refuses > 11,000)
# A bucket's stat: from its aggregate series when the store writes it, else from the values.
ROLLUP = {"min": ("min_over_time", "min_over_time"), "max": ("max_over_time", "max_over_time"),
          "sum": ("sum_over_time", "sum_over_time"), "count": ("sum_over_time", "count_over_time")}


class EngineQueryError(RuntimeError):
    """The engine could not answer a query (down, or an error of its own)."""


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(name: str, host: str, labels: dict[str, str], name_regex: bool = False) -> str:
    matchers = [f'__name__=~{quote(name)}' if name_regex else f"__name__={quote(name)}"]
    if host:
        matchers.append(f"{HOST_LABEL}={quote(host)}")
    matchers += [f"{label_name(k)}={quote(v)}" for k, v in sorted(labels.items())]
    return "{" + ",".join(matchers) + "}"


class RemoteReader:
    """A `StoreReader` (agent/collector/store) over an engine's query API and the ledger."""

    def __init__(self, query_url: str, ledger_path: str | Path, retention: dict[str, float] | None = None,
                 auth: Auth = Auth(), timeout: float = 30.0, aggregates=AGGREGATES, clock=time.time):
        self.client = EngineClient(query_url, auth, timeout)
        self.stat_of = {suffix: stat for suffix, stat in stats_written(aggregates)}  # written series' suffix -> stat
        self.aggregates = tuple(aggregates)
        self.retention = dict(retention or {})
        self.clock = clock
        self.ledger = SQLiteReader(ledger_path, self.retention, cache_mib=16)

    def check(self) -> str | None:
        """A trivial query: None when the engine answers it, else why not. Raises ValueError
        `StoreConfigError` when the engine refuses the collector itself (URL, credentials)."""
        try:
            answer = self.client.request("GET", "/api/v1/query", params={"query": "1"})
        except EngineDown as e:
            return str(e)
        if answer.ok:
            return None
        if answer.retry:
            return answer.text()
        raise StoreConfigError(f"store.query_url {self.client.url}: the engine refused a query: {answer.text()}"
                         + (" (check bearer_token_file / basic_auth_*)" if answer.status in (401, 403) else "")
                         + (" (give the engine's base URL, e.g. http://vm:8428, without /api/v1)"
                            if answer.status == 404 else ""))

    # --- the HTTP API ----------------------------------------------------------------------

    def _api(self, path: str, params: list[tuple[str, str]]) -> list:
        try:
            answer: Answer = self.client.request("POST", path, body=_form(params),
                                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        except EngineDown as e:
            raise EngineQueryError(f"the store's engine did not answer: {e}") from None
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if not answer.ok or not isinstance(doc, dict) or doc.get("status") != "success":
            why = doc.get("error") if isinstance(doc, dict) and doc.get("error") else answer.text()
            if answer.status == 422 or (isinstance(doc, dict) and doc.get("errorType") in ("bad_data", "execution")):
                if "too many" in str(why) or "exceed" in str(why):
                    raise QueryTooLarge(f"the engine refused the query: {why}")
            raise EngineQueryError(f"the store's engine refused the query: {why}")
        data = doc.get("data")
        if isinstance(data, dict):
            return data.get("result") or []
        return data or []

    # --- StoreReader -----------------------------------------------------------------------

    def _pick(self, resolution: str, start: float, end: float) -> str:
        if resolution:
            if resolution not in RESOLUTIONS:
                raise ValueError(f"unknown resolution {resolution!r} (raw, 10s, 1m)")
            return RESOLUTIONS[resolution]
        span = end - start
        if span <= self.retention.get("raw", DEFAULT_SPAN["raw"]) + 60:
            return "raw"
        if span <= self.retention.get("r10", DEFAULT_SPAN["10s"]) + 60:
            return "10s"
        return "1m"

    def query(self, metric: str, host: str = "", labels: dict | None = None, start: float = 0,
              end: float = 0, resolution: str = "", limit: int = 10000,
              bounds: QueryBounds = QueryBounds()) -> tuple[str, list[StoredSeries]]:
        """As `StoreReader.query`; `EngineQueryError` when the engine cannot answer."""
        bounds.names(metric, host)
        start, end = bounds.window(start, end, self.clock())
        kind = self._pick(resolution, start, end)
        if kind == "raw" and end - start > bounds.max_span:
            raise ValueError(f"a raw-resolution query may cover at most {bounds.max_span:g} s "
                             f"(consumers.max_query_span); ask for resolution 10s or 1m")
        want = {str(k): str(v) for k, v in (labels or {}).items()}
        base = series_name(metric)
        found = self._api("/api/v1/series", [("match[]", selector(base, host, want)),
                                             ("start", _ts(start)), ("end", _ts(end))])
        if len(found) > bounds.max_series:
            raise QueryTooLarge(f"the query matches more than {bounds.max_series} series "
                                "(consumers.max_query_series); narrow it by host or labels")
        if not found:
            return kind, []
        limit = max(1, min(limit, bounds.max_points))
        if kind == "raw":
            series = self._raw(base, host, want, start, end)
        else:
            series = self._rollup(base, host, want, start, end, WIDTHS[kind])
        out, total = [], 0
        known = self._point_labels(metric)
        for (h, lab), by_stat in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            points = _points(by_stat)[:limit]
            total += len(points)
            if total > bounds.max_points:
                raise QueryTooLarge(f"the answer would hold more than {bounds.max_points} points "
                                    "(consumers.max_query_points); narrow the range, the series or the resolution")
            out.append(StoredSeries(h, metric, _own_labels(dict(lab), known.get(h, ())), points))
        return kind, out

    def _point_labels(self, metric: str) -> dict[str, list[dict]]:
        """Per host, the label sets the ledger knows for `metric`'s points: an engine's series
        also carries the agent's labels, which the answer leaves out as the SQLite store does."""
        out: dict[str, list[dict]] = {}
        for host, labels in self.ledger.series_labels(metric):
            out.setdefault(host, []).append(labels)
        return out

    # Both return, per series (host, labels), per stat, its (timestamps, values) columns.

    def _raw(self, base: str, host: str, want: dict, start: float, end: float) -> dict:
        names = "|".join(base + suffix for suffix in self.stat_of)
        span_ms = int(math.ceil((end - start) * 1000)) + 1  # (end - span, end] holds start
        query = f"{selector(names, host, want, name_regex=True)}[{span_ms}ms]"
        series: dict = {}
        for item in self._api("/api/v1/query", [("query", query), ("time", _ts(end))]):
            metric = dict(item.get("metric") or {})
            name = metric.pop("__name__", "")
            stat = self.stat_of.get(name[len(base):]) if name.startswith(base) else None
            if stat is None:
                continue
            # Prometheus 2's range selectors include their first millisecond: start - 1 ms out.
            values = [v for v in item.get("values") or () if v[0] >= start]
            _extend(series.setdefault(_key(metric), {}), stat, [round(v[0], 3) for v in values], values)
        return series

    def _rollup(self, base: str, host: str, want: dict, start: float, end: float, width: int) -> dict:
        first, last = int(start // width) * width, int(end // width) * width
        series: dict = {}
        plan = [("last", f"last_over_time({selector(base, host, want)}[{width}s])")]
        for stat, (of_aggregate, of_values) in ROLLUP.items():
            if stat in self.aggregates:
                plan.append((stat, f"{of_aggregate}({selector(base + AGGREGATE_SUFFIXES[stat], host, want)}[{width}s])"))
            else:  # not written: the bucket's figure over the values written (each a point's last)
                plan.append((stat, f"{of_values}({selector(base, host, want)}[{width}s])"))
        for stat, query in plan:
            bucket = first
            while bucket <= last:  # at most MAX_STEPS buckets a request
                upto = min(last, bucket + (MAX_STEPS - 1) * width)
                params = [("query", query), ("start", _ts(bucket + width - 0.001)),
                          ("end", _ts(upto + width - 0.001)), ("step", f"{width}s")]
                for item in self._api("/api/v1/query_range", params):
                    metric = dict(item.get("metric") or {})
                    metric.pop("__name__", None)
                    values = item.get("values") or []
                    by_stat = series.setdefault(_key(metric), {})
                    # The five stats of a series share their buckets (the same length, first and
                    # last evaluation time: the same grid points); computed once.
                    grid = (len(values), values[0][0], values[-1][0]) if values else None
                    if grid is not None and by_stat.get("grid") == grid:
                        stamps = by_stat["stamps"]
                    else:
                        # Evaluated 1 ms before each bucket's end: the bucket starts `width` before that.
                        stamps = [float(round(v[0] + 0.001 - width)) for v in values]
                        by_stat["grid"], by_stat["stamps"] = grid, stamps
                    _extend(by_stat, stat, stamps, values)
                bucket = upto + width
        for by_stat in series.values():
            by_stat.pop("grid", None), by_stat.pop("stamps", None)
        return series

    def agents(self) -> list[dict]:
        return self.ledger.agents()

    def events(self, *args, **kwargs) -> list[dict]:
        return self.ledger.events(*args, **kwargs)

    def recordings(self, *args, **kwargs) -> list[dict]:
        return self.ledger.recordings(*args, **kwargs)

    def close(self) -> None:
        self.client.close()
        self.ledger.close()


def _own_labels(labels: dict[str, str], known: list[dict] | tuple) -> dict[str, str]:
    """The point's own labels among an engine series' labels: those of the ledger's label set
    for the series (the one whose every label the series has, the largest such); all of them
    when the ledger does not know it (written by another collector)."""
    best = None
    for candidate in known:
        if all(labels.get(label_name(k)) == v for k, v in candidate.items()):
            if best is None or len(candidate) > len(best):
                best = candidate
    return dict(best) if best is not None else labels


def _key(metric: dict) -> tuple[str, tuple]:
    host = metric.pop(HOST_LABEL, "")
    return host, tuple(sorted(metric.items()))


def _extend(stats: dict, stat: str, stamps: list[float], values: list) -> None:
    """Add one answer's samples (`values`: [ts, "value"] pairs, as the API gives them) to a
    series' column of `stat`."""
    column = stats.get(stat)
    floats = [float(v[1]) for v in values]
    # New lists when adding to a column: `stamps` may be shared with the other stats.
    stats[stat] = (stamps, floats) if column is None else (column[0] + stamps, column[1] + floats)


def _points(stats: dict) -> list[tuple[float, int, float, float, float, float]]:
    """A series' points from its stat columns, oldest first: (ts, count, sum, min, max, last).
    Usually every stat has the same timestamps and the columns are zipped; where one lacks a
    timestamp (a sample the engine refused), what is there fills in for it."""
    columns = [stats.get(stat) for stat in ("count", "sum", "min", "max", "last")]
    stamps = next((c[0] for c in columns if c is not None), [])
    if all(c is not None and c[0] == stamps for c in columns) and stamps == sorted(stamps):
        count, total, low, high, last = (c[1] for c in columns)
        return list(zip(stamps, map(int, count), total, low, high, last))
    by_ts: dict[float, dict] = {}
    for stat, column in stats.items():
        for ts, value in zip(*column):
            by_ts.setdefault(ts, {})[stat] = value
    return [_point(ts, values) for ts, values in sorted(by_ts.items()) if "last" in values or "count" in values]


def _point(ts: float, stats: dict) -> tuple[float, int, float, float, float, float]:
    last = stats.get("last", stats.get("max", 0.0))
    count = int(stats.get("count", 1))
    return (ts, count, stats.get("sum", last * count), stats.get("min", last), stats.get("max", last), last)


def _ts(t: float) -> str:
    return f"{t:.3f}"


def _form(params: list[tuple[str, str]]) -> bytes:
    import urllib.parse
    return urllib.parse.urlencode(params).encode()
