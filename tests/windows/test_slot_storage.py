"""How a series stores its seconds: 32-bit offsets from a base second, 32-bit saturating counts.

The windows must answer exactly what 64-bit stamps and counts answered; these are the edges
where 32 bits could show: the ends of the offset range, a clock far ahead, a huge count, and
late samples at the edge of the ring."""
import pytest

from agent.sources.base import Sample
from agent.windows import Windows, labels_key

GPU0 = {"gpu": "0"}
U32_MAX = 2**32 - 1


def reading(value, ts, count=1):
    return Sample("gpu_power_watts", GPU0, count, value * count, value, value, value, ts)


def stat(w, stat_name, now, window=10):
    return w.stat("gpu_power_watts", GPU0, window, stat_name, now=now)


def _bytes_a_slot(series) -> int:
    columns = {id(c): c for c in (series.stamp, series.count, series.sum, series.min, series.max, series.last)}
    assert all(len(c) == series.size for c in columns.values())
    return sum(c.itemsize for c in columns.values())


def test_a_slot_is_16_bytes_while_each_second_holds_one_reading_and_40_after():
    w = Windows([10, 60, 300, 900], clock=lambda: 0.0)
    for sec in range(5):
        w.add(reading(float(sec), 1_780_000_000.5 + sec))
    series = w._series[("gpu_power_watts", labels_key(GPU0))]
    assert series.size == 901 and _bytes_a_slot(series) == 16
    w.add(reading(10.0, 1_780_000_004.7))  # a second reading in the same second: widened
    assert _bytes_a_slot(series) == 40
    now = 1_780_000_004.9
    assert (stat(w, "min", now), stat(w, "max", now), stat(w, "last", now)) == (0.0, 10.0, 10.0)
    assert stat(w, "avg", now) == pytest.approx((0 + 1 + 2 + 3 + 4 + 10) / 6)
    assert [b.max for b in w.close(now)] == [0.0, 1.0, 2.0, 3.0]  # the earlier seconds kept


def test_an_aggregate_of_several_readings_widens_a_single_series():
    w = Windows([10], clock=lambda: 0.0)
    w.add(reading(1.0, 1000.5))
    w.add(Sample("gpu_power_watts", GPU0, 3, 6.0, 1.0, 3.0, 2.0, 1001.5))
    series = w._series[("gpu_power_watts", labels_key(GPU0))]
    assert _bytes_a_slot(series) == 40
    assert [(b.count, b.sum, b.min, b.max, b.last) for b in w.close(1002.5)] == [(1, 1.0, 1.0, 1.0, 1.0),
                                                                                 (3, 6.0, 1.0, 3.0, 2.0)]


