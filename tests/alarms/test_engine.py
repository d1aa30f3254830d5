"""The rule state machine on a virtual clock: one test per rule feature of issue 4."""
from __future__ import annotations

from datetime import datetime

from alarm_helpers import parse_rules, rule


def feed(engine, clock, source, values, every=60.0, gpu="0"):
    """Evaluate once per value (None = no data), `every` seconds apart; returns the events."""
    events = []
    for v in values:
        source.set(v, gpu=gpu)
        events += engine.evaluate(clock())
        clock.advance(every)
    return events


def notes(events):
    return [(e.data["state"], e.data["notify"]) for e in events]


SOURCE_EXAMPLE = """
[[alarm]]
name = "gpu-temperature-high"
description = "GPU temperature, 5-minute average >= 70"
metric = "gpu_temperature_celsius"
window = "5m"
stat = "avg"
operator = ">="
threshold = 70
consecutive = 5
effective = "00:00-23:59"
"""


def test_source_example_fires_on_the_fifth_consecutive_breach_only(make_engine, clock, source):
    (r,) = parse_rules(SOURCE_EXAMPLE)
    engine = make_engine(r)
    events = feed(engine, clock, source, [69.9, 70, 71, 72, 70])
    assert [e.data["state"] for e in events] == ["ok", "pending"]  # four breaches: still pending
    events = feed(engine, clock, source, [70.5])
    assert notes(events) == [("alarm", "firing")]
    e = events[0]
    assert e.kind == "alarm" and e.labels == {"gpu": "0"} and e.ts == clock.now - 60
    assert (e.data["rule"], e.data["value"], e.data["threshold"], e.data["operator"]) == \
        ("gpu-temperature-high", 70.5, 70.0, ">=")
    assert set(source.asked) == {("gpu_temperature_celsius", 300.0, "avg")}
    assert feed(engine, clock, source, [75, 76, 77]) == []  # still in alarm, inside the silence


