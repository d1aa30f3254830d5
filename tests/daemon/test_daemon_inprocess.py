"""The daemon in-process: the component contract, status shape, reload, no native core."""
import json
import logging
import time

from agent import config
from agent.api.client import Client
from agent.components import Context
from agent.daemon import Daemon
from agent.events import Event
import daemon_helpers
from daemon_helpers import make_daemon, write_config


def test_components_get_the_context_ticks_buckets_events_and_show_in_status(short_dir, daemons):
    daemon_helpers.BUILT.clear()
    d, _ = make_daemon(short_dir, components=("daemon_helpers:build_recording", "daemon_helpers:build_off"))
    daemons.append(d)
    d.start()
    comp = daemon_helpers.BUILT[-1]
    assert comp.started
    ctx = comp.ctx
    assert isinstance(ctx, Context) and ctx.windows is d.windows and ctx.core is None
    assert ctx.state_dir == short_dir / "state" and ctx.state_dir.is_dir()
    assert ctx.host_id and callable(ctx.clock) and isinstance(ctx.log, logging.Logger)

    now = time.time()
    ctx.emit(Event("agent", now, {"gpu": "0"}, {"what": "test"}))
    for i in range(1, 4):
        d.tick(now + i)
    assert len(comp.ticks) >= 3
    assert [e.data["what"] for e in comp.events] == ["test"]
    keys = [(b.metric, tuple(sorted(b.labels.items())), b.ts) for b in comp.buckets]
    assert keys and len(keys) == len(set(keys)), "every closed bucket handed out exactly once"
    assert any(b.metric == "memory_used_percent" for b in comp.buckets)

    with Client(str(short_dir / "agent.sock")) as client:
        doc = client.status()
    for key in ("host", "gpus", "backends", "alarms", "nic"):
        assert key in doc
    assert doc["recording"]["ticks"] == len(comp.ticks)
    assert doc["components"]["recording"]["state"] == "ok"
    assert doc["components"]["daemon_helpers:build_off"]["state"] == "off"
    assert doc["events"][-1]["data"] == {"what": "test"}
    d.stop()
    assert comp.stopped


def test_a_component_that_fails_to_build_or_tick_is_marked_failed_and_the_daemon_serves_on(short_dir, daemons):
    d, _ = make_daemon(short_dir, components=("daemon_helpers:build_raises", "daemon_helpers:build_failing_tick",
                                              "no_such_module:build", "daemon_helpers:build_recording"))
    daemons.append(d)
    d.start()  # the start tick is the fragile one's first, fine
    d.tick(time.time() + 1)  # its second tick raises
    d.tick(time.time() + 2)
    with Client(str(short_dir / "agent.sock")) as client:
        doc = client.status()
    comps = doc["components"]
    assert comps["daemon_helpers:build_raises"]["state"] == "failed"
    assert "cannot build on purpose" in comps["daemon_helpers:build_raises"]["error"]
    assert comps["no_such_module:build"]["state"] == "failed"
    assert comps["fragile"]["state"] == "failed" and "tick exploded" in comps["fragile"]["error"]
    assert comps["recording"]["state"] == "ok" and doc["recording"]["ticks"] >= 3
    assert doc["host"]["memory_used_percent"] is not None


def test_no_native_core_means_backends_unavailable_with_the_reason_and_host_metrics_only(short_dir, daemons, caplog):
    def no_core(settings):
        raise ImportError("No module named 'agent._native'")

    path = write_config(short_dir)
    d = Daemon(config.load(path, env={}), config_path=str(path), env={}, components=(), core_factory=no_core)
    daemons.append(d)
    with caplog.at_level(logging.WARNING, logger="egs-agent"):
        d.start()
    assert any("no GPU library found" in r.getMessage() for r in caplog.records)
    doc = json.loads(d.status_json())
    assert doc["gpus"] == []
    assert {k: v["state"] for k, v in doc["backends"].items()} == {"nvidia": "unavailable", "amd": "unavailable"}
    assert "native core not built" in doc["backends"]["nvidia"]["detail"]
    assert doc["host"]["memory_used_percent"] is not None


def test_reload_with_a_bad_file_keeps_the_running_config_and_logs_file_line_key(short_dir, daemons, caplog):
    daemon_helpers.BUILT.clear()
    d, path = make_daemon(short_dir, extra="[windows]\nsizes = ['10s', '1m']\n",
                          components=("daemon_helpers:build_recording",))
    daemons.append(d)
    d.start()
    good_cfg = d.cfg
    path.write_text(path.read_text().replace("sizes = ['10s', '1m']", "sizes = ['10s', '1m']\nbogus = 1"))
    with caplog.at_level(logging.ERROR, logger="egs-agent"):
        assert d.reload() is False
    assert d.cfg is good_cfg and d.windows.sizes == (10, 60)
    assert any(f"{path}:" in r.getMessage() and "windows.bogus" in r.getMessage() for r in caplog.records)
    assert daemon_helpers.BUILT[-1].reloads == []

    path.write_text(path.read_text().replace("bogus = 1", "").replace("'1m'", "'5m'"))
    assert d.reload() is True
    assert d.windows.sizes == (10, 300)
    assert daemon_helpers.BUILT[-1].reloads and daemon_helpers.BUILT[-1].reloads[-1].windows.sizes == ["10s", "5m"]
