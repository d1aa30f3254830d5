"""Which workload a process belongs to, from `/proc/PID/cgroup` (docs/workloads.md lists every
path shape recognised here, with an example of each).

Both cgroup versions are read: v2's single line (`0::/path`) and v1's one line per hierarchy
(`4:memory:/path`). On a v1 or hybrid host the hierarchies may disagree (Slurm's tasks are in
`/slurm/uid_N/job_J/...` under freezer, cpuset and memory, but still in `slurmd.service` under
name=systemd), so every distinct path is classified and the most specific answer wins:
Kubernetes, then Slurm, then a plain container, then a systemd unit. A path of no known shape
is not an error: the process is then named by its command and user.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("kubernetes", "slurm", "container", "systemd", "process", "unknown", "other")
# A label value's bound, as for the agent's own labels (agent.config.MAX_LABEL_VALUE): unit and
# container names come from whoever made the cgroup.
MAX_LABEL_VALUE = 256

# Pod UIDs are RFC 4122 UUIDs; the systemd cgroup driver writes them with '_' for '-'
# (a '-' inside a slice name means nesting to systemd).
_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# `pod<uid>` (cgroupfs driver) or `kubepods-<qos>-pod<uid>.slice` / `kubepods-pod<uid>.slice`
# (systemd driver), below a `kubepods` cgroup (kind and nested kubelets add a prefix such as
# `kubelet-kubepods-...`).
_K8S_POD = re.compile(rf"(?:^|/)[^/]*kubepods[^/]*/(?:.*/)?(?:[^/]*-)?pod({_UUID})(?:\.slice)?(?=/|$)")
# The container's cgroup directly below the pod's: the bare ID (cgroupfs driver: containerd,
# CRI-O, cri-dockerd) or `<runtime>-<id>.scope` (systemd driver).
_K8S_CONTAINER = re.compile(r"(?:(cri-containerd|crio-conmon|crio|docker|cri-o)-)?([0-9a-f]{64})(?:\.scope)?")
_K8S_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "crio-conmon": "cri-o", "cri-o": "cri-o",
                "docker": "docker"}

# Slurm, cgroup v1 plugin: /slurm/uid_U/job_J/step_S/task_T (`slurm_<node>` with multiple-slurmd).
_SLURM_V1 = re.compile(r"(?:^|/)slurm(?:_[^/]+)?/uid_(\d+)/job_(\d+)(?:/step_([^/]+))?(?:/task_(\d+))?")
# Slurm, cgroup v2 plugin: <slice>/[<node>_]slurmstepd.scope/job_J/step_S/user/task_T (tasks) or
# .../step_S/slurm (the step's slurmstepd); `.../slurmstepd.scope/system` holds the daemons.
_SLURM_V2 = re.compile(r"(?:^|/)(?:[^/]+_)?slurmstepd\.scope/job_(\d+)(?:/step_([^/]+))?(?:/user/task_(\d+))?")

_DOCKER = re.compile(r"(?:^|/)(?:docker/([0-9a-f]{64})|docker-([0-9a-f]{64})\.scope)(?=/|$)")
_PODMAN = re.compile(r"(?:^|/)libpod-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_LXC = re.compile(r"(?:^|/)(?:lxc\.payload\.([^/]+)|lxc/([^/]+))")
_NSPAWN = re.compile(r"(?:^|/)machine-([^/]+)\.scope(?=/|$)")
_BARE_ID = re.compile(r"(?:^|/)([0-9a-f]{64})(?=/|$)")

_UNIT = re.compile(r"^[^/]+\.(?:service|scope)$")
# Units that say nothing about the workload: PID 1's own, login sessions, a user's manager.
_NOT_A_WORKLOAD_UNIT = re.compile(r"^(?:init\.scope|session-[^/]+\.scope|user@\d+\.service)$")


@dataclass(frozen=True)
class Workload:
    """What a process belongs to. `name` is the `workload` label value; the other fields are
    what was learnt on the way (None where not known)."""

    kind: str                          # one of KINDS
    name: str
    pod_uid: str | None = None         # Kubernetes, with '-' (as the API server writes it)
    container_id: str | None = None    # full ID (Kubernetes and plain containers)
    runtime: str | None = None         # containerd | cri-o | docker | podman | lxc | nspawn
    namespace: str | None = None       # Kubernetes, from the kubelet's pod-resources API
    pod: str | None = None
    container: str | None = None
    slurm_job: str | None = None
    slurm_step: str | None = None      # "0", "batch", "extern", "interactive", ...
    unit: str | None = None            # systemd unit
    command: str | None = None
    user: str | None = None
    cgroup: str | None = None          # the path the answer came from

    def labels(self) -> dict[str, str]:
        """The workload labels of its series: workload and workload_kind always; namespace, pod
        and container for a Kubernetes workload the kubelet named."""
        out = {"workload": self.name[:MAX_LABEL_VALUE], "workload_kind": self.kind}
        for key in ("namespace", "pod", "container"):
            value = getattr(self, key)
            if value:
                out[key] = value[:MAX_LABEL_VALUE]
        return out


def parse(text: str) -> list[tuple[str, str, str]]:
    """The lines of /proc/PID/cgroup as (hierarchy id, controllers, path); "0", "" for v2."""
    out = []
    for line in text.splitlines():
        hid, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            out.append((hid, controllers, path))
    return out


def classify_path(path: str) -> Workload | None:
    """The workload a cgroup path names, or None for a path of no known shape."""
    m = _K8S_POD.search(path)
    if m:
        uid = m.group(1).replace("_", "-")
        rest = path[m.end():].lstrip("/").split("/", 1)[0]
        c = _K8S_CONTAINER.fullmatch(rest) if rest else None
        cid = c.group(2) if c else None
        name = f"k8s:pod-{uid}" + (f"/{cid[:12]}" if cid else "")
        return Workload("kubernetes", name, pod_uid=uid, container_id=cid,
                        runtime=_K8S_RUNTIME.get(c.group(1)) if c and c.group(1) else None, cgroup=path)
    m = _SLURM_V2.search(path)
    if m:
        return _slurm(m.group(1), m.group(2), path)
    m = _SLURM_V1.search(path)
    if m:
        return _slurm(m.group(2), m.group(3), path)
    m = _DOCKER.search(path)
    if m:
        return _container("docker", m.group(1) or m.group(2), path)
    m = _PODMAN.search(path)
    if m:
        return _container("podman", m.group(1), path)
    m = _LXC.search(path)
    if m:
        name = m.group(1) or m.group(2)
        return Workload("container", f"lxc:{name}", runtime="lxc", container=name, cgroup=path)
    m = _NSPAWN.search(path)
    if m:
        return Workload("container", f"nspawn:{m.group(1)}", runtime="nspawn", container=m.group(1), cgroup=path)
    m = _BARE_ID.search(path)
    if m:
        return _container(None, m.group(1), path)
    return _systemd(path)


def _slurm(job: str, step: str | None, path: str) -> Workload:
    name = f"slurm:{job}" + (f".{step}" if step else "")
    return Workload("slurm", name, slurm_job=job, slurm_step=step, cgroup=path)


def _container(runtime: str | None, cid: str, path: str) -> Workload:
    return Workload("container", f"{runtime or 'container'}:{cid[:12]}", container_id=cid, runtime=runtime,
                    cgroup=path)


def _systemd(path: str) -> Workload | None:
    parts = [p for p in path.split("/") if p]
    owner = None
    for i, part in enumerate(parts):
        if re.fullmatch(r"user@\d+\.service", part):
            owner = part[:-len(".service")]
            unit_parts = parts[i + 1:]
            break
    else:
        unit_parts = parts
    for part in reversed(unit_parts):
        if _UNIT.match(part):
            if _NOT_A_WORKLOAD_UNIT.match(part):
                return None
            return Workload("systemd", f"systemd:{owner + '/' if owner else ''}{part}", unit=part, cgroup=path)
    return None


_RANK = {"kubernetes": 0, "slurm": 1, "container": 2, "systemd": 3}


def classify(cgroup_text: str) -> Workload | None:
    """The most specific workload any line of a /proc/PID/cgroup names (module docstring), or
    None when no line has a known shape."""
    best = None
    seen = set()
    for _hid, _controllers, path in parse(cgroup_text):
        if path in seen or path in ("", "/"):
            continue
        seen.add(path)
        found = classify_path(path)
        if found is not None and (best is None or _RANK[found.kind] < _RANK[best.kind]):
            best = found
    return best


def process_workload(command: str | None, user: str | None) -> Workload:
    """The fallback: a process named by its command and user (never its PID, so 10,000 runs of
    the same script are one workload, not 10,000 label sets)."""
    command = command or "?"
    user = user or "?"
    return Workload("process", f"cmd:{command}@{user}", command=command, user=user)
