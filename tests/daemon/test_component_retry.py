"""Issue 10, item 7 (the daemon part): a failed component is retried (stopped, started again)
with a bounded backoff (1 s doubling to 5 min), each failure logged once with its cause, and
its state, error, attempts and next retry shown in `status --json`."""
from __future__ import annotations

import json
import logging

import pytest

from agent import config
from agent.daemon import Daemon
from daemon_helpers import write_config


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Flaky:
    """Fails `fails` times in `where` (start or tick), then works."""

    instances: list["Flaky"] = []

    def __init__(self, where: str, fails: int):
        self.name = f"flaky-{where}"
        self.where, self.fails = where, fails
        self.starts = self.stops = self.ticks = 0
        self.reloads: list = []
        Flaky.instances.append(self)

    def _maybe_fail(self, what: str) -> None:
        if self.where == what and self.fails > 0:
            self.fails -= 1
            raise OSError(f"{what} failed on purpose ({self.fails} more to go)")

    def start(self):
        self.starts += 1
        self._maybe_fail("start")

    def stop(self):
        self.stops += 1

    def tick(self, now):
        self._maybe_fail("tick")
        self.ticks += 1

    def status(self):
        return {"ticks": self.ticks}

    def reload(self, cfg):
        self.reloads.append(cfg)


def build_flaky_start(cfg, ctx):
    return Flaky("start", 3)


def build_flaky_tick(cfg, ctx):
    return Flaky("tick", 2)


BUILD_FAILS = {"left": 0}


def build_fails_twice(cfg, ctx):
    if BUILD_FAILS["left"] > 0:
        BUILD_FAILS["left"] -= 1
        raise RuntimeError("cannot build yet")
    return Flaky("never", 0)


@pytest.fixture
def daemon(short_dir):
    made = []

    def make(*specs: str, extra: str = "") -> tuple[Daemon, Clock]:
        clock = Clock()
        path = write_config(short_dir, "[gpu]\nenabled = false\n" + extra)
        d = Daemon(config.load(path, env={}), config_path=str(path), env={}, clock=clock, components=specs)
        made.append(d)
        d.start()
        return d, clock

    yield make
    for d in made:
        d.stop()


def component(d: Daemon, name: str) -> dict:
    return json.loads(d.status_json())["components"][name]


def tick(d: Daemon, clock: Clock, seconds: float = 1.0) -> None:
    clock.t += seconds
    d.tick(clock.t)


def test_a_component_that_fails_to_start_is_retried_with_doubling_backoff_until_it_works(daemon, caplog):
    Flaky.instances.clear()
    with caplog.at_level(logging.INFO, logger="egs-agent"):
        d, clock = daemon(f"{__name__}:build_flaky_start")
        flaky = Flaky.instances[-1]
        assert flaky.starts == 1
        state = component(d, "flaky-start")
        assert state["state"] == "failed" and state["attempts"] == 1
        assert "OSError: start failed on purpose" in state["error"]
        assert state["next_retry_in_s"] == pytest.approx(1.0, abs=0.01)

        tick(d, clock, 1.0)  # due: stop, start again; fails (2), next in 2 s
        assert (flaky.stops, flaky.starts) == (1, 2)
        assert component(d, "flaky-start")["attempts"] == 2
        assert component(d, "flaky-start")["next_retry_in_s"] == pytest.approx(2.0, abs=0.01)
        tick(d, clock, 1.0)  # not due yet
        assert flaky.starts == 2
        tick(d, clock, 1.0)  # due: fails (3), next in 4 s
        assert flaky.starts == 3 and component(d, "flaky-start")["next_retry_in_s"] == pytest.approx(4.0, abs=0.01)
        tick(d, clock, 4.0)  # due: works
        assert flaky.starts == 4
    state = component(d, "flaky-start")
    assert state["state"] == "ok" and state["next_retry_in_s"] is None
    assert flaky.ticks >= 1 and json.loads(d.status_json())["flaky-start"]["ticks"] == flaky.ticks
    failures = [r for r in caplog.records if "flaky-start" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(failures) == 3, [r.getMessage() for r in failures]  # each failure once
    assert all("start failed on purpose" in r.getMessage() for r in failures)
    assert any("flaky-start" in r.getMessage() and "running again" in r.getMessage() for r in caplog.records)


def test_a_component_that_fails_in_tick_is_restarted_the_same_way(daemon):
    Flaky.instances.clear()
    d, clock = daemon(f"{__name__}:build_flaky_tick")
    flaky = Flaky.instances[-1]
    # The start tick failed (1), so it waits 1 s.
    assert component(d, "flaky-tick")["state"] == "failed"
    tick(d, clock, 1.0)  # restarted, ticks, fails again (2)
    assert (flaky.stops, flaky.starts) == (1, 2)
    assert component(d, "flaky-tick")["attempts"] == 2
    tick(d, clock, 2.0)  # restarted, ticks fine
    assert (flaky.stops, flaky.starts, flaky.ticks) == (2, 3, 1)
    assert component(d, "flaky-tick")["state"] == "ok"
    tick(d, clock, 1.0)
    assert flaky.ticks == 2


def test_the_backoff_doubles_to_five_minutes_and_no_further(daemon):
    Flaky.instances.clear()
    d, clock = daemon(f"{__name__}:build_flaky_start")
    flaky = Flaky.instances[-1]
    flaky.fails = 10**6
    delays = []
    for _ in range(12):
        delay = component(d, "flaky-start")["next_retry_in_s"]
        delays.append(delay)
        tick(d, clock, delay)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_a_component_that_failed_to_build_is_built_again(daemon):
    BUILD_FAILS["left"] = 2
    Flaky.instances.clear()
    d, clock = daemon(f"{__name__}:build_fails_twice")
    spec = f"{__name__}:build_fails_twice"
    assert component(d, spec)["state"] == "failed" and "cannot build yet" in component(d, spec)["error"]
    tick(d, clock, 1.0)
    assert component(d, spec)["attempts"] == 2
    tick(d, clock, 2.0)
    assert Flaky.instances and Flaky.instances[-1].starts == 1
    assert component(d, "flaky-never")["state"] == "ok"
    assert spec not in json.loads(d.status_json())["components"]


def test_a_restarted_component_gets_the_config_reloaded_while_it_was_down(daemon, short_dir):
    Flaky.instances.clear()
    d, clock = daemon(f"{__name__}:build_flaky_start")
    flaky = Flaky.instances[-1]
    flaky.fails = 0  # the next start works
    path = short_dir / "agent.toml"
    path.write_text(path.read_text() + "[windows]\nsizes = ['10s']\n")
    assert d.reload() is True
    assert flaky.reloads == []  # failed components are not reloaded...
    tick(d, clock, 1.0)
    assert component(d, "flaky-start")["state"] == "ok"
    assert flaky.reloads and flaky.reloads[-1].windows.sizes == ["10s"]  # ...until they run again


class NoTick:
    name = "no-tick"

    def start(self):
        pass

    def stop(self):
        pass

    def status(self):
        return {}


def build_no_tick(cfg, ctx):
    return [Flaky("start", 0), NoTick()]


def test_a_factory_returning_something_that_is_not_a_component_fails_its_build_saying_what_is_missing():
    from agent.components import Context, build_slots

    ctx = Context(windows=None, core=None, emit=lambda e: None, state_dir=None, clock=Clock(), host_id="h",
                  labels={}, log=logging.getLogger("test"))
    (slot,) = build_slots(f"{__name__}:build_no_tick", None, ctx, Clock())
    assert slot.state == "failed" and slot.component is None
    assert slot.error == "build: TypeError: NoTick is not a component: it has no tick"
