"""Window arithmetic on a virtual clock: 1-second buckets folded into the configured windows."""
import pytest

from agent.sources.base import Sample
from agent.windows import Windows


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


GPU0 = {"gpu": "0", "uuid": "GPU-a", "vendor": "nvidia", "model": "Tesla P100"}


def agg(metric, labels, values, ts):
    return Sample(metric, labels, len(values), sum(values), min(values), max(values), values[-1], ts)


@pytest.fixture
def clock():
    return Clock(1000.0)


def test_avg_is_weighted_by_sample_count_across_buckets(clock):
    w = Windows([10], clock)
    w.add(agg("gpu_power_watts", GPU0, [100.0] * 1000, 995.5))  # 1 kHz second
    w.add(agg("gpu_power_watts", GPU0, [200.0], 996.5))         # one reading
    clock.t = 999.9
    assert w.stat("gpu_power_watts", GPU0, 10, "avg") == pytest.approx((100 * 1000 + 200) / 1001)
    assert w.stat("gpu_power_watts", GPU0, 10, "count") == 1001


def test_min_max_last_come_from_every_sample_in_the_window(clock):
    w = Windows([10, 60], clock)
    w.add(agg("gpu_temperature_celsius", GPU0, [60, 71, 65], 990.2))
    w.add(agg("gpu_temperature_celsius", GPU0, [50, 58], 995.7))
    clock.t = 996.0
    assert w.stat("gpu_temperature_celsius", GPU0, 10, "min") == 50
    assert w.stat("gpu_temperature_celsius", GPU0, 10, "max") == 71
    assert w.stat("gpu_temperature_celsius", GPU0, 10, "last") == 58


def test_window_holds_the_last_w_whole_seconds_including_the_current_one(clock):
    w = Windows([10], clock)
    for sec in range(980, 1001):
        w.add(Sample.reading("cpu_utilization_percent", {}, sec, sec + 0.5))
    clock.t = 1000.3
    # seconds 991..1000 are in; 990 is out
    assert w.stat("cpu_utilization_percent", {}, 10, "min") == 991
    assert w.stat("cpu_utilization_percent", {}, 10, "max") == 1000
    assert w.stat("cpu_utilization_percent", {}, 10, "count") == 10
    assert w.stat("cpu_utilization_percent", {}, 10, "avg") == pytest.approx(sum(range(991, 1001)) / 10)


def test_data_ages_out_of_every_window_as_the_clock_advances(clock):
    w = Windows([10, 60], clock)
    w.add(Sample.reading("memory_used_percent", {}, 42.0, 1000.1))
    clock.t = 1009.9
    assert w.stat("memory_used_percent", {}, 10, "avg") == 42.0
    clock.t = 1010.0
    assert w.stat("memory_used_percent", {}, 10, "avg") is None
    assert w.stat("memory_used_percent", {}, 60, "avg") == 42.0
    clock.t = 1060.0
    assert w.stat("memory_used_percent", {}, 60, "avg") is None
    # latest is the last value however old, not a windowed figure
    assert w.latest("memory_used_percent", {}) == 42.0


def test_no_data_is_none_never_zero(clock):
    w = Windows([10], clock)
    assert w.stat("gpu_fan_speed_percent", GPU0, 10, "avg") is None
    assert w.latest("gpu_fan_speed_percent", GPU0) is None
    w.add(Sample.reading("gpu_fan_speed_percent", GPU0, 0.0, 999.0))
    assert w.stat("gpu_fan_speed_percent", GPU0, 10, "avg") == 0.0


def test_ring_reuse_after_a_gap_longer_than_retention_does_not_mix_in_old_seconds(clock):
    w = Windows([10], clock)  # retention 11 slots
    w.add(Sample.reading("load1", {}, 5.0, 1000.0))
    clock.t = 1011.5  # slot of 1000 is reused by 1011
    w.add(Sample.reading("load1", {}, 1.0, 1011.2))
    assert w.stat("load1", {}, 10, "count") == 1
    assert w.stat("load1", {}, 10, "avg") == 1.0


