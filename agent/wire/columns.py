"""A Batch's points, column-wise: how the agent writes them and the collector reads them.

Point i of a batch is series i of `Batch.series_table` (metric and labels) over the interval
starting at `ts[i]`, with `count[i]`, `sum[i]`, `min[i]`, `max[i]` and `last[i]`
(proto/agent/proto/collector.proto says why the format is column-wise).

Writing (agent): `SeriesEntries` turns (metric, labels) into that series' encoded table
entry, remembered, so a batch's table is a join of bytes the agent already has and comes
out byte-identical every second while its series stay the same. `Columns` collects a batch.

Reading (collector): `read(batch)` checks a batch's columns and returns them as `Points`;
the table is parsed once per distinct bytes (`layout`, a bounded cache), so a collector
with a thousand agents parses each agent's table when it first sees it, not every second.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Iterator, NamedTuple

from agent.proto import collector_pb2

FIELDS = ("ts", "count", "sum", "min", "max", "last")


# --- writing -----------------------------------------------------------------------------

class SeriesEntries:
    """(metric, labels) -> the series' entry of an encoded SeriesTable, remembered.

    A repeated field's encoding is its entries' encodings one after another, so a table is
    `b"".join(entries)`. Keyed by the label items (not the dict's id): a dict changed in
    place, or a fresh dict per point, still gets the right entry. Bounded: label sets come
    and go (a GPU replaced, a NIC renamed)."""

    KEPT = 4096

    def __init__(self) -> None:
        self._known: dict[tuple, bytes] = {}

    def __call__(self, metric: str, labels: dict) -> bytes:
        try:
            key = (metric, tuple(labels.items()))
            entry = self._known.get(key)
        except TypeError:  # an unhashable label value: spell it out every time
            key, entry = None, None
        if entry is None:
            entry = encode_entry(metric, labels)
            if key is not None:
                if len(self._known) >= self.KEPT:
                    self._known.clear()
                self._known[key] = entry
        return entry


def encode_entry(metric: str, labels: dict) -> bytes:
    """One series' entry of an encoded SeriesTable (labels as strings, sorted)."""
    desc = collector_pb2.SeriesDesc(metric=str(metric))
    desc.labels.update({str(k): str(v) for k, v in sorted(labels.items())})
    return collector_pb2.SeriesTable(series=[desc]).SerializeToString(deterministic=True)


def append_point(batch: collector_pb2.Batch, metric: str, labels: dict | None = None, ts: float = 0.0,
                 count: int = 1, sum: float = 0.0, min: float = 0.0, max: float = 0.0,
                 last: float = 0.0) -> None:
    """Add one point to a Batch directly (tests, tools; the agent uses `Columns`)."""
    batch.series_table += encode_entry(metric, labels or {})
    for name, value in zip(FIELDS, (ts, count, sum, min, max, last)):
        getattr(batch, name).append(value)


class Columns:
    """One batch's points as they are added; `write_to` puts them into the Batch."""

    __slots__ = ("entries",) + FIELDS

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.ts, self.count, self.sum, self.min, self.max, self.last = [], [], [], [], [], []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: bytes, ts: float, count: int, sum_: float, min_: float, max_: float,
            last: float) -> bool:
        """Adds one point; False (and nothing added) when a value is NaN or infinite: the
        collector refuses a batch holding one, so the caller leaves it out and counts it."""
        if not math.isfinite(ts + sum_ + min_ + max_ + last):
            if not all(map(math.isfinite, (ts, sum_, min_, max_, last))):
                return False
        self.entries.append(entry)
        self.ts.append(ts)
        self.count.append(count)
        self.sum.append(sum_)
        self.min.append(min_)
        self.max.append(max_)
        self.last.append(last)
        return True

    def write_to(self, batch: collector_pb2.Batch) -> None:
        batch.series_table = b"".join(self.entries)
        for name in FIELDS:
            getattr(batch, name).extend(getattr(self, name))


# --- reading -----------------------------------------------------------------------------

class Layout(NamedTuple):
    """A parsed series table: point i measures metrics[i] with labels[i] (treat as read-only)."""
    metrics: tuple[str, ...]
    labels: tuple[dict[str, str], ...]


class Row(NamedTuple):
    """One point with what it measures."""
    metric: str
    labels: dict[str, str]
    ts: float
    count: int
    sum: float
    min: float
    max: float
    last: float


