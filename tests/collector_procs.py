"""The collector and agents as real processes on loopback, for every room that needs them
(collector, stream, e2e); their fixtures are in tests/conftest.py.

An agent here is `drive_agent.py`, a real `Outbox` that spools one batch per marker. Everything
listens on 127.0.0.1 only, on ports picked free at the time of the test.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from agent.proto import collector_pb2, collector_pb2_grpc
from pki import PKI

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DRIVER = Path(__file__).with_name("drive_agent.py")
TOKEN = "test-consumer-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the collector as a process -----------------------------------------------------------

class _Process:
    """A test process (`self.proc`): killed with -9, or stopped with SIGTERM then SIGKILL."""

    proc: subprocess.Popen | None = None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class CollectorProc(_Process):
    def __init__(self, root: Path, pki: PKI | None, plaintext: bool = False, extra: str = ""):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "collector-data"
        self.ingest_port, self.consumer_port = free_port(), free_port()
        self.pki, self.plaintext = pki, plaintext
        self.config = root / "collector.toml"
        tls = "[tls]\nplaintext = true\n" if plaintext else (
            f'[tls]\ncert = "{pki.root}/collector.crt"\nkey = "{pki.root}/collector.key"\nclient_ca = "{pki.root}/ca.crt"\n')
        self.config.write_text(
            f'[collector]\ndata_dir = "{self.data}"\nlog_level = "info"\n'
            f'[ingest]\nlisten = "127.0.0.1:{self.ingest_port}"\nmax_message_bytes = 262144\n'
            f'[consumers]\nlisten = "127.0.0.1:{self.consumer_port}"\ntokens = ["{TOKEN}"]\nheartbeat = "1s"\n'
            f"{tls}{extra}")
        self.proc: subprocess.Popen | None = None
        self.log = root / "collector.log"
        self.token = TOKEN

    def start(self, timeout: float = 20.0) -> "CollectorProc":
        self.proc = subprocess.Popen([PYTHON, "-m", "agent.collector.cli", "run", "--config", str(self.config)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.agents(timeout=1)
                return self
            except grpc.RpcError:
                time.sleep(0.1)
        raise AssertionError(f"collector did not come up: {self.log.read_text()[-2000:]}")

    def consumer_channel(self) -> grpc.Channel:
        target = f"127.0.0.1:{self.consumer_port}"
        large = [("grpc.max_receive_message_length", 64 << 20)]  # as egs-collector's own consumer verbs
        if self.plaintext:
            return grpc.insecure_channel(target, options=large)
        creds = grpc.ssl_channel_credentials((self.pki.root / "ca.crt").read_bytes())
        return grpc.secure_channel(target, creds, options=large + [("grpc.ssl_target_name_override", "localhost")])

    def stub(self, channel) -> collector_pb2_grpc.ConsumersStub:
        return collector_pb2_grpc.ConsumersStub(channel)

    def agents(self, timeout: float = 5.0) -> collector_pb2.AgentsResponse:
        with self.consumer_channel() as ch:
            return self.stub(ch).Agents(collector_pb2.AgentsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")],
                                        timeout=timeout)

    def stored_markers(self, host: str = "") -> list[int]:
        """The `test_marker` values of every per-second point stored (one per spooled batch)."""
        from store_file import raw_points
        db = self.data / "collector.db"
        if not db.exists():
            return []
        return sorted(int(p.last) for _, p in raw_points(db, "test_marker", host))


# --- agents as processes ----------------------------------------------------------------

class AgentProc(_Process):
    """`drive_agent.py`: an Outbox that spools one batch per marker and logs what is durable."""

    def __init__(self, root: Path, host: str, endpoints: list[str], pki: PKI | None, plaintext: bool = False,
                 cert_name: str | None = None, extra: str = ""):
        self.root, self.host = root, host
        root.mkdir(parents=True, exist_ok=True)
        self.state = root / "state"
        self.spooled_log = root / "spooled.log"
        self.log = root / "agent.log"
        self.config = root / "agent.toml"
        eps = ", ".join(f'"{e}"' for e in endpoints)
        tls = "plaintext = true\n" if plaintext else (
            f'ca = "{pki.root}/ca.crt"\ncert = "{pki.root}/{cert_name or host}.crt"\n'
            f'key = "{pki.root}/{cert_name or host}.key"\nserver_name = "localhost"\n')
        self.config.write_text(f"[stream]\nendpoints = [{eps}]\n{tls}backoff_base = 0.1\nbackoff_max = 0.5\n"
                               f"connect_timeout = 2.0\n{extra}")
        self.proc: subprocess.Popen | None = None

    def start(self, first: int, count: int, rate: float = 50.0, linger: float = 600.0, points: int = 0) -> "AgentProc":
        self.proc = subprocess.Popen([PYTHON, str(DRIVER), "--config", str(self.config), "--state", str(self.state),
                                      "--host", self.host, "--first", str(first), "--count", str(count),
                                      "--rate", str(rate), "--linger", str(linger), "--log", str(self.spooled_log),
                                      "--points", str(points)],
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        return self

    def spooled(self) -> list[int]:
        if not self.spooled_log.exists():
            return []
        return [int(line) for line in self.spooled_log.read_text().split() if line.strip()]

    def status(self) -> dict:
        import json
        path = self.root / "state" / "status.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
