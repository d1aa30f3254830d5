"""The SQLite store's 10 s and 1 min rollups: the open accumulators points are folded into as
they are stored, the flushes that write the buckets once closed, and the recovery that
rebuilds the accumulators a crash lost.

A rollup row holds one host's series for one bucket: `r10_<day>` and `r60_<week>` rows are
(host, bucket ts, flush, layout, data), where `layout` names the tuple of series ids (table
`layouts`) and `data` packs count, sum, min, max, last and last_ts column after column as
doubles. Why not a row per (series, bucket): a fleet of 1,000 hosts has ~100k series, so
every flush would touch ~100k b-tree pages scattered over a table that grows all day
(measured: 2.8 us an upsert into an empty table, 35 us after 25 minutes, then disk reads
once past the page cache). A row per host and bucket is written once, touching ~1,000 index
entries a flush; a query for a host reads only that host's rows.

Buckets are written when they close: every `flush_interval` the 10 s buckets that ended more
than GRACE seconds ago are frozen, merged into their minutes, and the minutes that closed
likewise; the rows go out over the next write transactions, `chunk_rows` at a time (packing
them all in one would stall the acks waiting on that commit). A point arriving for a bucket
already written (a replay, a skewed clock) goes into a new accumulator and a later flush
writes another row for that bucket: queries merge rows of the same (host, ts) (counts and
sums add, min, max, the last by last_ts).

Crash safety rests on `Marks` (in `meta`, updated in the transaction that completes a
flush): after flush (A, c10, c60), what is written is exactly the contributions of the
batches with arrival <= A to the 10 s buckets before c10 and to the minutes before c60 (both
cut-offs only grow), and `held` is the first arrival still in an open accumulator. On start
the stored batches from `held` on are folded again, leaving out what the marks say is
written. A flush cut short by a crash is redone from the same batches (its arrival bound is
in `meta` too) before the later ones are folded, and (host, ts, flush, layout) is unique, so
a row written before the crash is not written twice.
"""
from __future__ import annotations

import heapq
import sqlite3
import time
from array import array
from dataclasses import dataclass
from operator import add as _add

from agent.collector.store.schema import R10, R60, Partitions, decode_raw, labels_text
from agent.wire import columns
from agent.wire.columns import Points

GRACE = 5.0  # seconds after its end before a bucket is written (points still arriving for it)


@dataclass(frozen=True)
class Marks:
    """What the completed rollup flushes have written."""
    arrival: int = 0  # the last flush covered the batches up to this arrival number...
    cut10: int = 0    # ...and their 10 s buckets before this...
    cut60: int = 0    # ...and their minutes before this
    held: int = 1     # the first arrival still in an open accumulator then

    def covers(self, arrival: int, bucket: int, width: int) -> bool:
        return arrival <= self.arrival and bucket < (self.cut10 if width == 10 else self.cut60)

    @classmethod
    def load(cls, db: sqlite3.Connection) -> "Marks":
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return cls(meta.get("rolled_arrival", 0), meta.get("rolled_cut10", 0), meta.get("rolled_cut60", 0),
                   meta.get("held_from", 1))


@dataclass
class Flush:
    """A rollup flush under way: its bounds, the 10 s accumulators it closed (key, columns,
    first arrival), its progress."""
    arrival: int
    cut10: int
    cut60: int
    closed10: list
    done10: int = 0
    closed60: list | None = None
    done60: int = 0

    @property
    def finished(self) -> bool:
        return self.closed60 is not None and self.done60 == len(self.closed60)


