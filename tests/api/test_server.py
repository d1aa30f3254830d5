"""The local API server on a real Unix socket, in a daemon: the socket's mode and group, a
stale socket replaced and a live one refused, a slow Watch client coalesced within its bound,
and Query per label set with its errors."""
import grp
import json
import os
import stat
import time

import grpc
import pytest

from agent.api.client import Client
from agent.events import Event
from agent.proto import agent_pb2, agent_pb2_grpc
from daemon_helpers import make_daemon


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
