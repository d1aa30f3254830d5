"""Hook commands: the event as JSON on stdin, a timeout, and never in evaluation's way."""
from __future__ import annotations

import json
import sys

from agent.alarms.hooks import HookRunner
from agent.alarms.rules import Hook
from agent.events import Event
from collector_procs import wait_for

EVENT = Event("alarm", 1700000000.0, {"gpu": "0"}, {"rule": "hot", "state": "alarm", "notify": "firing"})


def test_hook_gets_the_event_as_json_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    runner = HookRunner(workers=1, queue=4)
    try:
        script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
        assert runner.submit(Hook((sys.executable, "-c", script), 5.0), EVENT, "hot")
        assert wait_for(lambda: runner.status()["ok"] == 1)
    finally:
        runner.stop()
    assert json.loads(out.read_text()) == EVENT.to_dict()


def test_shell_string_command_runs_through_sh(tmp_path):
    out = tmp_path / "rule.txt"
    runner = HookRunner(workers=1, queue=4)
    try:
        runner.submit(Hook(f"cat > {out}", 5.0), EVENT, "hot")
        assert wait_for(lambda: runner.status()["ok"] == 1)
    finally:
        runner.stop()
    assert json.loads(out.read_text())["data"]["rule"] == "hot"


def test_a_hanging_hook_is_killed_with_its_children_and_logged(tmp_path, caplog):
    pidfile = tmp_path / "child.pid"
    # The hook forks a grandchild that would outlive a plain kill of the shell.
    hang = f"sleep 300 & echo $! > {pidfile}; wait"
    runner = HookRunner(workers=1, queue=4)
    try:
        runner.submit(Hook(hang, 0.3), EVENT, "hot")
        # submit returned while the hook still runs: the caller (evaluation) never waits on it
        assert runner.status()["in_flight"] == 1 and runner.status()["timed_out"] == 0
        assert wait_for(lambda: runner.status()["timed_out"] == 1)
        grandchild = int(pidfile.read_text())
        assert wait_for(lambda: not _alive(grandchild))
    finally:
        runner.stop()
    assert "timed out after 0.3s and was killed" in caplog.text


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_saturated_pool_drops_and_counts_instead_of_queueing_without_bound():
    runner = HookRunner(workers=1, queue=1)
    try:
        slow = Hook("sleep 5", 5.0)
        results = [runner.submit(slow, EVENT, "hot") for _ in range(5)]
        assert results == [True, True, False, False, False]
        assert runner.status()["dropped"] == 3
    finally:
        runner.stop()
    assert runner.submit(slow, EVENT, "hot") is False  # a stopped runner takes nothing more


def test_failing_and_missing_commands_are_counted(caplog):
    runner = HookRunner(workers=2, queue=4)
    try:
        runner.submit(Hook("echo broken >&2; exit 3", 5.0), EVENT, "hot")
        runner.submit(Hook(("/nonexistent/hook",), 5.0), EVENT, "hot")
        assert wait_for(lambda: runner.status()["failed"] == 2)
    finally:
        runner.stop()
    assert "exited with 3: broken" in caplog.text and "could not start" in caplog.text
