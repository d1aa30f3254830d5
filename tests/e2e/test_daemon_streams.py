"""The real daemon (`egs-agent run`) with the stream component, over mutual TLS: its 1-second
buckets reach the collector, `egs-agent status --json` shows the stream under "stream", and the
daemon does that without Python's ssl module loaded (gRPC's TLS is its own; see
agent/grpc_import.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def _stored_metrics(db: Path, host: str) -> set[str]:
    from store_file import raw_points
    return {p.metric for _, p in raw_points(db, None, host)} if db.exists() else set()


def _mapped_libraries(pid: int) -> set[str]:
    return {Path(line.split()[-1]).name for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if "/" in line}


def test_daemon_buckets_reach_the_collector_over_mutual_tls(collector_factory, pki, wait):
    col = collector_factory().start()
    cert, key = pki.issue("daemon-host", "daemon-host")
    short = Path(tempfile.mkdtemp(prefix="egsc-", dir="/tmp"))  # unix socket paths must be short
    try:
        config = short / "agent.toml"
        config.write_text(f'[agent]\nhost_id = "daemon-host"\nstate_dir = "{short / "state"}"\nlabels = {{rack = "r1"}}\n'
                          f'[api]\nsocket = "{short / "a.sock"}"\n[gpu]\nenabled = false\n'
                          f'[stream]\nendpoints = ["127.0.0.1:{col.ingest_port}"]\nca = "{pki.root / "ca.crt"}"\n'
                          f'cert = "{cert}"\nkey = "{key}"\nserver_name = "localhost"\n')
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "EGS_SOCKET")}
        env["PYTHONPATH"] = str(REPO)
        daemon = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd=REPO,
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(short / "daemon.log", "wb"))
        try:
            db = col.data / "collector.db"
            got = wait(lambda: _stored_metrics(db, "daemon-host"), timeout=40, what="the daemon's first batch")
            wait(lambda: "cpu_utilization_percent" in _stored_metrics(db, "daemon-host"), timeout=40,
                 what="host figures at the collector")
            assert "stream_spool_backlog_records" in _stored_metrics(db, "daemon-host") | got
            out = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(short / "a.sock"), "status", "--json"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            stream = json.loads(out.stdout)["stream"]
            assert stream["connected"] and stream["endpoint"] == f"127.0.0.1:{col.ingest_port}"
            assert stream["dropped"] == 0
            assert stream["interval_s"] == 5.0  # the default: buckets go five seconds to a batch
            libs = _mapped_libraries(daemon.pid)
            assert not any(name.startswith(("libssl.", "libcrypto.", "_ssl.")) for name in libs), sorted(libs)
            assert any(name.startswith("cygrpc") for name in libs)  # the check would see a library
            (agent,) = [a for a in col.agents().agents if a.host == "daemon-host"]
            assert dict(agent.labels) == {"rack": "r1"}
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, (short / "daemon.log").read_text()[-3000:]
    finally:
        shutil.rmtree(short, ignore_errors=True)
