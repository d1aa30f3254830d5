"""Alarm state in the state directory: atomic, and a restart keeps an active alarm quiet."""
from __future__ import annotations

import dataclasses
import json
import os

from agent.alarms.engine import Engine
from agent.alarms.store import StateStore
from alarm_helpers import rule


def fire(clock, source, tmp_path, r):
    engine = Engine([r], source, clock)
    source.set(80, gpu="0")
    source.set(40, gpu="1")
    events = engine.evaluate(clock())
    assert [e.data["notify"] for e in events if e.labels["gpu"] == "0"] == ["firing"]
    StateStore(tmp_path).save(engine.snapshot())
    return engine


def test_restart_keeps_the_active_alarm_and_stays_silent_inside_the_silence(clock, source, tmp_path):
    r = rule('threshold = 70\nsilence = "1h"')
    fire(clock, source, tmp_path, r)
    clock.advance(600)  # the agent restarts ten minutes later
    engine = Engine([r], source, clock)
    saved, note = StateStore(tmp_path).load()
    assert note is None and engine.restore(saved) == []
    assert {s["labels"]["gpu"]: s["state"] for s in engine.states()} == {"0": "alarm", "1": "ok"}
    events = []
    for _ in range(49):  # up to 59 minutes after the firing: nothing
        events += engine.evaluate(clock())
        clock.advance(60)
    assert events == []
    clock.advance(60)
    assert [e.data["notify"] for e in engine.evaluate(clock())] == ["repeat"]


def test_restart_then_recovery_sends_resolved(clock, source, tmp_path):
    r = rule("threshold = 70")
    fire(clock, source, tmp_path, r)
    clock.advance(120)
    engine = Engine([r], source, clock)
    engine.restore(StateStore(tmp_path).load()[0])
    source.set(50, gpu="0")
    events = engine.evaluate(clock())
    assert [(e.labels["gpu"], e.data["previous"], e.data["notify"]) for e in events] == [("0", "alarm", "resolved")]


def test_a_changed_rule_keeps_state_but_resets_history(clock, source, tmp_path):
    fire(clock, source, tmp_path, rule("threshold = 70"))
    engine = Engine([rule("threshold = 75")], source, clock)
    notes = engine.restore(StateStore(tmp_path).load()[0])
    assert any("changed" in n for n in notes)
    assert [s["state"] for s in engine.states() if s["labels"]["gpu"] == "0"] == ["alarm"]


def test_a_removed_rule_is_dropped_with_a_note(clock, source, tmp_path):
    fire(clock, source, tmp_path, rule("threshold = 70"))
    other = dataclasses.replace(rule("threshold = 70"), name="other")
    engine = Engine([other], source, clock)
    notes = engine.restore(StateStore(tmp_path).load()[0])
    assert notes == ["rule 'r' is no longer configured; its saved state was dropped"]


def test_state_file_is_replaced_whole_and_no_temporary_is_left(tmp_path):
    store = StateStore(tmp_path)
    store.save({"rules": {"a": {"series": []}}})
    store.save({"rules": {}})
    assert json.loads(store.path.read_text()) == {"version": 1, "rules": {}}
    assert sorted(os.listdir(store.path.parent)) == ["state.json"]


def test_unreadable_state_is_moved_aside_and_reported(tmp_path):
    store = StateStore(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{half a docu")
    saved, note = store.load()
    assert saved == {} and "unreadable" in note
    assert store.path.with_suffix(".corrupt").exists() and not store.path.exists()


def test_label_sets_outside_a_narrowed_scope_are_not_restored(clock, source, tmp_path):
    fire(clock, source, tmp_path, rule("threshold = 70"))
    engine = Engine([rule("threshold = 70\ngpus = [1]")], source, clock)
    engine.restore(StateStore(tmp_path).load()[0])
    assert [s["labels"] for s in engine.states()] == [{"gpu": "1"}]