class Rollups:
    """A store's rollups, written through its connection inside its write transactions: the
    store folds each batch in (`fold`), lets a flush advance before each commit (`step`), and
    says how the transaction ended (`committed`, `rolled_back`). Opening it rebuilds what a
    crash lost (`recovered`: the batches folded again)."""

    def __init__(self, db: sqlite3.Connection, partitions: Partitions, flush_interval: float,
                 chunk_rows: int, clock):
        self.db, self.partitions = db, partitions
        self.flush_interval, self.chunk_rows = flush_interval, chunk_rows
        self.clock = clock  # closes buckets (tests move it)
        self._series: dict[tuple[str, str, str], int] = {
            (h, m, l): i for i, h, m, l in db.execute("SELECT id, host, metric, labels FROM series")}
        self._max_series = self._max_series_committed = max(self._series.values(), default=0)
        # Open accumulators, each [count, sum, min, max, last, last_ts] columns for one (host,
        # series ids of a batch layout, bucket), with the arrival number of the first batch
        # folded into it.
        self._groups: dict[tuple[str, tuple[int, ...], int], list[list]] = {}  # 10 s buckets
        self._minutes: dict[tuple[str, tuple[int, ...], int], list[list]] = {}  # minutes, from closed 10 s ones
        self._first: dict[tuple, int] = {}  # (10 or 60, key) -> first arrival
        self._layout_ids: dict[tuple[int, ...], int] = {
            tuple(array("q", blob)): i for i, blob in db.execute("SELECT id, sids FROM layouts")}
        self._max_layout = self._max_layout_committed = max(self._layout_ids.values(), default=0)
        self._layouts: dict[str, tuple] = {}  # host -> (its last batch's Layout, that layout's series ids)
        self.flushing: Flush | None = None  # a flush being written over several commits
        self._finished: Marks | None = None  # a flush completed in the open transaction
        self.marks = Marks.load(db)
        self._last_flush = time.monotonic()
        self.recovered = self._recover()

    # --- folding ---------------------------------------------------------------------------

    def fold(self, host: str, points: Points, arrival: int, written: Marks | None = None) -> tuple[int, ...]:
        """Add a batch's points to the open 10 s accumulators; returns their series ids.

        The hot path (100k points/s at the benchmark's target). An agent sends the same
        series in the same order every second, all in one 10 s bucket, so a batch is folded
        column by column into the host's group for that bucket with C-level `map`s, and its
        series ids come from the host's previous batch when the layout (the series table)
        is the same. A batch that spans buckets is split by bucket first, each part folded
        as a group of its own. `written` (recovery only): the marks of the last flush; what
        of this batch they say is written already is left out.
        """
        if not len(points):
            return ()
        known = self._layouts.get(host)
        if known is not None and known[0] is points.layout:
            sids = known[1]
        else:
            sids = self._series_ids(host, points.layout)
            self._layouts[host] = (points.layout, sids)
        tss = points.ts
        cols = [points.count, points.sum, points.min, points.max, points.last, tss]
        bucket = int(min(tss) // 10) * 10
        if int(max(tss) // 10) * 10 == bucket:
            parts = {bucket: None}  # the usual case: the whole batch, one group
        else:
            parts = {}
            for i, t in enumerate(tss):
                parts.setdefault(int(t // 10) * 10, []).append(i)
        for b, where in parts.items():
            key_sids, part = (sids, cols) if where is None else (tuple(sids[i] for i in where),
                                                                 [[c[i] for i in where] for c in cols])
            if written is None or not written.covers(arrival, b, 10):
                self._add(self._groups, 10, (host, key_sids, b), part, arrival)
            elif not written.covers(arrival, b // 60 * 60, 60):
                # Its 10 s row is written, its minute is not: straight into the minute, under
                # the key the 10 s group would have merged into it with.
                self._add(self._minutes, 60, (host, key_sids, b // 60 * 60), part, arrival)
        return sids

    def _add(self, accumulators: dict, width: int, key: tuple, cols: list[list], first: int) -> None:
        old = accumulators.get(key)
        if old is None:
            # The batch's own lists: accumulated columns are replaced by `_merged`, never
            # changed in place.
            accumulators[key] = cols
            self._first[(width, key)] = first
        else:
            accumulators[key] = _merged(old, cols)
            # A minute may take a 10 s group older than the ones it holds (a bucket that
            # closed later); `held` must still see the oldest arrival in it.
            if first < self._first[(width, key)]:
                self._first[(width, key)] = first

    def _series_ids(self, host: str, layout: columns.Layout) -> tuple[int, ...]:
        return tuple(self._series_id(host, metric, labels_text(labels))
                     for metric, labels in zip(layout.metrics, layout.labels))

    def _series_id(self, host: str, metric: str, labels: str) -> int:
        key = (host, metric, labels)
        sid = self._series.get(key)
        if sid is None:
            sid = self.db.execute("INSERT INTO series(host, metric, labels) VALUES (?,?,?)", key).lastrowid
            self._series[key] = sid
            self._max_series = max(self._max_series, sid)
        return sid

    def _layout_id(self, sids: tuple[int, ...]) -> int:
        lid = self._layout_ids.get(sids)
        if lid is None:
            lid = self.db.execute("INSERT INTO layouts(sids) VALUES (?)", (array("q", sids).tobytes(),)).lastrowid
            self._layout_ids[sids] = lid
            self._max_layout = max(self._max_layout, lid)
        return lid

    # --- the store's transaction -----------------------------------------------------------

    def step(self, arrival: int) -> None:
        """Inside a write transaction that stored the batches up to `arrival`: the next chunk
        of a flush under way, or start one."""
        if self.flushing is None:
            if time.monotonic() - self._last_flush >= self.flush_interval and (self._groups or self._minutes):
                self._freeze(arrival, self.clock())
                self._last_flush = time.monotonic()
            return
        self._insert(self._flush_rows(self.chunk_rows), self.flushing.arrival)
        if self.flushing.finished:
            self._finished = self._complete(self.flushing)

    def committed(self) -> None:
        if self._finished is not None:
            self.marks, self.flushing, self._finished = self._finished, None, None
        self._max_series_committed = self._max_series
        self._max_layout_committed = self._max_layout

    def rolled_back(self) -> None:
        # The rolled-back transaction took its new series and layouts, its points and its
        # flush step with it; the accumulators cannot be un-added, so they are rebuilt from
        # what is committed, exactly as after a crash.
        self.partitions.reload()
        self._series = {k: v for k, v in self._series.items() if v <= self._max_series_committed}
        self._layout_ids = {k: v for k, v in self._layout_ids.items() if v <= self._max_layout_committed}
        self._layouts.clear()
        self._max_series = self._max_series_committed
        self._max_layout = self._max_layout_committed
        self._groups, self._minutes, self._first = {}, {}, {}
        self.flushing, self._finished = None, None
        self.marks = Marks.load(self.db)
        self._recover()

    # --- flushing --------------------------------------------------------------------------

    def _insert(self, rows: list[tuple[str, tuple]], flush: int) -> None:
        grouped: dict[str, list[tuple]] = {}
        for kind, (host, sids, ts), cols in rows:
            data = array("d")
            for c in cols:
                data.fromlist(c if type(c) is list else list(c))
            table = self.partitions.table(kind, ts)
            grouped.setdefault(table, []).append((host, ts, flush, self._layout_id(sids), data.tobytes()))
        for table, group in grouped.items():
            # OR IGNORE: a row rewritten after a crash mid-flush is already there.
            self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?,?,?,?,?)", group)

    def _freeze(self, arrival: int, now: float | None) -> None:
        """Start a flush of what has closed by `now` (None: of everything) and of the
        batches up to `arrival`."""
        last = self.marks
        if now is None:
            cut10 = cut60 = 1 << 62
        else:  # never below the last cut-offs (a wall clock stepped back)
            cut10 = max(last.cut10, int((now - GRACE) // 10) * 10)
            cut60 = max(last.cut60, int((now - GRACE) // 60) * 60)
        self.flushing = Flush(arrival, cut10, cut60, self._close(cut10))
        self._set_meta(flush_arrival=arrival, flush_cut10=cut10, flush_cut60=cut60)

    def _close(self, cut10: int) -> list[tuple]:
        """Take the 10 s accumulators of buckets before `cut10` out, with their first
        arrivals (a point arriving meanwhile for one of those buckets starts a new one)."""
        closed = [(k, v, self._first.pop((10, k))) for k, v in self._groups.items() if k[2] < cut10]
        for k, _, _ in closed:
            del self._groups[k]
        return closed

    def _flush_rows(self, count: int) -> list:
        """The next `count` rows of the flush under way: 10 s rows (each merged into its
        minute as it goes), then, once they are all out, the minutes that closed."""
        f = self.flushing
        rows = []
        while len(rows) < count and f.done10 < len(f.closed10):
            (host, sids, bucket), cols, first = f.closed10[f.done10]
            f.done10 += 1
            rows.append((R10, (host, sids, bucket), cols))
            self._add(self._minutes, 60, (host, sids, bucket // 60 * 60), cols, first)
        if f.done10 == len(f.closed10):
            if f.closed60 is None:
                f.closed60 = [(k, v) for k, v in self._minutes.items() if k[2] < f.cut60]
                for k, _ in f.closed60:
                    del self._minutes[k]
                    self._first.pop((60, k))
            while len(rows) < count and f.done60 < len(f.closed60):
                key, cols = f.closed60[f.done60]
                f.done60 += 1
                rows.append((R60, key, cols))
        return rows

    def _complete(self, f: Flush) -> Marks:
        """The marks once `f` is written (set in the transaction that writes its last rows)."""
        held = min(self._first.values(), default=f.arrival + 1)
        marks = Marks(f.arrival, f.cut10 if f.cut10 < 1 << 62 else 0, f.cut60 if f.cut60 < 1 << 62 else 0,
                      min(held, f.arrival + 1))
        self._set_meta(rolled_arrival=marks.arrival, rolled_cut10=marks.cut10, rolled_cut60=marks.cut60,
                       held_from=marks.held, flush_arrival=0)
        return marks

    def _write_flush(self) -> int:
        """All the remaining rows of the flush under way, in the open transaction."""
        f = self.flushing
        rows = self._flush_rows(1 << 62)
        self._insert(rows, f.arrival)
        self.marks, self.flushing = self._complete(f), None
        return len(rows)

    def flush(self, arrival: int) -> int:
        """Write every rollup of the batches up to `arrival` now, open buckets included, in
        one transaction (tests, shutdown)."""
        db = self.db
        db.execute("BEGIN")
        try:
            written = self._write_flush() if self.flushing is not None else 0
            self._freeze(arrival, None)
            written += self._write_flush()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.rolled_back()
            raise
        self._last_flush = time.monotonic()
        return written

    def _set_meta(self, **values: int) -> None:
        self.db.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                            list(values.items()))

    # --- recovery --------------------------------------------------------------------------

    def _fold_stored(self, first: int, upto: int | None, written: Marks | None) -> int:
        """Fold the stored batches with arrival in [first, upto], in arrival order."""
        def rows(table):
            sql, args = f"SELECT arrival, host, points FROM {table} WHERE arrival >= ?", [first]
            if upto is not None:
                sql, args = sql + " AND arrival <= ?", args + [upto]
            yield from self.db.execute(sql + " ORDER BY arrival", args).fetchall()
        folded = 0
        for arrival, host, blob in heapq.merge(*(rows(t) for t in self.partitions.raw())):
            self.fold(host, decode_raw(blob), arrival, written if written and arrival <= written.arrival else None)
            folded += 1
        return folded

    def _recover(self) -> int:
        """Rebuild the open accumulators a crash lost, and finish a flush it cut short."""
        marks = self.marks
        pending = dict(self.db.execute("SELECT key, value FROM meta WHERE key GLOB 'flush_*'"))
        self.db.execute("BEGIN")
        folded = 0
        if pending.get("flush_arrival"):
            upto = pending["flush_arrival"]
            folded += self._fold_stored(marks.held, upto, marks)
            # Redo it whole with its own bounds: what it had written is ignored, the rest written.
            self.flushing = Flush(upto, pending["flush_cut10"], pending["flush_cut60"], self._close(pending["flush_cut10"]))
            self._write_flush()
            folded += self._fold_stored(upto + 1, None, None)
        else:
            folded += self._fold_stored(marks.held, None, marks)
        self.db.execute("COMMIT")  # also keeps the series and layouts created while folding
        self._max_series_committed = self._max_series
        self._max_layout_committed = self._max_layout
        return folded


def _merged(old: list, new: list) -> list:
    """Two accumulations of the same series (count, sum, min, max, last, last_ts columns) as one."""
    o_count, o_sum, o_min, o_max, o_last, o_ts = old
    n_count, n_sum, n_min, n_max, n_last, n_ts = new
    out = [list(map(_add, o_count, n_count)), list(map(_add, o_sum, n_sum)),
           # Comprehensions, not map(min, ...): the builtin costs 3x as much per call.
           [v if v < o else o for o, v in zip(o_min, n_min)],
           [v if v > o else o for o, v in zip(o_max, n_max)]]
    if min(n_ts) >= max(o_ts):  # the usual case: the new points are the newer ones
        return out + [n_last, n_ts]
    newer = [t >= ot for t, ot in zip(n_ts, o_ts)]
    return out + [[v if k else ov for k, v, ov in zip(newer, n_last, o_last)],
                  [t if k else ot for k, t, ot in zip(newer, n_ts, o_ts)]]