def test_single_and_wide_series_answer_the_same(monkeypatch):
    # The same random samples (single readings, aggregates, late ones, a resize) into windows
    # whose series start single and into ones whose series are wide from the start.
    import random

    import agent.windows as windows_mod

    def feed(w, seed):
        # gpu 0: one reading in a second at most, late ones included (stays single); gpu 1: the
        # same until an aggregate at step 250; gpu 2: anything from the start.
        rnd, out, used = random.Random(seed), [], {"0": set(), "1": set()}
        t = 5000.0
        for step in range(400):
            t += rnd.choice((0.3, 0.7, 1.0, 2.5))
            gpu = "1" if step == 250 else str(rnd.randrange(3))
            ts = t - rnd.choice((0, 0, 0, 1.2, 7.5))
            v = rnd.choice((1.0, 2.5, -3.0, 1e15 + 1))
            if gpu == "2" and rnd.random() < 0.2 or gpu == "1" and step == 250:
                n = rnd.randrange(2, 5)
                sample = Sample("m", {"gpu": gpu}, n, 2.0 * n, 1.0, 3.0, 2.5, ts)
            elif gpu in used and int(ts) in used[gpu]:
                continue
            else:
                used.get(gpu, set()).add(int(ts))
                sample = Sample("m", {"gpu": gpu}, 1, v, v, v, v, ts)
            w.add(sample)
            if step == 200:
                w.set_sizes([10, 120])
            if step % 7 == 0:
                out.append([(b.metric, dict(b.labels), b.ts, b.count, b.sum, b.min, b.max, b.last) for b in w.close(t)])
            for gpu in "012":
                for name in ("avg", "min", "max", "last", "count"):
                    out.append(w.stat("m", {"gpu": gpu}, 10, name, now=t))
        out.append([w.history("m", {"gpu": g}, 60, now=t) for g in "012"])
        out.append({labels: series.single for (_, labels), series in w._series.items()})
        return out

    for seed in range(3):  # (each seed: ~1,200 stats, 60 closes and the histories compared)
        single = feed(Windows([10, 60], clock=lambda: 0.0), seed)
        original = windows_mod._Series.__init__

        def wide_init(self, *a, **kw):
            original(self, *a, **kw)
            self._widen()

        monkeypatch.setattr(windows_mod._Series, "__init__", wide_init)
        wide = feed(Windows([10, 60], clock=lambda: 0.0), seed)
        monkeypatch.setattr(windows_mod._Series, "__init__", original)
        assert single[:-1] == wide[:-1]
        assert single[-1] == {(("gpu", "0"),): True, (("gpu", "1"),): False, (("gpu", "2"),): False}


def test_seconds_up_to_68_years_either_side_of_the_first_are_kept_and_beyond_the_past_end_ignored():
    w = Windows([10], clock=lambda: 0.0)
    t0 = 1_780_000_000
    w.add(reading(1.0, t0 + 0.5))  # the first second: the base is 2**31 s before it
    w.add(reading(2.0, t0 - 2**31 + 1.5))  # the oldest second an offset holds
    assert stat(w, "last", t0 - 2**31 + 1.9) == 2.0
    w.add(reading(3.0, t0 - 2**31 + 0.5))  # the base itself: older than anything kept
    assert stat(w, "count", t0 - 2**31 + 0.9) is None
    assert w.late_samples == 2, "both are late; the one not kept still counts as late"
    w.add(reading(4.0, t0 + 2**31 - 1 + 0.5))  # the newest second that fits without a rebase
    assert stat(w, "last", t0 + 2**31 - 0.5) == 4.0
    assert stat(w, "last", t0 + 0.9) == 1.0, "no rebase yet: the first second is still there"
    assert stat(w, "last", t0 - 2**31 + 1.9) == 2.0


def test_a_clock_jump_beyond_the_32_bit_range_rebases_without_raising():
    w = Windows([60], clock=lambda: 0.0)  # 61 slots: the three seconds below use different slots
    t0 = 1000
    w.add(reading(1.0, t0 + 0.5))
    far = t0 + 2**31 - 1  # still fits
    w.add(reading(2.0, far + 0.5))
    jump = t0 + 2**31 + 100  # does not: the base moves to 2**31 s before it
    w.add(reading(3.0, jump + 0.5))
    assert stat(w, "last", jump + 0.7) == 3.0
    assert stat(w, "count", jump + 0.7, window=60) == 1
    assert stat(w, "last", far + 0.7) == 2.0, "a second still within reach of the new base is kept"
    assert stat(w, "count", t0 + 0.7, window=60) is None, "the first second, 68 years back, is dropped"
    w.add(reading(4.0, t0 + 0.5))
    assert stat(w, "count", t0 + 0.7, window=60) is None, "and a sample for it is now older than the ring"
    closed = w.close(jump + 1.0)
    assert [(b.ts, b.last) for b in closed] == [(jump, 3.0)]
    w.add(reading(5.0, jump + 1.5))
    assert stat(w, "avg", jump + 1.7) == 4.0