def test_label_sets_are_separate_series(clock):
    w = Windows([10], clock)
    w.add(Sample.reading("net_rx_bytes_per_second", {"nic": "eth0"}, 10.0, 999.0))
    w.add(Sample.reading("net_rx_bytes_per_second", {"nic": "eth1"}, 30.0, 999.0))
    assert sorted(ls["nic"] for ls in w.label_sets("net_rx_bytes_per_second")) == ["eth0", "eth1"]
    assert w.stat("net_rx_bytes_per_second", {"nic": "eth1"}, 10, "avg") == 30.0
    # label order does not make a different series
    w.add(Sample.reading("gpu_power_watts", {"a": "1", "b": "2"}, 1.0, 999.0))
    assert w.latest("gpu_power_watts", {"b": "2", "a": "1"}) == 1.0


def test_close_hands_out_each_closed_second_once_and_keeps_the_current_one_open(clock):
    w = Windows([10], clock)
    w.add(agg("gpu_power_watts", GPU0, [1.0, 3.0], 998.4))
    w.add(agg("gpu_power_watts", GPU0, [5.0], 999.9))
    w.add(agg("gpu_power_watts", GPU0, [7.0], 1000.2))
    closed = w.close(1000.2)
    assert [(b.ts, b.count, b.sum, b.min, b.max, b.last) for b in closed] == [
        (998, 2, 4.0, 1.0, 3.0, 3.0), (999, 1, 5.0, 5.0, 5.0, 5.0)]
    assert closed[0].labels == GPU0
    assert w.close(1000.9) == []
    later = w.close(1001.0)
    assert [(b.ts, b.sum) for b in later] == [(1000, 7.0)]


def test_a_sample_for_an_already_closed_second_counts_in_windows_and_as_late(clock):
    w = Windows([10], clock)
    w.add(Sample.reading("load1", {}, 1.0, 999.5))
    w.close(1000.1)
    w.add(Sample.reading("load1", {}, 3.0, 999.7))
    assert w.stats()["late_samples"] == 1
    assert w.stat("load1", {}, 10, "avg", now=1000.1) == 2.0


def test_history_gives_per_second_averages_with_gaps_as_none(clock):
    w = Windows([10], clock)
    w.add(agg("gpu_utilization_percent", GPU0, [10.0, 30.0], 997.1))
    w.add(agg("gpu_utilization_percent", GPU0, [50.0], 999.1))
    clock.t = 999.5
    assert w.history("gpu_utilization_percent", GPU0, 4) == [None, 20.0, None, 50.0]


def test_growing_the_windows_keeps_the_data_already_bucketed(clock):
    w = Windows([10], clock)
    for sec in range(995, 1000):
        w.add(Sample.reading("load1", {}, float(sec), sec + 0.1))
    w.set_sizes([10, 300])
    clock.t = 999.5
    assert w.stat("load1", {}, 300, "count") == 5
    assert w.stat("load1", {}, 10, "min") == 995.0


def test_unknown_statistic_and_window_beyond_retention_are_errors(clock):
    w = Windows([10, 60], clock)
    with pytest.raises(ValueError, match="unknown statistic"):
        w.stat("load1", {}, 10, "median")
    with pytest.raises(ValueError, match="outside"):
        w.stat("load1", {}, 61, "avg")


def test_every_default_window_answers(clock):
    w = Windows([10, 60, 300, 900], clock)
    for sec in range(0, 900):
        w.add(Sample.reading("load1", {}, float(sec % 7), clock.t - sec))
    for size in (10, 60, 300, 900):
        values = [float(sec % 7) for sec in range(size)]
        assert w.stat("load1", {}, size, "avg") == pytest.approx(sum(values) / size)
        assert w.stat("load1", {}, size, "count") == size


