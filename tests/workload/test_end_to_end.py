"""`egs-agent run` on the simulated NVML that lists a real process the test started in a real
Kubernetes-shaped cgroup: `egs-agent top --json` (from the daemon) names the pod and container,
the user and command, and the GPU memory the library gave; the per-workload series answer
`egs-agent query`."""
from __future__ import annotations

import json
import time

import sim_paths
from daemon_helpers import DaemonProcess, agent_env, cli, write_config

POD = "4f6c1a2b-0000-4000-8000-00000000abcd"
CONTAINER = "e" * 64
UUID = "GPU-8f1c2d3e-0000-4000-8000-0000000000e2"


def test_the_daemon_attributes_a_real_process_in_a_pod_cgroup(short_dir, tmp_path, sim_out, cgroups):
    sleeper = cgroups.sleeper()
    cgroups.put(sleeper.pid, "cpu", f"kubepods/burstable/pod{POD}/{CONTAINER}")
    scenario = tmp_path / "pod.toml"
    scenario.write_text(f'[[gpu]]\nvendor = "nvidia"\nname = "NVIDIA H100 80GB HBM3"\nuuid = "{UUID}"\n'
                        f'[[gpu.processes]]\npid = {sleeper.pid}\nkind = "compute"\nmemory_mib = 4096\nsm = 60\n')
    config = write_config(short_dir, '[workload]\ninterval = "1s"\nkubelet_socket = ""\ndrm_fdinfo = false\n')
    sock = short_dir / "agent.sock"
    env = agent_env(EGS_SIM_SCENARIO=str(scenario), EGS_NVML_LIBRARY=str(sim_paths.NVML_LIB),
                    EGS_AMDSMI_LIBRARY=str(sim_out / "none.so"))
    daemon = DaemonProcess(config, sock, env).wait_ready()
    try:
        deadline, doc = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            out = cli("--socket", str(sock), "top", "--json", env=agent_env())
            assert out.returncode == 0, out.stderr
            doc = json.loads(out.stdout)
            if doc.get("gpus") and doc["gpus"][0]["processes"]:
                break
            time.sleep(0.3)
        (gpu,) = doc["gpus"]
        (row,) = gpu["processes"]
        assert (row["pid"], row["source"], row["used_memory_bytes"]) == (sleeper.pid, "nvml", 4096 << 20)
        assert row["workload"] == {"workload": f"k8s:pod-{POD}/{CONTAINER[:12]}", "workload_kind": "kubernetes"}
        assert (row["command"], row["user"], row["sm_percent"]) == ("sleep 60", "root", 60.0)
        # The series the pass made answer like any other metric.
        query = cli("--socket", str(sock), "query", "gpu_workload_memory_used_bytes", "--window", "10s", "--json",
                    env=agent_env())
        assert query.returncode == 0, query.stderr
        (series,) = json.loads(query.stdout)["series"]
        assert series["labels"] == {"gpu": "0", "uuid": UUID, "vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3",
                                    **row["workload"]}
        assert series["value"] == float(4096 << 20)
    finally:
        daemon.stop()
