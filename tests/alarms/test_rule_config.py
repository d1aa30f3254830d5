"""Bad `[[alarm]]` tables: a clear error naming the file, the line and the key."""
from __future__ import annotations

import pytest

from agent import config
from alarm_helpers import parse_rules

GOOD = '''[agent]
state_dir = "/tmp/x"

[[alarm]]
name = "first"
metric = "gpu_temperature_celsius"
threshold = 70

[[alarm]]
name = "second"
metric = "gpu_power_watts"
'''


def error_of(text: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "agent.toml")
    return info.value


@pytest.mark.parametrize("line, want_key, want_text", [
    ('window = "5 minutes"', "alarm[1].window", "not a duration"),
    ('window = "500ms"', "alarm[1].window", "at least 1s"),
    ('interval = "0.5s"', "alarm[1].interval", "at least 1s"),
    ('stat = "median"', "alarm[1].stat", "must be one of"),
    ('operator = "=>"', "alarm[1].operator", "must be one of"),
    ("threshold = \"70\"", "alarm[1].threshold", "must be a number"),
    ('effective = "9-17"', "alarm[1].effective", "hh:mm-hh:mm"),
    ('effective = "09:00-24:00"', "alarm[1].effective", "not a time of day"),
    ('days = ["monday-funday"]', "alarm[1].days", "not a day"),
    ('timezone = "Mars/Olympus"', "alarm[1].timezone", "unknown time zone"),
    ("consecutive = 0", "alarm[1].consecutive", ">= 1"),
    ('missing = "zero"', "alarm[1].missing", "must be one of"),
    ('silence = "-5m"', "alarm[1].silence", "not a duration"),
    ("gpus = [-1]", "alarm[1].gpus", "GPU indexes"),
    ('colour = "red"', "alarm[1].colour", "unknown key"),
    ("command = []", "alarm[1].command", "non-empty"),
    ('hook_timeout = "5s"', "alarm[1].hook_timeout", "without a command"),
])
def test_bad_key_names_line_and_key(line, want_key, want_text):
    e = error_of(GOOD + "threshold = 1\n" * ("threshold" not in line) + line + "\n")
    assert e.file == "agent.toml"
    assert e.key == want_key
    assert e.line == GOOD.count("\n") + 1 + ("threshold" not in line)
    assert want_text in e.message
    assert str(e).startswith(f"agent.toml:{e.line}: {want_key}: ")


def test_missing_threshold_points_at_the_table():
    e = error_of(GOOD)
    assert (e.line, e.key) == (9, "alarm[1]") and "missing threshold" in e.message


def test_unknown_metric_lists_the_known_ones():
    e = error_of(GOOD.replace('"gpu_power_watts"', '"gpu_temp"') + "threshold = 1\n")
    assert (e.line, e.key) == (11, "alarm[1].metric")
    assert "gpu_temperature_celsius" in e.message


def test_missing_name_and_duplicate_name():
    e = error_of(GOOD.replace('name = "second"\n', "") + "threshold = 1\n")
    assert e.key == "alarm[1]" and "'name'" in e.message
    e = error_of(GOOD.replace('"second"', '"first"') + "threshold = 1\n")
    assert (e.line, e.key) == (10, "alarm[1].name") and "duplicate" in e.message


def test_levels_must_be_ordered_and_exclusive():
    e = error_of(GOOD + "warning = 80\ncritical = 70\n")
    assert (e.line, e.key) == (13, "alarm[1].critical")
    e = error_of(GOOD + "threshold = 80\ncritical = 90\n")
    assert (e.line, e.key) == (12, "alarm[1].threshold")
    e = error_of(GOOD + 'threshold = 80\noperator = "<="\nrecovery_threshold = 70\n')
    assert (e.line, e.key) == (14, "alarm[1].recovery_threshold") and "never clear" in e.message


def test_trigger_forms_are_exclusive_and_consistent():
    e = error_of(GOOD + "threshold = 1\nconsecutive = 3\nbreaches = 2\nof = 3\n")
    assert e.key == "alarm[1].consecutive"
    e = error_of(GOOD + "threshold = 1\nbreaches = 4\nof = 3\n")
    assert (e.line, e.key) == (13, "alarm[1].breaches")
    e = error_of(GOOD + "threshold = 1\nbreaches = 2\n")
    assert e.key == "alarm[1].breaches" and "go together" in e.message


def test_single_table_instead_of_array_is_explained():
    e = error_of('[alarm]\nname = "x"\n')
    assert e.line == 1 and "[[alarm]]" in e.message


def test_disabled_rule_is_validated_but_not_loaded():
    assert [r.name for r in parse_rules(GOOD + "threshold = 1\nenabled = false\n")] == ["first"]
    e = error_of(GOOD + 'threshold = 1\nenabled = false\nwindow = "soon"\n')
    assert e.key == "alarm[1].window"


def test_every_documented_key_parses():
    text = '''[[alarm]]
name = "all-keys"
description = "every key at once"
metric = "gpu_temperature_celsius"
window = "1m"
stat = "max"
interval = "10s"
operator = ">"
warning = 80
critical = 90
breaches = 2
of = 4
recover_after = 3
recovery_threshold = 75
missing = "breaching"
effective = ["00:00-06:00", "20:00-23:59"]
days = ["mon-fri", "sun"]
timezone = "UTC"
silence = "30m"
notify_resolved = false
command = ["/bin/true", "--flag"]
hook_timeout = "3s"
gpus = [0, "GPU-123"]
vendor = "nvidia"
labels = { model = "Tesla P100-PCIE-16GB" }
record = false
enabled = true
'''
    (r,) = parse_rules(text)
    assert (r.window_s, r.stat, r.interval_s, r.operator) == (60.0, "max", 10.0, ">")
    assert [(lv.severity, lv.threshold) for lv in r.levels] == [("warning", 80.0), ("critical", 90.0)]
    assert (r.trigger_m, r.trigger_n, r.recover_after, r.recovery_threshold) == (2, 4, 3, 75.0)
    assert r.schedule.windows == ((0, 360), (1200, 1439)) and r.schedule.days == {0, 1, 2, 3, 4, 6}
    assert (r.silence_s, r.notify_resolved, r.record) == (1800.0, False, False)
    assert r.hook.command == ("/bin/true", "--flag") and r.hook.timeout_s == 3.0
    assert r.scope.gpus == {"0"} and r.scope.uuids == {"GPU-123"} and r.scope.vendor == "nvidia"
    assert r.scope.labels == (("model", "Tesla P100-PCIE-16GB"),)
