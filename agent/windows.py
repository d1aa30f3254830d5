"""Windowed statistics: 1-second buckets folded into 10 s / 1 m / 5 m / 15 m figures.

Every (metric, label set) the sources produce is a *series*. A series keeps one bucket per
wall-clock second (count, sum, min, max, last) in fixed-size ring arrays as long as the
longest configured window (40 bytes a second, see `_Series`), so memory is bounded by
series × longest window and does not grow with the sampling rate: a 1 kHz GPU field and a
1 Hz host figure both cost one bucket a second.

What a window means (the one definition everything else relies on): with `now` from the
injected clock, the window of W seconds holds the buckets of the seconds
`floor(now) - W + 1 ... floor(now)`, i.e. the last W whole seconds counting the current one.
`avg` is weighted by sample count (a bucket of 1000 GPU reads weighs 1000), `min`/`max` are
over every sample, `last` is the most recent value, `count` the number of samples. A window
with no samples answers None, never 0.

Buckets of past seconds are *closed*: `close(now)` hands each closed bucket out once (the
daemon passes them to components' `on_buckets`, the outbox ships them). A sample that arrives
for an already-closed second still counts in the windows and is counted as late.
"""
from __future__ import annotations

import math
import threading
import time
from array import array
from typing import Callable, Iterable, NamedTuple

from agent.sources.base import Sample

STATS = ("avg", "min", "max", "last", "count")


def labels_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    # Label keys and values are strings by contract (Sample.labels), so no conversion here:
    # this runs for every sample of every tick.
    return tuple(sorted(labels.items()))


class Bucket(NamedTuple):
    """One closed second of one series: the unit `on_buckets` receives.

    A NamedTuple rather than a frozen dataclass: about a hundred are made every second and a
    frozen dataclass costs several times more to construct. `labels` is shared with the
    series: read it, do not change it.
    """

    metric: str
    labels: dict[str, str]
    ts: int  # the second's start, unix seconds
    count: int
    sum: float
    min: float
    max: float
    last: float

    @property
    def avg(self) -> float:
        return self.sum / self.count

    def to_dict(self) -> dict:
        return {"metric": self.metric, "labels": dict(self.labels), "ts": self.ts, "count": self.count,
                "sum": self.sum, "min": self.min, "max": self.max, "last": self.last}


# A slot's second is stored as a 32-bit offset from its series' base second, its count as a
# 32-bit count: 40 bytes a slot (two 4-byte, four 8-byte columns) instead of 48, and 16 while
# every slot of the series holds one reading (its sum, min, max and last are one column).
if array("I").itemsize != 4:  # 4 on Linux x86-64 and aarch64, where the daemon runs
    raise ImportError(f"array('I') is {array('I').itemsize} bytes here; agent.windows needs 4")
_U32_MAX = 2**32 - 1
_EMPTY = 0  # offset of a slot that holds no second (offsets of real seconds are >= 1)