class Points(NamedTuple):
    """A batch's points as read: the layout and the six columns (lists; treat as
    read-only: the collector's accumulators and subscribers share them)."""
    layout: Layout
    ts: list[float]
    count: list[int]
    sum: list[float]
    min: list[float]
    max: list[float]
    last: list[float]

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self) -> Iterator[tuple]:
        """(metric, labels, ts, count, sum, min, max, last) per point, as plain tuples."""
        return zip(self.layout.metrics, self.layout.labels, self.ts, self.count,
                   self.sum, self.min, self.max, self.last)

    def row(self, i: int) -> Row:
        return Row(self.layout.metrics[i], self.layout.labels[i], self.ts[i], self.count[i],
                   self.sum[i], self.min[i], self.max[i], self.last[i])


_EMPTY = Layout((), ())
_LAYOUTS_KEPT = 4096  # about four per agent of a 1,000-host fleet
_layouts: collections.OrderedDict[bytes, Layout] = collections.OrderedDict()
_layouts_lock = threading.Lock()  # the collector reads on its event loop and its committer


def layout(table: bytes) -> Layout:
    """The parsed series table for these bytes (cached); ValueError when they are not one."""
    if not table:
        return _EMPTY
    with _layouts_lock:
        found = _layouts.get(table)
        if found is not None:
            _layouts.move_to_end(table)
            return found
    try:
        parsed = collector_pb2.SeriesTable.FromString(table)
    except Exception as e:  # protobuf's DecodeError, whatever its module
        raise ValueError(f"series_table does not parse as a SeriesTable ({e})") from None
    metrics = tuple(d.metric for d in parsed.series)
    labels = tuple(dict(d.labels) for d in parsed.series)
    _check_layout(metrics, labels)
    found = Layout(metrics, labels)
    with _layouts_lock:
        _layouts[table] = found
        if len(_layouts) > _LAYOUTS_KEPT:
            _layouts.popitem(last=False)
    return found


# What one series of a table may be (ValueError past it): a metric name of 1..200
# characters and at most 64 labels, keys 1..128 and values up to 1,024 characters.
METRIC_MAX, LABELS_MAX, LABEL_KEY_MAX, LABEL_VALUE_MAX = 200, 64, 128, 1024


def _check_layout(metrics: tuple[str, ...], labels: tuple[dict, ...]) -> None:
    for i, (metric, pairs) in enumerate(zip(metrics, labels)):
        if not 0 < len(metric) <= METRIC_MAX:
            raise ValueError(f"series_table entry {i} has no metric name" if not metric else
                             f"series_table entry {i}: metric name over {METRIC_MAX} characters")
        if len(pairs) > LABELS_MAX or any(not 0 < len(k) <= LABEL_KEY_MAX or len(v) > LABEL_VALUE_MAX
                                          for k, v in pairs.items()):
            raise ValueError(f"series_table entry {i} ({metric}): at most {LABELS_MAX} labels, keys "
                             f"1..{LABEL_KEY_MAX} and values up to {LABEL_VALUE_MAX} characters")


def read(batch: collector_pb2.Batch) -> Points:
    """The batch's points, checked: ValueError naming what is wrong (a table that does not
    parse, columns of different lengths, a NaN or infinite value)."""
    shape = layout(batch.series_table)
    # A slice copies a repeated field into a list in C: 3 us for 100 values, against 12 us
    # for array("d", field), which iterates it from Python.
    cols = [getattr(batch, name)[:] for name in FIELDS]
    n = len(shape.metrics)
    for name, col in zip(FIELDS, cols):
        if len(col) != n:
            raise ValueError(f"column {name} has {len(col)} values, series_table has {n} entries")
    # One check for the whole batch: a NaN or an infinity anywhere makes the sum non-finite.
    # (Finite values may overflow the sum too; the slow path then looks at each value.)
    if not math.isfinite(sum(cols[0]) + sum(cols[2]) + sum(cols[3]) + sum(cols[4]) + sum(cols[5])):
        for name, col in zip(FIELDS, cols):
            for i, v in enumerate(col):
                if not math.isfinite(v):
                    raise ValueError(f"point {i} ({shape.metrics[i]}) has a non-finite {name}")
    return Points(shape, *cols)


def to_point(row: tuple, out: collector_pb2.Point) -> collector_pb2.Point:
    """Fill a Point message from a `Row` or one of `Points.rows()`."""
    metric, labels, out.ts, count, out.sum, out.min, out.max, out.last = row
    out.metric, out.count = metric, int(count)
    out.labels.update(labels)
    return out


def points_of(batch: collector_pb2.Batch) -> list[collector_pb2.Point]:
    """A batch's points as Point messages (tests, tools)."""
    return [to_point(row, collector_pb2.Point()) for row in read(batch).rows()]