def test_every_statistic_matches_a_naive_fold_with_gaps_and_ring_wraparound():
    import random

    rng = random.Random(7)
    clock = Clock(0.0)
    w = Windows([10, 60, 300], clock)
    kept: dict[int, list[float]] = {}
    for sec in range(5000, 5000 + 1300):  # more than four times round the ring
        if rng.random() < 0.3:
            continue  # a gap: no data that second
        values = [rng.uniform(-50, 150) for _ in range(rng.randint(1, 5))]
        kept[sec] = values
        w.add(agg("gpu_power_watts", GPU0, values, sec + rng.random() * 0.99))
        clock.t = sec + 0.999
        if sec % 97 == 0:
            for size in (10, 60, 300):
                window = [v for s in range(sec - size + 1, sec + 1) for v in kept.get(s, [])]
                last_sec = max((s for s in range(sec - size + 1, sec + 1) if s in kept), default=None)
                expect = {"avg": sum(window) / len(window) if window else None,
                          "min": min(window, default=None), "max": max(window, default=None),
                          "count": float(len(window)) if window else None,
                          "last": kept[last_sec][-1] if last_sec is not None else None}
                for stat, value in expect.items():
                    got = w.stat("gpu_power_watts", GPU0, size, stat)
                    assert got == pytest.approx(value), (sec, size, stat)


def test_closing_without_handing_out_closes_the_same_seconds(clock):
    w = Windows([10], clock)
    w.add(agg("gpu_power_watts", GPU0, [100.0], 999.5))
    w.add(agg("gpu_power_watts", GPU0, [120.0], 1000.5))
    assert w.close(1001.2, hand_out=False) == []
    assert w.close(1001.9) == [], "seconds closed without handing out are not handed out later"
    w.add(agg("gpu_power_watts", GPU0, [90.0], 1000.7))
    assert w.late_samples == 1, "a sample for a closed second counts as late"
    assert w.stat("gpu_power_watts", GPU0, 10, "count", now=1001.2) == 3
    w.add(agg("gpu_power_watts", GPU0, [110.0], 1001.5))
    assert [(b.ts, b.count, b.sum) for b in w.close(1002.0)] == [(1001, 1, 110.0)], "later seconds are handed out as usual"


def test_series_silent_longer_than_the_longest_window_expire_and_others_stay(clock):
    w = Windows([10, 60], clock)
    gone, stays = {"nic": "veth1234"}, {"nic": "eth0"}
    w.add(agg("net_rx_bytes_per_second", gone, [5.0], 1000.0))
    for t in range(1000, 1062):
        w.add(agg("net_rx_bytes_per_second", stays, [1.0], float(t)))
    assert w.expire(1061.0) == 0  # 61 s of silence is not yet past the 60 s window + 1
    assert w.expire(1062.5) == 1
    assert w.label_sets("net_rx_bytes_per_second") == [stays]
    assert w.latest("net_rx_bytes_per_second", gone) is None
    assert w.stats()["expired_series"] == 1


def test_a_sample_without_a_finite_time_is_left_out_and_counted_and_the_batch_goes_on(clock):
    # A source bug (a NaN or infinite timestamp) must not take the main loop's tick down.
    w = Windows([10], clock)
    w.add_all([agg("gpu_power_watts", GPU0, [1.0], float("nan")),
               agg("gpu_power_watts", GPU0, [2.0], float("inf")),
               agg("gpu_power_watts", GPU0, [3.0], 999.5)])
    assert w.stats()["bad_times"] == 2
    assert w.stat("gpu_power_watts", GPU0, 10, "avg") == 3.0


def test_stat_all_answers_what_stat_answers_for_every_series_of_the_metric(clock):
    w = Windows([10, 60], clock)
    gpu1 = dict(GPU0, gpu="1", uuid="GPU-b")
    for i, labels in enumerate((GPU0, gpu1)):
        w.add_all([agg("gpu_power_watts", labels, [100.0 + i, 120.0], 995.5),
                   agg("gpu_power_watts", labels, [90.0 * (i + 1)], 999.2),
                   agg("gpu_temperature_celsius", labels, [60.0], 999.2)])
    for name in ("avg", "min", "max", "last", "count"):
        got = {labels["gpu"]: value for labels, value in w.stat_all("gpu_power_watts", 10, name)}
        assert got == {l["gpu"]: w.stat("gpu_power_watts", l, 10, name) for l in (GPU0, gpu1)}
    assert w.stat_all("gpu_fan_percent", 10, "avg") == []
    with pytest.raises(ValueError, match="window"):
        w.stat_all("gpu_power_watts", 3600, "avg")
