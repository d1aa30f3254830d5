"""`egs-agent top`: the table and --json over fixture procfs and sysfs trees (an amdgpu
process seen through DRM fdinfo), and its bad-usage exits."""
from __future__ import annotations

import json
import os

from agent.cli import main
from agent.workload.cli import drm_gpus, render

AMDGPU = ("drm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\ndrm-client-id:\t9\n"
          "drm-memory-vram:\t{kib} KiB\ndrm-engine-gfx:\t0 ns\n")


def sysfs_tree(root):
    pci = root / "devices" / "pci0000:00" / "0000:03:00.0"
    pci.mkdir(parents=True)
    (pci / "vendor").write_text("0x1002\n")
    drm = root / "class" / "drm"
    drm.mkdir(parents=True)
    (drm / "card0").mkdir()
    (drm / "card0" / "device").symlink_to(pci)
    (drm / "card0-DP-1").mkdir()   # a connector, not a card
    (drm / "renderD128").mkdir()
    return root


def test_drm_gpus_from_sysfs(tmp_path):
    gpus = drm_gpus(str(sysfs_tree(tmp_path / "sys")))
    assert [(g.index, g.uuid, g.pci_bus_id, g.vendor, g.model) for g in gpus] == [
        (0, "pci:0000:03:00.0", "0000:03:00.0", "amd", "card0")]
    assert drm_gpus(str(tmp_path / "nothing")) == []