class _Series:
    """Ring of `size` one-second slots in parallel arrays (columns): slot i holds the second
    `base + stamp[i]` (or nothing when stamp[i] is 0), and only ever a second congruent to i
    modulo `size`, the newest one written.

    The windows were the daemon's largest single Python allocation (7.6 MiB of a 55 MiB
    daemon with 8 GPUs), so a slot is kept small: the stamp is an unsigned 32-bit offset
    from `base` rather than 64-bit unix seconds (no 2038 limit: `base` is a Python int, only
    the distance to it is 32 bits), and the count is unsigned 32-bit, saturating at 2**32 - 1
    (more than 4 billion readings in one second of one series is beyond any real source, but
    a bad Sample must not make the main loop raise). Sum, min, max and last stay float64:
    energy and byte counters need all 53 bits.

    Most series get one reading a second (host figures, the slow tier's GPU fields, health
    gauges: 144 of the 184 series of an 8-GPU daemon): each of their slots has count 1 and
    sum = min = max = last. Such a series is *single*: `sum`, `min`, `max` and `last` are one
    and the same array (16 bytes a slot), so every reader works unchanged. The first write
    that would make them differ (a second reading in a second, an aggregate of several)
    widens it into four arrays for good (`_widen`).

    `base` is put 2**31 s (68 years) before the first second, so every second within 68
    years either side of it fits, late samples and clock steps included: the ring keeps
    exactly what 64-bit unix-second stamps kept (whose empty mark, -1, was also the second
    before 1970: a clock read before 1970 saw empty slots as data and divided by zero). A sample for a second at or below `base` is
    older than anything the ring keeps and is ignored, like a sample older than its slot's
    second; one more than 2**32 - 1 s past `base` (a clock that jumped over 68 years ahead)
    moves `base` to it (`_rebase`), dropping the slots that no longer fit, which are then
    68 years outside every window.
    """

    __slots__ = ("metric", "labels", "size", "base", "single", "stamp", "count", "sum", "min", "max", "last",
                 "last_value", "last_ts", "closed_through")

    def __init__(self, metric: str, labels: dict[str, str], size: int, first_sec: int):
        self.metric, self.labels = metric, dict(labels)
        self.base = first_sec - 2**31
        self.single = True
        self._alloc(size)
        self.last_value: float | None = None
        self.last_ts = -math.inf
        self.closed_through = -1  # seconds <= this were handed out by close()

    def resize(self, size: int) -> None:
        old = [(self.stamp[i], self.count[i], self.sum[i], self.min[i], self.max[i], self.last[i])
               for i in range(self.size) if self.stamp[i] != _EMPTY]
        self._alloc(size)
        base = self.base
        for off, c, s, lo, hi, la in old:
            i = (base + off) % size
            if self.stamp[i] < off:
                self.stamp[i], self.count[i], self.sum[i], self.min[i], self.max[i], self.last[i] = off, c, s, lo, hi, la

    def _alloc(self, size: int) -> None:
        self.size = size
        self.stamp = array("I", [_EMPTY]) * size
        self.count = array("I", [0]) * size
        if self.single:
            self.sum = self.min = self.max = self.last = array("d", [0.0]) * size
        else:
            self.sum = array("d", [0.0]) * size
            self.min = array("d", [0.0]) * size
            self.max = array("d", [0.0]) * size
            self.last = array("d", [0.0]) * size

    def _widen(self) -> None:
        """From one shared value column to four (see the class docstring); for good."""
        values = self.sum
        self.sum, self.min, self.max, self.last = values, array("d", values), array("d", values), array("d", values)
        self.single = False

    def _rebase(self, sec: int) -> None:
        """Centre `base` on `sec`; a slot whose second no longer fits is emptied."""
        base = sec - 2**31
        shift = self.base - base
        self.base = base
        stamp = self.stamp
        for i, off in enumerate(stamp):
            if off != _EMPTY:
                off += shift
                stamp[i] = off if 0 < off <= _U32_MAX else _EMPTY

    def add(self, sec: int, s: Sample) -> None:
        off = sec - self.base
        if off > _U32_MAX:
            self._rebase(sec)
            off = sec - self.base
        elif off <= 0:
            return  # older than anything the ring keeps
        i = sec % self.size
        if self.single and (self.stamp[i] == off or s.count != 1 or not s.sum == s.min == s.max == s.last):
            self._widen()  # a second reading for this second, or one that is not a single value
        if self.stamp[i] != off:
            if self.stamp[i] > off:
                return  # older than anything the ring keeps
            count = s.count
            self.stamp[i], self.count[i], self.sum[i] = off, count if count <= _U32_MAX else _U32_MAX, s.sum
            self.min[i], self.max[i], self.last[i] = s.min, s.max, s.last
        else:
            count = self.count[i] + s.count
            self.count[i] = count if count <= _U32_MAX else _U32_MAX
            self.sum[i] += s.sum
            if s.min < self.min[i]:
                self.min[i] = s.min
            if s.max > self.max[i]:
                self.max[i] = s.max
            self.last[i] = s.last
        if s.ts >= self.last_ts:
            self.last_ts, self.last_value = s.ts, s.last

    def slots(self, first: int, last: int) -> Iterable[tuple[int, int]]:
        """(second, slot index) of the slots holding seconds first..last, oldest first."""
        if last - first + 1 >= self.size:
            first = last - self.size + 1
        base, stamp = self.base, self.stamp
        for sec in range(max(first, base + 1), last + 1):
            i = sec % self.size
            if stamp[i] == sec - base:
                yield sec, i


def _segments(size: int, first: int, last: int) -> list[tuple[int, int]]:
    """The ring slots of seconds first..last as at most two [a, b) index ranges."""
    n = min(last - first + 1, size)
    if n <= 0:
        return []
    a = (last - n + 1) % size
    if a + n <= size:
        return [(a, a + n)]
    return [(a, size), (0, a + n - size)]


