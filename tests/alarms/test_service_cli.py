"""The Alarms gRPC service on a Unix socket, driven through the real CLI verbs."""
from __future__ import annotations

import gzip
import json
from concurrent import futures

import grpc
import pytest

from agent import cli
from agent.alarms.service import add_to_server
from alarm_helpers import Daemonish


@pytest.fixture
def served(tmp_path):
    d = Daemonish(tmp_path)
    d.run(12, {0: 85.0, 1: 40.0})
    d.recorder.recorder._worker.submit(lambda: None).result()
    socket = str(tmp_path / "agent.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_to_server(server, d.alarms, d.recorder)
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    yield d, socket
    server.stop(0).wait()
    d.stop()


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_alarms_json_lists_rules_states_and_health(served, capsys):
    d, socket = served
    rc, out, _ = run_cli(capsys, "--socket", socket, "alarms", "--json")
    doc = json.loads(out)
    assert rc == 0
    assert {r["name"] for r in doc["rules"]} == {"gpu-hot", "gpu-lost", "gpu-critical-xid", "gpu-health-failed",
                                                 "gpu-health-degraded"}
    hot = {s["labels"]["gpu"]: s["state"] for s in doc["states"] if s["rule"] == "gpu-hot"}
    assert hot == {"0": "alarm", "1": "ok"}
    assert [g["state"] for g in doc["health"]] == ["ok", "ok"]


def test_alarms_table_puts_the_alarm_first(served, capsys):
    _, socket = served
    rc, out, _ = run_cli(capsys, "--socket", socket, "alarms", "--active")
    rows = out.splitlines()
    assert rc == 0 and rows[0].startswith("RULE")
    assert rows[1].split()[:4] == ["gpu-hot", "GPU", "0", "alarm"]
    assert "health GPU 1: ok" in out


def test_record_then_list_and_read_it_back(served, capsys, tmp_path):
    d, socket = served
    rc, out, _ = run_cli(capsys, "--socket", socket, "record", "--gpu", "1", "--seconds", "4", "--json")
    header = json.loads(out)
    assert rc == 0 and header["gpus"] == [1] and header["samples"] == 400
    rc, out, _ = run_cli(capsys, "--socket", socket, "recordings", "--json")
    ids = [h["id"] for h in json.loads(out)["recordings"]]
    assert header["id"] in ids and len(ids) == 2  # the alarm's and the on-demand one
    rc, out, _ = run_cli(capsys, "--socket", socket, "recordings", header["id"], "--json")
    rec = json.loads(out)
    assert rc == 0 and len(rec["data"][0]["timestamps"]) == 400
    rc, out, _ = run_cli(capsys, "--socket", socket, "recordings", header["id"])
    assert "GPU 1: 400 samples (100 Hz)" in out and "gpu_temperature_celsius" in out
    target = tmp_path / "copy.jsonl.gz"
    rc, _, _ = run_cli(capsys, "--socket", socket, "recordings", header["id"], "--output", str(target))
    assert rc == 0 and json.loads(gzip.decompress(target.read_bytes()).splitlines()[0])["id"] == header["id"]


def test_errors_are_one_line_with_exit_1(served, capsys):
    _, socket = served
    rc, _, err = run_cli(capsys, "--socket", socket, "record", "--gpu", "9", "--seconds", "1")
    assert rc == 1 and "no such GPU [9]" in err
    rc, _, err = run_cli(capsys, "--socket", socket, "recordings", "20231114T221500Z-nothing-1")
    assert rc == 1 and "no recording" in err
    rc, _, err = run_cli(capsys, "--socket", socket + ".missing", "alarms")
    assert rc == 1 and "not running" in err and len(err.strip().splitlines()) == 1
