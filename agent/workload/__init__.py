"""Which processes and workloads use each GPU (issue 15; docs/workloads.md).

- `records`: the process record (`GpuProcess`), the GPU reference (`GpuRef`) and the interface
  per-process sources implement (`ProcessSource`): the vendor libraries' process lists from the
  C core, and `fdinfo`, the kernel's DRM fdinfo.
- `procfs`: reading one process's files, with exited / hidden / denied named.
- `cgroups`: the workload from /proc/PID/cgroup (Kubernetes, Slurm, containers, systemd units).
- `kubelet`: pod names from the kubelet's pod-resources socket.
- `hostproc`: a process's CPU %, RSS, user and command line (psutil).
- `attribution`: the pass that puts them together, bounded to top_n processes per GPU.
- `metrics`: the per-workload series; `source`: the pass as a daemon source; `settings`: `[workload]`.
- `cli`: `egs-agent top`.
"""
