"""The metadata lookup against a tiny HTTP server on 127.0.0.1: answers, errors, timeouts,
and that it never holds up the caller."""
import http.server
import threading
import pytest

from agent.nic.metadata import MetadataError, MetadataLookup, fetch


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.hits += 1
        behaviour = server.behaviours[min(server.hits, len(server.behaviours)) - 1]
        status, body, delay = behaviour
        if delay:
            server.release.wait(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    """serve([(status, body, delay_s), ...]) -> URL; the last behaviour repeats."""
    servers = []

    def serve(behaviours):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.behaviours, server.hits, server.release = behaviours, 0, threading.Event()
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/instance/instance-type"

    yield serve
    for s in servers:
        s.release.set()
        s.shutdown()
        s.server_close()


def test_fetch_returns_the_instance_type(metadata_server):
    url = metadata_server([(200, b"ecs.gn5-c8g1.14xlarge\n", 0)])
    assert fetch(url, 2.0) == "ecs.gn5-c8g1.14xlarge"


def test_http_error_names_the_status(metadata_server):
    url = metadata_server([(404, b"not found", 0)])
    with pytest.raises(MetadataError, match="HTTP 404"):
        fetch(url, 2.0)


def test_slow_service_times_out_with_a_clear_reason(metadata_server):
    url = metadata_server([(200, b"ecs.gn5-c8g1.14xlarge", 5)])
    with pytest.raises(MetadataError, match=r"no answer within 0.3 s"):
        fetch(url, 0.3)


def test_an_answer_that_is_not_a_type_name_is_rejected(metadata_server):
    url = metadata_server([(200, b"<html>captive portal</html>", 0)])
    with pytest.raises(MetadataError, match="not an instance type name"):
        fetch(url, 2.0)


def test_refused_connection_is_an_error_not_a_hang():
    with pytest.raises(MetadataError, match="127.0.0.1:9"):
        fetch("http://127.0.0.1:9/latest", 1.0)


def test_background_lookup_returns_at_once_and_retries_until_it_gets_an_answer(metadata_server):
    url = metadata_server([(500, b"", 0), (200, b"gn4.8xlarge", 0)])
    found = threading.Event()
    got = []
    lookup = MetadataLookup(url, 1.0, on_found=lambda name: (got.append(name), found.set()), retry_s=0.05)
    lookup.start()
    assert lookup.status()["state"] in ("pending", "error")  # start() did not wait for the service
    assert found.wait(10)
    lookup.stop()
    assert got == ["gn4.8xlarge"]
    assert lookup.status()["state"] == "ok" and lookup.status()["attempts"] == 2


def test_stop_does_not_wait_for_a_hung_service(metadata_server):
    url = metadata_server([(200, b"gn4.8xlarge", 30)])
    lookup = MetadataLookup(url, 20.0)
    lookup.start()
    lookup.stop(timeout=0.2)  # returns after its join timeout; the thread is a daemon thread
    assert lookup.status()["state"] == "pending" and lookup.status()["value"] is None
