"""The daemon component in a network namespace (ns_runner.py), one pass per check: drift by
an outside `ethtool -L` detected and undone in apply mode, only reported in verify mode, an
interface deleted mid-run, and the instance type learnt from a metadata server."""
import sys
import time

import pytest

pytestmark = pytest.mark.root  # network namespaces, ethtool -L


def _config(mode: str, instance_type: str = "ecs.ga1.14xlarge", extra: str = "") -> str:
    return (f'[nic]\nmode = "{mode}"\ninstance_type = "{instance_type}"\ninterfaces = ["va"]\n'
            f"check_interval = 3600\n{extra}")


def _row(answer: dict) -> dict:
    return answer["status"]["interfaces"][0]


def test_apply_mode_detects_outside_drift_counts_it_and_undoes_it(netns, component_in):
    netns.veth("va", 4, current=1)
    runner = component_in(netns, _config("apply"))
    first = runner.check()
    assert _row(first)["state"] == "applied" and netns.ethtool_l("va")["current"]["rx"] == 4

    netns.ethtool_set("va", 2)  # someone else's `ethtool -L`
    second = runner.check()
    row = _row(second)
    assert row["state"] == "applied" and row["drifts"]["channels"] == 1
    assert netns.ethtool_l("va")["current"]["rx"] == 4
    drift = [e for e in second["events"] if e["data"].get("what") == "drift"]
    assert drift and drift[0]["kind"] == "nic" and drift[0]["labels"]["nic"] == "va"
    assert drift[0]["data"] == {"what": "drift", "part": "channels", "queues": 2, "required": 4,
                                "reapplying": True}
    assert second["metrics"]["nic_queue_drifts_total{nic=va}"] == 1.0
    assert second["metrics"]["nic_queues_current{nic=va}"] == 4.0
    assert second["metrics"]["nic_queues_required{nic=va}"] == 4.0

    third = runner.check()
    assert _row(third)["drifts"]["channels"] == 1 and not [e for e in third["events"]
                                                            if e["data"].get("what") == "drift"]


def test_apply_mode_undoes_outside_xps_changes_as_drift(netns, component_in):
    netns.veth("va", 4, current=1)
    runner = component_in(netns, _config("apply", "ecs.ga1.4xlarge"))
    assert _row(runner.check())["affinity"]["xps"]["state"] in ("applied", "ok")
    want = netns.read("/sys/class/net/va/queues/tx-0/xps_cpus")
    r = netns.run(["sh", "-c", "echo 0 > /sys/class/net/va/queues/tx-0/xps_cpus"])
    assert r.returncode == 0, r.stderr
    row = _row(runner.check())
    assert row["drifts"]["xps"] == 1 and row["affinity"]["xps"]["state"] == "applied"
    assert netns.read("/sys/class/net/va/queues/tx-0/xps_cpus") == want


def test_verify_mode_reports_drift_and_changes_nothing(netns, component_in):
    netns.veth("va", 4)
    runner = component_in(netns, _config("verify", extra="xps = false\n"))
    assert _row(runner.check())["state"] == "ok"
    netns.ethtool_set("va", 2)
    answer = runner.check()
    row = _row(answer)
    assert row["state"] == "mismatch" and row["drifts"]["channels"] == 1
    assert any(e["data"] == {"what": "drift", "part": "channels", "queues": 2, "required": 4, "reapplying": False}
               for e in answer["events"])
    assert netns.ethtool_l("va")["current"]["rx"] == 2
    assert answer["status"]["state"] == "attention"


def test_interface_deleted_mid_run_is_reported_gone_and_reapplied_when_back(netns, component_in):
    netns.veth("va", 4, current=1)
    runner = component_in(netns, _config("apply"))
    assert _row(runner.check())["state"] == "applied"
    netns.ip("link", "del", "va")
    answer = runner.check()
    assert _row(answer)["state"] == "gone" and "no such interface" in _row(answer)["detail"]
    assert any(e["data"].get("to") == "gone" for e in answer["events"])
    netns.veth("va", 4, current=1)  # hot-plugged back, at the default single queue pair
    back = runner.check()
    assert _row(back)["state"] == "applied" and netns.ethtool_l("va")["current"]["rx"] == 4


def test_instance_type_from_a_metadata_server_drives_apply(netns, component_in, tmp_path):
    netns.ip("link", "set", "lo", "up")
    served = tmp_path / "meta" / "latest" / "meta-data" / "instance"
    served.mkdir(parents=True)
    (served / "instance-type").write_text("ecs.gn5-c8g1.8xlarge\n")
    server = netns.popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                          str(tmp_path / "meta"), "18765"])
    try:
        netns.veth("va", 4, current=1)
        wait_listening = ("import socket, time\n"
                          "for _ in range(200):\n"
                          "    try:\n"
                          "        socket.create_connection(('127.0.0.1', 18765), 1).close(); break\n"
                          "    except OSError:\n"
                          "        time.sleep(0.05)\n")
        assert netns.run([sys.executable, "-c", wait_listening]).returncode == 0
        config = ('[nic]\nmode = "apply"\ninterfaces = ["va"]\ncheck_interval = 3600\nmetadata_enabled = true\n'
                  'metadata_url = "http://127.0.0.1:18765/latest/meta-data/instance/instance-type"\n'
                  'metadata_timeout = 1.0\n')
        runner = component_in(netns, config)
        for _ in range(50):
            answer = runner.check()
            if answer["status"]["requirement"]["state"] != "pending":
                break
            time.sleep(0.05)
        req = answer["status"]["requirement"]
        assert (req["instance_type"], req["source"], req["required"]) == ("ecs.gn5-c8g1.8xlarge", "metadata", 3)
        assert _row(answer)["state"] in ("applied", "ok")
        assert netns.ethtool_l("va")["current"]["rx"] == 3
    finally:
        server.kill()
        server.wait()
