"""The attribution inside the daemon: `[workload]` in the config, the pass as a source after
the GPU source (whose devices it reads), its series in the windows, `status --json`'s
`workloads`, and alarm rules that select by workload labels."""
from __future__ import annotations

import json
import logging

from agent import config
from agent.daemon import Daemon
from agent.native import Backend, Device
from daemon_helpers import FakeGpuCore, write_config

POD = "0123abcd-4567-89ab-cdef-0123456789ab"
CONTAINER = "c" * 64
K8S_CGROUP = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
              f"cri-containerd-{CONTAINER}.scope\n")
FDINFO = ("drm-driver:\tamdgpu\ndrm-client-id:\t11\ndrm-pdev:\t0000:03:00.0\n"
          "drm-memory-vram:\t3145728 KiB\ndrm-engine-gfx:\t0 ns\n")
GPU_LABELS = {"gpu": "0", "uuid": "GPU-amd-0", "vendor": "amd", "model": "Instinct MI210"}


def _daemon(short_dir, proc_tree, extra: str = ""):
    proc_tree.add(100, name="train", cgroup=K8S_CGROUP,
                  fds={5: ("/dev/dri/renderD128", FDINFO)})
    device = Device(index=0, vendor="amd", uuid="GPU-amd-0", name="Instinct MI210", pci_bus_id="0000:03:00.0",
                    state="ok")
    core = FakeGpuCore([device], backends={"amd": Backend("amd", "ok", "", "")})
    path = write_config(short_dir, "[gpu]\nenabled = true\n"
                        f'[workload]\nprocfs = "{proc_tree.root}"\ninterval = "1s"\nkubelet_socket = ""\n' + extra)
    d = Daemon(config.load(path, env={}), config_path=str(path), env={},
               components=("agent.alarms.component:build",), core_factory=lambda s: core)
    return d


def test_the_pass_runs_in_the_daemon_and_its_workloads_are_in_status_and_the_windows(short_dir, proc_tree):
    d = _daemon(short_dir, proc_tree)
    d.start()
    try:
        assert [s.name for s in d.sources] == ["gpu", "host", "workload", "health"]
        d.tick(d.clock() + 2)
        doc = json.loads(d.status_json())
        (gpu,) = doc["workloads"]["gpus"]
        (row,) = gpu["processes"]
        assert row["pid"] == 100 and row["source"] == "drm-fdinfo" and row["used_memory_bytes"] == 3 << 30
        assert row["workload"]["workload_kind"] == "kubernetes" and POD in row["workload"]["workload"]
        assert doc["sources"]["workload"]["state"] == "ok"
        labels = {**GPU_LABELS, **row["workload"]}
        assert d.windows.latest("gpu_workload_memory_used_bytes", labels) == float(3 << 30)
        assert d.windows.latest("gpu_workload_processes", labels) == 1.0
    finally:
        d.stop()


def test_an_alarm_rule_selects_a_workload_by_its_labels(short_dir, proc_tree):
    rules = ('[[alarm]]\nname = "pod-memory"\nmetric = "gpu_workload_memory_used_bytes"\nwindow = "10s"\n'
             'stat = "last"\noperator = ">="\nthreshold = 1e9\ninterval = "1s"\n'
             'labels = { workload_kind = "kubernetes" }\n'
             '[[alarm]]\nname = "slurm-memory"\nmetric = "gpu_workload_memory_used_bytes"\nwindow = "10s"\n'
             'stat = "last"\noperator = ">="\nthreshold = 1e9\ninterval = "1s"\n'
             'labels = { workload_kind = "slurm" }\n')
    d = _daemon(short_dir, proc_tree, rules)
    d.start()
    try:
        now = d.clock()
        for i in range(1, 4):
            d.tick(now + i)
        doc = json.loads(d.status_json())
        fired = [e for e in doc["events"] if e["kind"] == "alarm" and e["data"].get("notify") == "firing"]
        assert [e["data"]["rule"] for e in fired] == ["pod-memory"]
        assert fired[0]["labels"]["workload_kind"] == "kubernetes" and POD in fired[0]["labels"]["workload"]
        assert fired[0]["data"]["value"] == float(3 << 30)
    finally:
        d.stop()


def test_workload_off_means_no_source_and_a_null_document(short_dir, proc_tree):
    d = _daemon(short_dir, proc_tree, "")
    d.stop()
    path = write_config(short_dir, "[gpu]\nenabled = false\n[workload]\nenabled = false\n")
    d = Daemon(config.load(path, env={}), config_path=str(path), env={}, components=())
    d.start()
    try:
        assert "workload" not in [s.name for s in d.sources]
        assert json.loads(d.status_json())["workloads"] is None
    finally:
        d.stop()


def test_a_bad_workload_key_names_file_line_and_key(short_dir):
    path = write_config(short_dir, "[workload]\ntop_n = 0\n")
    try:
        config.load(path, env={})
    except config.ConfigError as e:
        assert "workload.top_n" in str(e) and str(path.name) in str(e)
    else:
        raise AssertionError("top_n = 0 was accepted")


def test_a_reload_that_changes_workload_keys_says_they_take_effect_on_restart(short_dir, caplog):
    path = write_config(short_dir, "[gpu]\nenabled = false\n[workload]\ntop_n = 5\n")
    d = Daemon(config.load(path, env={}), config_path=str(path), env={}, components=())
    d.start()
    try:
        path.write_text(path.read_text().replace("top_n = 5", 'top_n = 7\ninterval = "10s"')
                        .replace("enabled = false", 'enabled = false\nslow_fields = ["fan"]'))
        with caplog.at_level(logging.WARNING, logger="egs-agent"):
            assert d.reload() is True
        (warning,) = [r.getMessage() for r in caplog.records if "takes effect on restart" in r.getMessage()]
        assert "workload.interval" in warning and "workload.top_n" in warning and "workload.procfs" not in warning
        # The core's tiers are set when it starts, like its rates.
        assert "gpu.slow_fields" in warning and "gpu.slow_hz" not in warning
    finally:
        d.stop()