def test_a_timestamp_in_nanoseconds_does_not_raise():
    w = Windows([10], clock=lambda: 0.0)
    w.add(reading(1.0, 1_780_000_000.5))
    ns = 1_780_000_001 * 10**9
    w.add(reading(7.0, float(ns)))  # a source that gave nanoseconds for seconds
    assert stat(w, "last", ns + 0.5) == 7.0
    assert w.history("gpu_power_watts", GPU0, 3, now=ns + 0.5) == [None, None, 7.0]


def test_a_huge_count_saturates_instead_of_raising_or_wrapping():
    w = Windows([10], clock=lambda: 0.0)
    w.add(reading(2.0, 1000.5, count=2**40))
    assert stat(w, "count", 1000.9) == U32_MAX
    w.add(reading(2.0, 1000.6, count=7))  # adding to a saturated slot
    assert stat(w, "count", 1000.9) == U32_MAX
    w.add(reading(2.0, 1001.5, count=U32_MAX))
    w.add(reading(2.0, 1001.6, count=1))  # exactly one past the top
    w.add(reading(2.0, 1002.5, count=10**30))
    assert [b.count for b in w.close(1003.0)] == [U32_MAX] * 3
    assert stat(w, "count", 1002.9) == 3.0 * U32_MAX
    assert stat(w, "max", 1002.9) == 2.0


def test_a_late_sample_just_inside_the_ring_counts_and_one_just_outside_is_ignored():
    w = Windows([10], clock=lambda: 0.0)  # 11 slots
    for sec in range(1000, 1011):  # fills every slot: 1000..1010
        w.add(reading(1.0, sec + 0.5))
    w.add(reading(5.0, 1000.7))  # 1000 is still in its slot
    assert stat(w, "count", 1009.9) == 11
    assert stat(w, "max", 1009.9) == 5.0
    w.add(reading(9.0, 999.7))  # its slot holds 1010 now
    assert stat(w, "count", 1010.9) == 10
    assert stat(w, "max", 1010.9) == 1.0
    assert w.late_samples == 1, "999 is before the series' first second: late"


def test_a_clock_stepped_back_after_a_series_starts_still_fills_its_empty_slots():
    w = Windows([10], clock=lambda: 0.0)  # 11 slots; the first second, 1000, sits in slot 10
    w.add(reading(1.0, 1000.5))
    w.close(1001.0)
    for sec in range(990, 1000):  # a clock stepped back 10 s: slots 0..9, all empty
        w.add(reading(2.0, sec + 0.5))
    assert w.late_samples == 10
    assert stat(w, "count", 999.9) == 10
    assert stat(w, "avg", 999.9) == 2.0
    assert w.history("gpu_power_watts", GPU0, 10, now=1000.5) == [2.0] * 9 + [1.0]


@pytest.mark.parametrize("first", [0, 3000, 2**31 - 5, 2**32 + 5])
def test_the_ring_answers_the_same_from_any_first_second(first):
    w = Windows([10, 60], clock=lambda: 0.0)
    for k in range(70):
        w.add(Sample("load1", {}, 2, 2.0 * k, k - 1.0, k + 1.0, float(k), first + k + 0.5))
    now = first + 69.5
    assert w.stat("load1", {}, 60, "count", now=now) == 120
    assert w.stat("load1", {}, 60, "avg", now=now) == pytest.approx(sum(range(10, 70)) / 60)
    assert w.stat("load1", {}, 10, "min", now=now) == 59.0
    assert w.stat("load1", {}, 10, "last", now=now) == 69.0
    # a catch-up close hands out the closed seconds the 61 slots still hold (the slot of
    # first + 8 holds the open second, first + 69)
    assert [b.ts for b in w.close(now)] == list(range(first + 9, first + 69))


def test_a_clock_before_1970_finds_no_data_in_empty_slots():
    w = Windows([10], clock=lambda: 0.0)
    w.add(reading(1.0, 5.5))
    # the window of now = 3.5 covers seconds -6..3, none of them written
    for name in ("avg", "min", "max", "last", "count"):
        assert stat(w, name, 3.5) is None
    assert w.history("gpu_power_watts", GPU0, 10, now=3.5) == [None] * 10