class Windows:
    """`Windows(sizes_seconds, clock)`; thread-safe (the API reads while the main loop adds)."""

    def __init__(self, sizes_seconds: Iterable[float], clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._series: dict[tuple[str, tuple], _Series] = {}
        self._by_metric: dict[str, list[_Series]] = {}
        self.late_samples = 0
        self.bad_times = 0  # samples whose time was not a finite number (left out)
        self.expired = 0  # series dropped by expire()
        self.set_sizes(sizes_seconds)

    # --- configuration --------------------------------------------------------------------
    def set_sizes(self, sizes_seconds: Iterable[float]) -> None:
        sizes = sorted({int(math.ceil(s)) for s in sizes_seconds})
        if not sizes or sizes[0] < 1:
            raise ValueError(f"window sizes must be >= 1 s, got {sizes}")
        with self._lock:
            self.sizes = tuple(sizes)
            # One extra slot so the bucket just closed is still present when the current
            # second's bucket is being written.
            self.retention = sizes[-1] + 1
            for series in self._series.values():
                if series.size != self.retention:
                    series.resize(self.retention)

    # --- writing --------------------------------------------------------------------------
    def add(self, sample: Sample) -> None:
        self.add_all((sample,))

    def add_all(self, samples: Iterable[Sample]) -> None:
        """Fold samples into their seconds' buckets (one lock hold for the whole batch)."""
        # A source hands the same label dict to all its metrics of one device: its sorted key
        # is made once per batch (the entry keeps the dict alive, so its id is not reused).
        keys: dict[int, tuple[dict, tuple]] = {}
        with self._lock:
            for sample in samples:
                if sample.count <= 0 or sample.sum != sample.sum:  # no samples, or NaN: no data
                    continue
                try:
                    sec = int(math.floor(sample.ts))
                except (ValueError, OverflowError, TypeError):  # NaN, infinite, not a number
                    self.bad_times += 1  # no second to put it in; the rest of the batch goes on
                    continue
                labels = sample.labels
                known = keys.get(id(labels))
                if known is None or known[0] is not labels:
                    known = keys[id(labels)] = (labels, labels_key(labels))
                key = (sample.metric, known[1])
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = _Series(sample.metric, sample.labels, self.retention, sec)
                    series.closed_through = sec - 1  # nothing before its first second to hand out
                    self._by_metric.setdefault(sample.metric, []).append(series)
                if sec <= series.closed_through:
                    self.late_samples += 1
                series.add(sec, sample)

    def close(self, now: float | None = None, hand_out: bool = True) -> list[Bucket]:
        """Every bucket of a second before floor(now) not handed out yet, oldest first.

        `hand_out=False` closes the same seconds (a sample for them counts as late from then
        on) without making the buckets, for when no component takes them."""
        now = self.clock() if now is None else now
        through = int(math.floor(now)) - 1
        out: list[Bucket] = []
        with self._lock:
            for series in self._series.values():
                if series.closed_through >= through:
                    continue
                if not hand_out:
                    series.closed_through = through
                    continue
                first = max(series.closed_through + 1, through - series.size + 1)
                if first == through:  # the usual case, one second since the last tick
                    i, off = through % series.size, through - series.base
                    if off > 0 and series.stamp[i] == off:  # off <= 0 would match an empty slot
                        out.append(Bucket(series.metric, series.labels, through, series.count[i],
                                          series.sum[i], series.min[i], series.max[i], series.last[i]))
                    series.closed_through = through
                    continue
                for sec, i in series.slots(first, through):
                    out.append(Bucket(series.metric, series.labels, sec, series.count[i],
                                      series.sum[i], series.min[i], series.max[i], series.last[i]))
                series.closed_through = through
        out.sort(key=lambda b: b.ts)
        return out

    # --- reading --------------------------------------------------------------------------
    def metrics(self) -> list[str]:
        with self._lock:
            return sorted(self._by_metric)

    def label_sets(self, metric: str) -> list[dict[str, str]]:
        with self._lock:
            return [dict(s.labels) for s in self._by_metric.get(metric, ())]

    def latest(self, metric: str, labels: dict[str, str]) -> float | None:
        """The most recent value of the series, however old (None if never seen)."""
        with self._lock:
            series = self._series.get((metric, labels_key(labels)))
            return None if series is None else series.last_value

    def latest_all(self) -> list[tuple[str, dict[str, str], float, float]]:
        """(metric, labels, value, ts) of every series' most recent value."""
        with self._lock:
            return [(s.metric, dict(s.labels), s.last_value, s.last_ts)
                    for s in self._series.values() if s.last_value is not None]

    def stat(self, metric: str, labels: dict[str, str], window_s: float, stat: str,
             now: float | None = None) -> float | None:
        first, current = self._window(window_s, stat, now)
        with self._lock:
            series = self._series.get((metric, labels_key(labels)))
            if series is None:
                return None
            return self._fold(series, first, current, stat)

    def stat_all(self, metric: str, window_s: float, stat: str,
                 now: float | None = None) -> list[tuple[dict[str, str], float | None]]:
        """`stat` of every series of `metric`, with its labels (the series' own dict: read it,
        do not change it), under one hold of the lock: what an alarm rule over all GPUs asks
        each evaluation, without a label-set copy, a sort and a lookup per series."""
        first, current = self._window(window_s, stat, now)
        with self._lock:
            return [(s.labels, self._fold(s, first, current, stat)) for s in self._by_metric.get(metric, ())]

    def _window(self, window_s: float, stat: str, now: float | None) -> tuple[int, int]:
        """The first and last second of a window of `window_s` ending at `now`; ValueError
        for a statistic not in STATS or a window the series do not keep."""
        if stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r} (known: {', '.join(STATS)})")
        window = int(math.ceil(window_s))
        if window < 1 or window > self.retention - 1:
            raise ValueError(f"window {window_s} s outside 1..{self.retention - 1} s kept")
        current = int(math.floor(self.clock() if now is None else now))
        return current - window + 1, current

    @staticmethod
    def _fold(series: _Series, first: int, last: int, stat: str) -> float | None:
        """Fold the buckets of seconds first..last with one comprehension per array.

        Slot i only ever holds seconds congruent to i modulo the ring size, so within the
        slots of the window's seconds a bucket belongs to the window exactly when its second
        lies in [first, last], i.e. its stamp (offset from `base`) in [lo, hi]: no per-second
        index arithmetic is needed, and the loops run as comprehensions over array slices
        (this is the alarm engine's hot path: a 5-minute average is 300 buckets).
        """
        segments = _segments(series.size, first, last)
        stamp = series.stamp
        lo, hi = max(first - series.base, 1), last - series.base  # lo >= 1: an empty slot is 0

        def pick(values):
            return [v for a, b in segments for st, v in zip(stamp[a:b], values[a:b]) if lo <= st <= hi]

        if stat == "last":
            newest, value = 0, None
            for a, b in segments:
                for st, v in zip(stamp[a:b], series.last[a:b]):
                    if lo <= st <= hi and st > newest:
                        newest, value = st, v
            return value
        counts = pick(series.count)
        if not counts:
            return None
        if stat == "count":
            return float(sum(counts))
        if stat == "avg":
            return math.fsum(pick(series.sum)) / sum(counts)
        if stat == "min":
            return min(pick(series.min))
        return max(pick(series.max))

    def history(self, metric: str, labels: dict[str, str], seconds: int,
                now: float | None = None) -> list[float | None]:
        """Per-second averages of the last `seconds` seconds, oldest first (None = no data)."""
        now = self.clock() if now is None else now
        current = int(math.floor(now))
        seconds = max(1, min(int(seconds), self.retention - 1))
        with self._lock:
            series = self._series.get((metric, labels_key(labels)))
            out: list[float | None] = [None] * seconds
            if series is None:
                return out
            first = current - seconds + 1
            for sec, i in series.slots(first, current):
                out[sec - first] = series.sum[i] / series.count[i]
            return out

    def expire(self, now: float) -> int:
        """Drop every series with no sample for longer than the longest window: a NIC or
        container veth that went away, a GPU removed. Without this, label churn grows the
        windows without bound; a series that comes back starts afresh. Returns how many."""
        horizon = now - self.retention
        with self._lock:
            gone = [key for key, series in self._series.items() if series.last_ts < horizon]
            for key in gone:
                series = self._series.pop(key)
                self._by_metric[series.metric].remove(series)
            self.expired += len(gone)
        return len(gone)

    def stats(self) -> dict:
        with self._lock:
            return {"series": len(self._series), "sizes_s": list(self.sizes),
                    "late_samples": self.late_samples, "bad_times": self.bad_times,
                    "expired_series": self.expired}
