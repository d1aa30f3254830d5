"""Helpers of the /metrics and OTLP tests (imported as `prometheus.scrapes`: tests/ is on the
path): the running agent, a scrape, the text parser, promtool."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import sim_paths
from daemon_helpers import DaemonProcess, agent_env, cli


class Agent:
    """A running `egs-agent run` with /metrics on `port`."""

    def __init__(self, proc: DaemonProcess, port: int, socket, env: dict):
        self.proc, self.port, self.socket, self.env = proc, port, socket, env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def status(self) -> dict:
        result = cli("--socket", str(self.socket), "status", "--json", env=self.env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def query(self, metric: str, window: str, stat: str, **labels) -> float | None:
        args = ["--socket", str(self.socket), "query", metric, "--window", window, "--stat", stat, "--json"]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        result = cli(*args, env=self.env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_ticks(self, ticks: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            doc = self.status()
            if doc["agent"]["ticks"] >= ticks or time.monotonic() > deadline:
                return doc
            time.sleep(0.2)


def scrape(url: str, accept: str | None = None, auth: tuple[str, str] | None = None,
           context: ssl.SSLContext | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    import base64
    headers = {}
    if accept:
        headers["Accept"] = accept
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def parse_text(body: bytes) -> dict[tuple[str, frozenset], float]:
    """(name, labels) -> value of a scrape, with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sim_env(scenario: str) -> dict:
    return agent_env(EGS_NVML_LIBRARY=sim_paths.NVML_LIB, EGS_AMDSMI_LIBRARY=sim_paths.AMDSMI_LIB,
                     EGS_SIM_SCENARIO=sim_paths.scenario(scenario))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's `prometheus` package; `make system-deps`)")
    return path


def promtool_check(body: bytes) -> tuple[int, str]:
    result = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
    return result.returncode, (result.stdout + result.stderr).decode()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash made by the system's libcrypt (cost 4: fast, still bcrypt)."""
    import ctypes
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    return lib.crypt(password.encode(), b"$2b$04$abcdefghijklmnopqrstuu").decode()
