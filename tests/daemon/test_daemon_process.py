"""`egs-agent run` as a real process: the CLI against it on a simulated scenario, no GPU
library at all, SIGHUP with a bad file, SIGTERM, sd_notify, journald logging, non-root."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import sim_paths
from daemon_helpers import PYTHON, ROOT, agent_env, cli, write_config


def cli_argv(*args):
    return [PYTHON, "-m", "agent.cli", *args]


def sim_env(scenario: str, **extra):
    return agent_env(EGS_SIM_SCENARIO=sim_paths.scenario(scenario),
                     EGS_NVML_LIBRARY=sim_paths.NVML_LIB, EGS_AMDSMI_LIBRARY=sim_paths.AMDSMI_LIB, **extra)


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_cli_says_in_one_line_that_the_daemon_is_not_running_and_exits_1(short_dir):
    sock = str(short_dir / "none.sock")
    for verb in (["status"], ["status", "--json"], ["query", "gpu_power_watts"], ["watch", "--count", "1"]):
        result = cli("--socket", sock, *verb)
        assert result.returncode == 1, (verb, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "not running" in lines[0] and sock in lines[0] and "egs-agent run" in lines[0]
    # --socket after the verb, and $EGS_SOCKET, name the same socket
    after = cli("status", "--socket", sock)
    assert after.returncode == 1 and sock in after.stderr
    via_env = cli("status", env=agent_env(EGS_SOCKET=sock))
    assert via_env.returncode == 1 and sock in via_env.stderr


def test_cli_against_a_daemon_on_the_simulated_demo_scenario(short_dir, start_daemon, sim_out):
    config = write_config(short_dir)
    sock = short_dir / "agent.sock"
    d = start_daemon(config, sock, env=sim_env("two-nvidia-one-amd", EGS_SIMULATED="1"))
    env = agent_env()

    def gpus_with_values():
        doc = json.loads(cli("--socket", str(sock), "status", "--json", env=env).stdout or "{}")
        gpus = doc.get("gpus", [])
        return doc if gpus and all(g["metrics"]["gpu_temperature_celsius"] is not None for g in gpus) else None

    doc = wait_for(gpus_with_values, what="GPU figures in status")
    assert doc["simulated"] is True
    names = [g["name"] for g in doc["gpus"]]
    assert names.count("Tesla P100-PCIE-16GB") == 2
    for g in doc["gpus"]:
        assert set(g) >= {"index", "uuid", "vendor", "name", "state", "metrics"}
        assert g["state"] == "ok" and g["uuid"].startswith("GPU-") or g["vendor"] == "amd"
    assert doc["backends"]["nvidia"]["state"] == "ok"
    assert {"host", "gpus", "backends", "alarms", "nic"} <= set(doc)

    table = cli("--socket", str(sock), "status", env=env)
    assert table.returncode == 0
    assert table.stdout.startswith("SIMULATED")
    assert re.search(r"\|\s+0 \| Tesla P100-PCIE-16GB\s+\| ok\s+\|\s+\d+C \|", table.stdout), table.stdout
    assert "Host: cpu" in table.stdout

    def query():
        q = cli("--socket", str(sock), "query", "gpu_power_watts", "--window", "10s", "--stat", "max",
                "--label", "gpu=1", "--json", env=env)
        assert q.returncode == 0, q.stderr
        reply = json.loads(q.stdout)
        # more samples than seconds in the window: every sample of the driver's power buffer
        # (20 a second on the simulator) is folded in, not one a second
        return reply if reply["series"] and reply["series"][0]["count"] > 20 else None

    reply = wait_for(query, what="a 10 s window with more than 20 samples")
    assert reply["simulated"] and reply["unit"] == "watts" and reply["window_seconds"] == 10
    assert [s["labels"]["gpu"] for s in reply["series"]] == ["1"]
    assert 0 < reply["series"][0]["value"] < 1000

    bad = cli("--socket", str(sock), "query", "gpu_temperature_celsius", "--window", "2h", env=env)
    assert bad.returncode == 2 and "outside what is kept" in bad.stderr

    w = cli("--socket", str(sock), "watch", "--count", "2", "--json", env=env)
    assert w.returncode == 0, w.stderr
    updates = [json.loads(line) for line in w.stdout.splitlines()]
    assert len(updates) == 2 and all(u["simulated"] for u in updates)
    assert any(p["metric"] == "gpu_utilization_percent" for p in updates[-1]["points"])

    view = cli("--socket", str(sock), "watch", "--count", "2", "--history", "20", env=env)
    assert view.returncode == 0, view.stderr
    assert "SIMULATED" in view.stdout
    assert re.search(r"GPU 0 util [▁▂▃▄▅▆▇█ ]+ \d", view.stdout), view.stdout

    assert "SIMULATED" in d.log()
    assert d.stop() == 0


def test_no_gpu_library_at_all_runs_on_host_metrics_and_says_so(short_dir, start_daemon, sim_out):
    config = write_config(short_dir)
    sock = short_dir / "agent.sock"
    env = agent_env(EGS_NVML_LIBRARY="/nonexistent/libnvidia-ml.so.1",
                    EGS_AMDSMI_LIBRARY="/nonexistent/libamd_smi.so")
    d = start_daemon(config, sock, env=env)
    doc = json.loads(cli("--socket", str(sock), "status", "--json").stdout)
    assert doc["gpus"] == []
    assert doc["backends"]["nvidia"]["state"] == "unavailable"
    assert "/nonexistent/libnvidia-ml.so.1" in doc["backends"]["nvidia"]["detail"]
    assert doc["backends"]["amd"]["state"] == "unavailable"
    assert doc["host"]["memory_used_percent"] is not None
    assert doc["simulated"] is False
    assert "no GPU library found" in d.log()
    table = cli("--socket", str(sock), "status").stdout
    assert "no GPUs" in table and "SIMULATED" not in table
    assert d.stop() == 0


def test_sighup_with_a_bad_file_keeps_serving_on_the_old_config(short_dir, start_daemon):
    config = write_config(short_dir, "[gpu]\nenabled = false\n")
    sock = short_dir / "agent.sock"
    d = start_daemon(config, sock)
    good = config.read_text()
    config.write_text(good + "[host]\ninterval = 'often'\n")
    d.signal(signal.SIGHUP)
    line = wait_for(lambda: next((l for l in d.log().splitlines() if "reload rejected" in l), None),
                    what="the reload rejection in the log")
    assert f"{config}:8: host.interval" in line
    assert cli("--socket", str(sock), "status", "--json").returncode == 0
    config.write_text(good.replace("enabled = false", "enabled = false\n[windows]\nsizes = ['10s']"))
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in d.log(), what="the good reload")
    wait_for(lambda: json.loads(cli("--socket", str(sock), "status", "--json").stdout)["agent"]["windows"]["sizes_s"] == [10],
             what="the new windows in status")
    assert d.stop() == 0
    assert "stopped" in d.log() and not sock.exists()


def test_sd_notify_ready_status_watchdog_and_stopping(short_dir, start_daemon):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_dir / "notify"))
    notify.settimeout(20)
    config = write_config(short_dir, "[gpu]\nenabled = false\n")
    sock = short_dir / "agent.sock"
    env = agent_env(NOTIFY_SOCKET=short_dir / "notify", WATCHDOG_USEC=600000, JOURNAL_STREAM="8:1234")
    d = start_daemon(config, sock, env=env, ready=False)
    messages = []
    while not any(m.startswith("READY=1") for m in messages):
        messages.append(notify.recv(4096).decode())
    assert sock.exists(), "READY=1 only once the socket is bound"
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=" in ready and "GPUs" in ready
    while "WATCHDOG=1" not in messages:
        messages.append(notify.recv(4096).decode())
    d.signal(signal.SIGTERM)
    while "STOPPING=1" not in messages:
        messages.append(notify.recv(4096).decode())
    assert d.proc.wait(15) == 0
    notify.close()
    # under journald: no timestamps, a syslog priority prefix per line
    lines = d.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>", l) for l in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:", l) for l in lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the nobody user")
def test_runs_as_a_non_root_user(short_dir, start_daemon):
    os.chown(short_dir, 65534, 65534)
    config = write_config(short_dir, "[gpu]\nenabled = false\n")
    sock = short_dir / "agent.sock"
    d = start_daemon(config, sock, prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                           "--inh-caps=-all", "--bounding-set=-all"])
    status = {}
    for line in open(f"/proc/{d.proc.pid}/status"):
        key, _, value = line.partition(":")
        status[key] = value.split()
    assert status["Uid"][0] == "65534" and status["CapEff"][0] == "0000000000000000"
    assert os.stat(sock).st_uid == 65534
    doc = json.loads(cli("--socket", str(sock), "status", "--json").stdout)
    assert doc["host"]["memory_used_percent"] is not None
    assert (short_dir / "state").stat().st_uid == 65534
    assert d.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as another user")
def test_a_user_outside_the_socket_group_is_told_permission_denied(short_dir, start_daemon):
    config = write_config(short_dir, "[gpu]\nenabled = false\n")
    sock = short_dir / "agent.sock"
    start_daemon(config, sock)  # root:root, mode 0660
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "--inh-caps=-all", "--bounding-set=-all",
                             *cli_argv("--socket", str(sock), "status")],
                            cwd=ROOT, env=agent_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "permission denied" in result.stderr and str(sock) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_watch_on_a_terminal_redraws_in_place(short_dir, start_daemon):
    import pty

    config = write_config(short_dir, "[gpu]\nenabled = false\n")
    sock = short_dir / "agent.sock"
    start_daemon(config, sock)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cli_argv("--socket", str(sock), "watch", "--count", "2"), cwd=ROOT, env=agent_env(),
                            stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    assert proc.wait(30) == 0, proc.stderr.read()
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the terminal's other end is closed and drained
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert output.count(b"\x1b[H\x1b[2J") == 2, output[:500]
    assert b"Host: cpu" in output


def test_status_table_shows_a_lost_gpu_and_its_health_reason(short_dir, start_daemon, sim_out):
    config = write_config(short_dir, "[gpu]\namd = false\n")
    sock = short_dir / "agent.sock"
    start_daemon(config, sock, env=sim_env("nvidia-lost"))

    def lost_row():
        out = cli("--socket", str(sock), "status").stdout
        return out if re.search(r"\|\s+1 \| Tesla P100-PCIE-16GB\s+\| lost\s+\|\s+n/a \|", out) else None

    table = wait_for(lost_row, what="GPU 1 shown lost")
    assert re.search(r"\|\s+0 \| Tesla P100-PCIE-16GB\s+\| ok\s+\|\s+60C \|", table), table
    # the health component (built with alarms by agent.alarms.component:build) gives the reason
    assert re.search(r"^GPU 1 lost: ", table, re.M), table
