"""The component's contract with the daemon, without root: off builds nothing, start never
waits for the metadata service, status says what it is waiting for, reload takes effect."""
import http.server
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from agent import config
from agent.nic.component import build
from agent.windows import Windows

ROUTE = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def _ctx(events):
    return SimpleNamespace(windows=Windows([10.0], time.time), core=None, emit=events.append, state_dir=None,
                           clock=time.time, host_id="h", labels={"cluster": "c1"}, log=logging.getLogger("t"))


def _cfg(tree, text=""):
    cfg = config.parse(f'[nic]\nprocfs = "{tree.procfs}"\nsysfs = "{tree.sysfs}"\n{text}')
    return cfg


def _wait(predicate, what):
    for _ in range(500):
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_mode_off_builds_no_component(tree):
    assert build(_cfg(tree, 'mode = "off"'), _ctx([])) is None


@pytest.fixture
def hung_metadata():
    release = threading.Event()

    class Hang(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            release.wait(30)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/instance-type"
    release.set()
    server.shutdown()
    server.server_close()


def test_start_does_not_wait_for_a_hung_metadata_service_and_status_says_so(tree, hung_metadata):
    tree.route(ROUTE)  # no default route: no interface is touched
    component = build(_cfg(tree, f'metadata_enabled = true\nmetadata_url = "{hung_metadata}"\n'
                                 "metadata_timeout = 10\n"), _ctx([]))
    component.start()
    try:
        status = _wait(lambda: component.status().get("requirement") and component.status(), "a first pass")
        assert status["requirement"]["state"] == "pending"
        assert status["metadata"]["state"] == "pending" and status["metadata"]["url"] == hung_metadata
        assert status["interfaces"] == [] and "no default route" in status["interfaces_reason"]
    finally:
        component.stop()


def test_status_before_the_first_pass_says_checking(tree):
    component = build(_cfg(tree), _ctx([]))
    assert component.status()["state"] == "checking" and component.status()["mode"] == "verify"


def test_missing_interface_emits_a_state_event_with_the_daemons_labels(tree):
    events = []
    component = build(_cfg(tree, 'instance_type = "ecs.ga1.4xlarge"\ninterfaces = ["egsnone0"]\n'), _ctx(events))
    component.start()
    try:
        status = _wait(lambda: component.status().get("interfaces") and component.status(), "a first pass")
        assert status["interfaces"][0]["state"] == "gone" and status["state"] == "attention"
        event = _wait(lambda: events and events[0], "an event")
        assert event.kind == "nic" and event.labels == {"cluster": "c1", "nic": "egsnone0"}
        assert event.data["to"] == "gone"
    finally:
        component.stop()


def test_reload_applies_the_new_settings_on_the_next_pass(tree):
    component = build(_cfg(tree, 'instance_type = "ecs.ga1.4xlarge"\ninterfaces = ["egsnone0"]\n'), _ctx([]))
    component.start()
    try:
        _wait(lambda: component.status().get("interfaces"), "a first pass")
        component.reload(_cfg(tree, 'instance_type = "gn4.8xlarge"\ninterfaces = ["egsnone1"]\n'))
        status = _wait(lambda: (component.status()["requirement"]["instance_type"] == "gn4.8xlarge"
                                and component.status()), "the reloaded pass")
        assert [r["interface"] for r in status["interfaces"]] == ["egsnone1"]
    finally:
        component.stop()
