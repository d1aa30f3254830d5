"""The daemon in-process: the component contract, status shape, reload, socket handling and
a slow Watch client, all on a real Unix socket."""
import grp
import json
import logging
import os
import stat
import time

import grpc
import pytest

from agent import config
from agent.api.client import Client
from agent.components import Context
from agent.daemon import Daemon
from agent.events import Event
from agent.proto import agent_pb2, agent_pb2_grpc
import daemon_helpers
from daemon_helpers import write_config


def make_daemon(short_dir, extra="", components=(), core_factory=None, env=None, name="agent.toml", api=""):
    path = write_config(short_dir, "[gpu]\nenabled = false\n" + extra, name=name, api=api)
    cfg = config.load(path, env={})
    d = Daemon(cfg, config_path=str(path), env=env or {}, components=components, core_factory=core_factory)
    return d, path


@pytest.fixture
def daemons():
    started = []
    yield started
    for d in started:
        d.stop()


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


def test_socket_gets_the_configured_mode_and_group(short_dir, daemons):
    # root may give the socket to any group; anyone else only to a group they are in
    candidates = [g for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())
                  and (os.geteuid() == 0 or g.gr_gid in os.getgroups())]
    if not candidates:
        pytest.skip("not root and in no second group to give the socket to")
    group = candidates[0]
    d, _ = make_daemon(short_dir, api=f"socket_mode = 0o640\nsocket_group = '{group.gr_name}'\n")
    daemons.append(d)
    d.start()
    st = os.stat(short_dir / "agent.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == group.gr_gid
    d.stop()
    assert not (short_dir / "agent.sock").exists(), "a graceful stop removes its socket"


def test_a_stale_socket_is_replaced_and_a_live_one_is_refused(short_dir, daemons):
    import socket as pysocket

    leftover = pysocket.socket(pysocket.AF_UNIX)
    leftover.bind(str(short_dir / "agent.sock"))
    leftover.close()  # the file stays, nobody listens: what a crash leaves behind
    d, _ = make_daemon(short_dir)
    daemons.append(d)
    d.start()
    with Client(str(short_dir / "agent.sock")) as client:
        assert "host" in client.status()

    second, _ = make_daemon(short_dir, name="second.toml")
    with pytest.raises(RuntimeError, match="already running"):
        second.start()
    second.stop()
    with Client(str(short_dir / "agent.sock")) as client:
        assert "host" in client.status(), "the first daemon still serves"


def test_a_slow_watch_client_is_coalesced_and_never_queues_more_than_its_bound(short_dir, daemons):
    d, _ = make_daemon(short_dir, api="watch_queue = 4\n")
    daemons.append(d)
    d.start()
    channel = grpc.insecure_channel(f"unix:{short_dir / 'agent.sock'}")
    stub = agent_pb2_grpc.AgentStub(channel)
    stream = stub.Watch(agent_pb2.WatchRequest(include_status=True))
    first = next(stream)  # the stream is up and subscribed
    assert first.status_json
    sub = d.hub._subs[0]
    big = json.dumps({"pad": "x" * 65536})  # 64 KiB per update: unbounded queuing would be obvious
    now = time.time() + 10
    for i in range(400):
        d.hub.publish(now + i, [Event("agent", now + i, {}, {"i": i})], big)
        assert sub.pending() <= 4
    # the client never read; everything beyond the bound was merged, nothing was lost silently
    assert sub.coalesced >= 400 - 4 - 64  # a few may sit in gRPC's transport buffers
    seen_events, last = 0, None
    for update in stream:
        seen_events += len(update.events_json)
        last = update
        if json.loads(update.events_json[-1])["data"]["i"] == 399 if update.events_json else False:
            break
    assert last.coalesced == sub.coalesced > 0
    # events were carried through the merges (up to the per-update bound), and counted when not
    assert seen_events + last.events_dropped >= 400 - 64
    stream.cancel()
    channel.close()


def test_query_answers_per_label_set_and_rejects_bad_windows_and_metrics(short_dir, daemons):
    d, _ = make_daemon(short_dir)
    daemons.append(d)
    d.start()
    time.sleep(1.0)  # the host source needs two readings for a CPU figure
    d.tick(time.time())
    with Client(str(short_dir / "agent.sock")) as client:
        reply = client.query("cpu_utilization_percent", 10, "max")
        labels = [dict(s.labels) for s in reply.series]
        assert {} in labels and any("cpu" in ls for ls in labels)
        assert reply.unit == "percent"
        one = client.query("cpu_utilization_percent", 10, "count", {"cpu": "0"})
        assert [dict(s.labels) for s in one.series] == [{"cpu": "0"}] and one.series[0].count >= 1
        with pytest.raises(grpc.RpcError) as e:
            client.query("cpu_utilization_percent", 3600, "avg")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            client.query("no_such_metric", 10, "avg")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