def test_top_json_and_table_without_a_daemon(tmp_path, proc_tree, capsys):
    sysfs = sysfs_tree(tmp_path / "sys")
    proc_tree.add(321, name="ollama", uid=0, cmdline=["ollama", "serve"], rss_pages=2560,
                  cgroup="0::/system.slice/ollama.service\n",
                  fds={6: ("/dev/dri/renderD128", AMDGPU.format(kib=4 << 20))})
    base = ["top", "--no-daemon", "--interval", "10ms", "--procfs", str(proc_tree.root), "--sysfs", str(sysfs),
            "--kubelet-socket", ""]
    assert main(base + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    p, = doc["gpus"][0]["processes"]
    assert (p["pid"], p["used_memory_bytes"], p["source"], p["command"]) == (321, 4 << 30, "drm-fdinfo", "ollama serve")
    assert p["workload"] == {"workload": "systemd:ollama.service", "workload_kind": "systemd"}
    assert p["sm_percent"] == 0.0 and p["rss_bytes"] == 2560 * os.sysconf("SC_PAGE_SIZE")
    assert main(base + ["--once"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "GPUs: sysfs DRM devices" in lines[0] and "drm-fdinfo ok" in lines[0]
    assert lines[1].split() == ["GPU", "PID", "USER", "WORKLOAD", "GPU-MEM", "SM%", "CPU%", "RSS", "COMMAND"]
    assert lines[2].split() == ["0", "321", "root", "systemd:ollama.service", "4.0", "GiB", "0", "0.0", "10.0",
                                "MiB", "ollama", "serve"]


def test_render_other_unreadable_and_namespaced_rows():
    doc = {"ts": 0, "sources": {"nvml": {"state": "ok", "detail": ""}}, "kubelet": None, "gpus": [
        {"gpu": "0", "model": "H100", "processes": [
            {"pid": 10, "nspid": [10, 1], "user": "alice", "workload": {"workload": "k8s:ml/train-0/trainer"},
             "used_memory_bytes": 1 << 30, "sm_percent": 87.4, "cpu_percent": 103.25, "rss_bytes": 1 << 20,
             "command": "python train.py", "reason": None},
            {"pid": 11, "user": None, "workload": {"workload": "unknown"}, "used_memory_bytes": None,
             "sm_percent": None, "cpu_percent": None, "rss_bytes": None, "command": None,
             "reason": "pid 11: not in /proc"}],
         "other": {"processes": 5, "used_memory_bytes": 2048, "sm_percent": None}},
        {"gpu": "1", "model": "H100", "processes": [], "other": {"processes": 0}}]}
    lines = render(doc, "daemon").splitlines()
    assert lines[2].split()[:4] == ["0", "10", "(1)", "alice"] and "87" in lines[2] and "103.2" in lines[2]
    assert lines[3].split()[1:4] == ["11", "?", "unknown"] and lines[3].endswith("[pid 11: not in /proc]")
    assert "other (5 processes)" in lines[4] and "2.0 KiB" in lines[4]
    assert "(no processes)" in lines[5]
    assert render({"gpus": []}).splitlines()[1] == "no GPU found"


def test_bad_usage_exits_2(capsys):
    assert main(["top", "--no-daemon", "--interval", "soon"]) == 2
    assert "--interval: must be a duration like 30s" in capsys.readouterr().err
    for bad in ("0s", "5ms", "-1s", "nan", "1e300s", "", "99999999999h"):  # the last: past time_t
        assert main(["top", "--no-daemon", f"--interval={bad}"]) == 2, bad
        assert "--interval: must be" in capsys.readouterr().err, bad
    assert main(["top", "--no-daemon", "--top-n", "0"]) == 2


def test_an_absent_daemon_falls_back_to_sysfs_and_says_why(tmp_path, proc_tree, capsys):
    sysfs = sysfs_tree(tmp_path / "sys")
    assert main(["--socket", str(tmp_path / "no.sock"), "top", "--once", "--interval", "10ms", "--procfs",
                 str(proc_tree.root), "--sysfs", str(sysfs), "--kubelet-socket", ""]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "sysfs DRM devices (daemon: egs-agent is not running (no socket at" in first


class _Daemon:
    """A stand-in daemon: the real Agent gRPC service on a Unix socket, answering `doc`."""

    def __init__(self, path, doc):
        from concurrent import futures

        import grpc

        from agent.proto import agent_pb2, agent_pb2_grpc

        outer = self

        class Servicer(agent_pb2_grpc.AgentServicer):
            def Status(self, request, context):
                return agent_pb2.StatusReply(json=json.dumps(outer.doc))

        self.doc = doc
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_AgentServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()


def test_top_uses_the_daemons_gpus_for_its_own_pass(tmp_path, proc_tree, capsys):
    proc_tree.add(321, name="ollama", cgroup="0::/system.slice/ollama.service\n",
                  fds={6: ("/dev/dri/renderD128", AMDGPU.format(kib=1024))})
    sock = tmp_path / "agent.sock"
    daemon = _Daemon(sock, {"gpus": [
        {"index": 3, "uuid": "GPU-amd-3", "vendor": "amd", "name": "MI300X", "pci_bus_id": "0000:03:00.0",
         "state": "ok"},
        {"index": 4, "uuid": "GPU-lost", "vendor": "amd", "name": "MI300X", "pci_bus_id": "0000:04:00.0",
         "state": "lost"}]})
    try:
        assert main(["--socket", str(sock), "top", "--json", "--interval", "10ms", "--procfs",
                     str(proc_tree.root), "--kubelet-socket", ""]) == 0
    finally:
        daemon.server.stop(0)
    doc = json.loads(capsys.readouterr().out)
    g, = doc["gpus"]
    assert (g["gpu"], g["uuid"], g["model"]) == ("3", "GPU-amd-3", "MI300X")
    assert g["processes"][0]["pid"] == 321 and g["processes"][0]["used_memory_bytes"] == 1 << 20


def test_top_shows_the_daemons_own_workloads_when_it_has_them(tmp_path, capsys):
    workloads = {"ts": 0, "top_n": 10, "sources": {"nvml": {"state": "ok", "detail": "", "processes": 1}},
                 "kubelet": None, "gpus": [{"gpu": "0", "uuid": "GPU-0", "vendor": "nvidia", "model": "H100",
                                            "processes": [{"pid": 4242, "user": "alice", "used_memory_bytes": 1 << 30,
                                                           "sm_percent": 87.0, "cpu_percent": 99.0, "rss_bytes": 1 << 20,
                                                           "command": "python train.py", "reason": None,
                                                           "workload": {"workload": "slurm:77.0"}}],
                                            "other": {"processes": 0}, "workloads": []}]}
    sock = tmp_path / "agent.sock"
    daemon = _Daemon(sock, {"gpus": [], "workloads": workloads})
    try:
        assert main(["--socket", str(sock), "top", "--once"]) == 0
    finally:
        daemon.server.stop(0)
    lines = capsys.readouterr().out.splitlines()
    assert "GPUs: daemon" in lines[0] and "nvml ok" in lines[0]
    assert lines[2].split()[:4] == ["0", "4242", "alice", "slurm:77.0"] and lines[2].endswith("python train.py")