def test_a_non_breach_restarts_the_consecutive_count(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nconsecutive = 3"))
    events = feed(engine, clock, source, [71, 71, 69, 71, 71])
    assert "alarm" not in [e.data["state"] for e in events]
    assert notes(feed(engine, clock, source, [71])) == [("alarm", "firing")]


def test_m_of_n_fires_on_the_mth_breach_among_the_last_n(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nbreaches = 3\nof = 5"))
    events = feed(engine, clock, source, [71, 60, 71, 60])
    assert "alarm" not in [e.data["state"] for e in events]
    assert notes(feed(engine, clock, source, [71])) == [("alarm", "firing")]


def test_m_of_n_forgets_breaches_older_than_n(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nbreaches = 2\nof = 3"))
    events = feed(engine, clock, source, [71, 60, 60, 71, 60, 60, 71])
    assert "alarm" not in [e.data["state"] for e in events]


def test_evaluates_once_per_interval_however_often_it_is_ticked(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\ninterval = \"30s\""))
    source.set(50, gpu="0")
    for _ in range(90):
        engine.evaluate(clock())
        clock.advance(1)
    assert len(source.asked) == 3


def test_recovery_needs_k_non_breaching_evaluations(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nrecover_after = 3"))
    assert notes(feed(engine, clock, source, [80])) == [("alarm", "firing")]
    assert feed(engine, clock, source, [60, 60, 80, 60, 60]) == []  # the breach restarts the count
    assert notes(feed(engine, clock, source, [60])) == [("ok", "resolved")]


def test_recovery_threshold_holds_the_alarm_until_crossed(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nrecovery_threshold = 65"))
    feed(engine, clock, source, [72])
    assert feed(engine, clock, source, [69, 66, 65.5]) == []  # below 70 but not below 65
    events = feed(engine, clock, source, [64.9])
    assert notes(events) == [("ok", "resolved")] and events[0].data["previous"] == "alarm"


def test_missing_data_insufficient_data_state(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70"))
    assert notes(feed(engine, clock, source, [None])) == []  # starts there: no transition
    assert notes(feed(engine, clock, source, [80])) == [("alarm", "firing")]
    assert notes(feed(engine, clock, source, [None])) == [("insufficient-data", "insufficient-data")]
    assert notes(feed(engine, clock, source, [50])) == [("ok", None)]


def test_missing_data_ignore_keeps_state_and_count(make_engine, clock, source):
    engine = make_engine(rule('threshold = 70\nconsecutive = 3\nmissing = "ignore"'))
    events = feed(engine, clock, source, [71, None, 71, None])
    assert [e.data["state"] for e in events] == ["pending"]
    assert notes(feed(engine, clock, source, [71])) == [("alarm", "firing")]
    assert feed(engine, clock, source, [None, None]) == []  # an alarm does not clear on silence


def test_missing_data_breaching_counts_as_a_breach(make_engine, clock, source):
    engine = make_engine(rule('threshold = 70\nconsecutive = 2\nmissing = "breaching"'))
    assert notes(feed(engine, clock, source, [71, None])) == [("pending", None), ("alarm", "firing")]
    assert feed(engine, clock, source, [None]) == []  # missing does not recover it either


def test_missing_data_not_breaching_counts_as_recovery(make_engine, clock, source):
    engine = make_engine(rule('threshold = 70\nmissing = "not-breaching"'))
    assert notes(feed(engine, clock, source, [71])) == [("alarm", "firing")]
    assert notes(feed(engine, clock, source, [None])) == [("ok", "resolved")]


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_effective_window_with_days_and_time_zone(make_engine, clock, source):
    r = rule('threshold = 70\neffective = "09:00-17:00"\ndays = ["mon-fri"]\ntimezone = "Asia/Shanghai"')
    engine = make_engine(r)
    clock.now = _at("2026-11-27T10:00:00+00:00")  # Friday 18:00 in Shanghai (10:00 in UTC)
    assert "alarm" not in [e.data["state"] for e in feed(engine, clock, source, [80])]
    clock.now = _at("2026-11-28T03:00:00+00:00")  # Saturday 11:00 in Shanghai
    assert "alarm" not in [e.data["state"] for e in feed(engine, clock, source, [80])]
    clock.now = _at("2026-11-30T02:00:00+00:00")  # Monday 10:00 in Shanghai
    assert notes(feed(engine, clock, source, [80])) == [("alarm", "firing")]


def test_outside_effective_time_breaches_do_not_count_but_alarms_can_clear(make_engine, clock, source):
    r = rule('threshold = 70\nconsecutive = 2\neffective = "08:00-08:59"\ntimezone = "UTC"')
    engine = make_engine(r)
    clock.now = _at("2026-11-25T08:58:00+00:00")
    events = feed(engine, clock, source, [80, 80])  # 08:58 and 08:59: both inside
    assert notes(events)[-1] == ("alarm", "firing")
    events = feed(engine, clock, source, [80, 80, 80])  # 09:00 on: outside
    assert events == []  # held, no repeat, no new firing
    assert notes(feed(engine, clock, source, [50])) == [("ok", "resolved")]
    assert "alarm" not in [e.data["state"] for e in feed(engine, clock, source, [80, 80])]


def test_window_past_midnight_belongs_to_the_day_it_starts(make_engine, clock, source):
    r = rule('threshold = 70\neffective = "22:00-06:00"\ndays = ["fri"]\ntimezone = "UTC"')
    assert r.schedule.active(_at("2026-11-28T03:00:00+00:00"))  # Saturday 03:00: Friday night
    assert r.schedule.active(_at("2026-11-27T23:30:00+00:00"))  # Friday 23:30
    assert not r.schedule.active(_at("2026-11-27T03:00:00+00:00"))  # Friday 03:00: Thursday night
    assert not r.schedule.active(_at("2026-11-27T12:00:00+00:00"))


def test_source_window_00_00_to_23_59_covers_the_last_minute_of_the_day():
    (r,) = parse_rules(SOURCE_EXAMPLE)
    assert r.schedule.active(_at("2026-11-25T23:59:59+00:00"))
    assert r.schedule.active(_at("2026-11-25T00:00:00+00:00"))


def test_silence_period_repeats_an_active_alarm_once_per_period(make_engine, clock, source):
    engine = make_engine(rule('threshold = 70\nsilence = "10m"'))
    events = feed(engine, clock, source, [80] * 25)  # 25 minutes in alarm
    assert notes(events) == [("alarm", "firing"), ("alarm", "repeat"), ("alarm", "repeat")]
    assert [e.ts - events[0].ts for e in events] == [0, 600, 1200]


def test_silence_zero_notifies_once(make_engine, clock, source):
    engine = make_engine(rule('threshold = 70\nsilence = 0'))
    assert notes(feed(engine, clock, source, [80] * 30)) == [("alarm", "firing")]


def test_resolved_notification_can_be_switched_off(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nnotify_resolved = false"))
    events = feed(engine, clock, source, [80, 60])
    assert notes(events) == [("alarm", "firing"), ("ok", None)]


def test_warning_and_critical_levels_escalate_and_step_down(make_engine, clock, source):
    engine = make_engine(rule("warning = 60\ncritical = 70\nconsecutive = 2"))
    events = feed(engine, clock, source, [65, 65, 75, 75, 65, 50])
    got = [(e.data["state"], e.data["severity"], e.data["notify"], e.data["threshold"]) for e in events]
    assert got == [
        ("pending", None, None, 60.0),
        ("alarm", "warning", "firing", 60.0),
        ("alarm", "critical", "escalated", 70.0),  # second critical breach
        ("alarm", "warning", None, 60.0),  # critical trigger no longer holds
        ("ok", None, "resolved", 60.0),
    ]


def test_straight_to_critical_when_both_levels_trigger_together(make_engine, clock, source):
    engine = make_engine(rule("warning = 60\ncritical = 70"))
    events = feed(engine, clock, source, [90])
    assert [(e.data["severity"], e.data["notify"]) for e in events] == [("critical", "firing")]


def test_each_label_set_has_its_own_state(make_engine, clock, source):
    engine = make_engine(rule("threshold = 70\nconsecutive = 2"))
    events = []
    for hot in (80, 81):
        source.set(hot, gpu="0")
        source.set(40, gpu="1")
        events += engine.evaluate(clock())
        clock.advance(60)
    fired = [e for e in events if e.data["notify"] == "firing"]
    assert [e.labels for e in fired] == [{"gpu": "0"}]
    states = {s["labels"]["gpu"]: s["state"] for s in engine.states()}
    assert states == {"0": "alarm", "1": "ok"}


def test_scope_limits_the_label_sets_watched(make_engine, clock, source):
    r = rule('threshold = 70\ngpus = [1, "GPU-abc"]\nvendor = "nvidia"')
    engine = make_engine(r)
    for gpu, uuid, vendor in (("0", "GPU-x", "nvidia"), ("1", "GPU-y", "nvidia"),
                              ("2", "GPU-abc", "nvidia"), ("3", "GPU-abc", "amd")):
        source.values[tuple(sorted({"gpu": gpu, "uuid": uuid, "vendor": vendor}.items()))] = 99
    events = engine.evaluate(clock())
    assert sorted(e.labels["gpu"] for e in events) == ["1", "2"]


def test_less_than_operator(make_engine, clock, source):
    r = parse_rules('[[alarm]]\nname = "low-mem-free"\nmetric = "gpu_utilization_percent"\n'
                    'operator = "<"\nthreshold = 5\nrecovery_threshold = 20\n')[0]
    engine = make_engine(r)
    assert notes(feed(engine, clock, source, [3])) == [("alarm", "firing")]
    assert feed(engine, clock, source, [10]) == []
    assert notes(feed(engine, clock, source, [25])) == [("ok", "resolved")]
