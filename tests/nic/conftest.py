"""Fixtures for the NIC tuning tests: network namespaces with veth pairs, the real `ethtool -l`
as the independent reader, and a way to run the agent's code inside a namespace.

Code under test runs in `ip netns exec NS ...` subprocesses, which also remount /sys for the
namespace so the veth's queue files are visible. Every namespace is deleted by the fixture's
finalizer, pass or fail, and carries the pid in its name so parallel runs cannot collide.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RUNNER = Path(__file__).with_name("ns_runner.py")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
_counter = itertools.count()


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (make system-deps installs it)"
    probe = f"egsprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        veth = subprocess.run(["ip", "-n", probe, "link", "add", "p0", "numrxqueues", "2", "numtxqueues", "2",
                               "type", "veth", "peer", "name", "p1"], capture_output=True, text=True)
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        setl = subprocess.run(["ip", "netns", "exec", probe, "ethtool", "-L", "p0", "rx", "1", "tx", "1"],
                              capture_output=True, text=True)
        if setl.returncode != 0:
            return f"this kernel's veth cannot change channels: {setl.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_REASON: list[str | None] = []


def netns_skip_reason() -> str | None:
    if not _REASON:
        _REASON.append(_netns_unavailable())
    return _REASON[0]


class Netns:
    """One network namespace; `veth()` adds pairs, `run()` runs a command inside."""

    def __init__(self, name: str):
        self.name = name

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, text=True)

    def veth(self, name: str, queues: int, peer: str | None = None, current: int | None = None) -> str:
        """A veth pair whose `name` end offers `queues` rx and tx queues; `current` sets the count."""
        peer = peer or name + "p"
        self.ip("link", "add", name, "numrxqueues", str(queues), "numtxqueues", str(queues),
                "type", "veth", "peer", "name", peer, "numrxqueues", str(queues), "numtxqueues", str(queues))
        self.ip("link", "set", name, "up")
        self.ip("link", "set", peer, "up")
        if current is not None:
            self.ethtool_set(name, current)
        return name

    def run(self, argv: list[str], as_nobody: bool = False, **kw) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.name] + (NOBODY if as_nobody else [])
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run(prefix + argv, capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=kw.pop("timeout", 30), **kw)

    def popen(self, argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.Popen(["ip", "netns", "exec", self.name] + argv, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)

    def ethtool_set(self, dev: str, n: int) -> None:
        r = self.run(["ethtool", "-L", dev, "rx", str(n), "tx", str(n)])
        assert r.returncode == 0, r.stderr

    def ethtool_l(self, dev: str) -> dict[str, dict[str, int]]:
        """The real `ethtool -l`, parsed: {"max": {...}, "current": {...}}, n/a as 0."""
        r = self.run(["ethtool", "-l", dev])
        assert r.returncode == 0, r.stderr
        out: dict[str, dict[str, int]] = {}
        section = None
        for line in r.stdout.splitlines():
            if line.startswith("Pre-set maximums"):
                section = out.setdefault("max", {})
            elif line.startswith("Current hardware settings"):
                section = out.setdefault("current", {})
            elif section is not None and ":" in line:
                key, value = (x.strip() for x in line.split(":", 1))
                section[key.lower()] = 0 if value == "n/a" else int(value)
        return out

    def read(self, path: str) -> str:
        r = self.run(["cat", path])
        assert r.returncode == 0, r.stderr
        return r.stdout

    def channels(self, dev: str, set_to: int | None = None, as_nobody: bool = False) -> dict:
        """The agent's own ethtool module in the namespace: get (or set, then read back) channels.
        Returns the channels as a dict, or {"error": class name, "errno": n, "message": text}."""
        code = (
            "import json, sys\n"
            "from agent.nic import ethtool\n"
            "try:\n"
            f"    ch = ethtool.get_channels({dev!r})\n"
            f"    if {set_to!r} is not None:\n"
            f"        ch = ethtool.set_channels({dev!r}, ch.with_queues({set_to!r}))\n"
            "    print(json.dumps(ch.to_dict()))\n"
            "except ethtool.EthtoolError as e:\n"
            "    print(json.dumps({'error': type(e).__name__, 'errno': e.errno, 'message': str(e)}))\n")
        r = self.run([PYTHON, "-c", code], as_nobody=as_nobody)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def nic(self, *args: str, as_nobody: bool = False) -> tuple[int, dict]:
        """`egs-agent nic ARGS --json` inside the namespace: (exit code, report)."""
        config = ["--config", "/dev/null"] if "--config" not in args else []
        r = self.run([PYTHON, "-m", "agent.cli", "nic", *args, "--json", *config], as_nobody=as_nobody)
        assert r.stdout, f"no report (rc {r.returncode}): {r.stderr}"
        return r.returncode, json.loads(r.stdout)


@pytest.fixture
def netns(request):
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"egsnic{os.getpid()}x{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", name], capture_output=True))
    return Netns(name)


class Runner:
    """The NIC component running in a namespace (ns_runner.py), driven one pass at a time."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def check(self) -> dict:
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"runner died: {self.proc.stderr.read()}"
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def component_in(request, tmp_path):
    """start(netns, config_text) -> Runner; stopped by the finalizer."""
    runners: list[Runner] = []

    def start(ns: Netns, config_text: str) -> Runner:
        config = tmp_path / f"agent{len(runners)}.toml"
        config.write_text(config_text)
        runner = Runner(ns.popen([PYTHON, str(RUNNER), str(config)]))
        runners.append(runner)
        return runner

    yield start
    for r in runners:
        r.close()


class Tree:
    """A procfs/sysfs fixture tree: CPUs, routes, NICs with queues and MSI vectors, processes."""

    def __init__(self, root: Path, cpus: str = "0-3"):
        self.procfs, self.sysfs = root / "proc", root / "sys"
        self._interrupts: dict[int, str] = {}
        from agent.nic.affinity import parse_cpu_list
        self._ncpu = len(parse_cpu_list(cpus))
        self.write("sys", "devices/system/cpu/online", cpus + "\n")
        (self.procfs / "net").mkdir(parents=True)
        self._flush_interrupts()

    def write(self, base: str, rel: str, text: str) -> Path:
        path = (self.procfs if base == "proc" else self.sysfs) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def route(self, text: str) -> None:
        self.write("proc", "net/route", text)

    def nic(self, name: str, tx_queues: int, irqs: dict[int, str] | None = None,
            vectors_on_parent: bool = False, xps: bool = True) -> None:
        """A NIC with tx queues (xps_cpus 0) and MSI vectors named in /proc/interrupts
        (affinity all CPUs). `vectors_on_parent`: the virtio layout, vectors on the PCI parent."""
        for q in range(tx_queues):
            folder = self.sysfs / "class/net" / name / "queues" / f"tx-{q}"
            folder.mkdir(parents=True)
            if xps:
                (folder / "xps_cpus").write_text("0\n")
        if irqs:
            pci = self.sysfs / "devices/pci0000:00" / f"{name}-pci"
            device = pci / "virtio0" if vectors_on_parent else pci
            device.mkdir(parents=True, exist_ok=True)
            (self.sysfs / "class/net" / name / "device").symlink_to(device)
            for irq, label in irqs.items():
                (pci / "msi_irqs").mkdir(exist_ok=True)
                (pci / "msi_irqs" / str(irq)).write_text("msix\n")
                self.write("proc", f"irq/{irq}/smp_affinity_list", f"0-{self._ncpu - 1}\n")
                self._interrupts[irq] = label
        self._flush_interrupts()

    def interrupt(self, irq: int, label: str) -> None:
        """An interrupt named in /proc/interrupts but not an MSI vector of any NIC here."""
        self.write("proc", f"irq/{irq}/smp_affinity_list", f"0-{self._ncpu - 1}\n")
        self._interrupts[irq] = label
        self._flush_interrupts()

    def process(self, pid: int, comm: str) -> None:
        self.write("proc", f"{pid}/comm", comm + "\n")

    def _flush_interrupts(self) -> None:
        header = "".join(f"       CPU{i}" for i in range(self._ncpu))
        lines = [header] + [f"{irq:>4}:" + "          0" * self._ncpu + f"  PCI-MSIX-0000:00:03.0  1-edge  {label}"
                            for irq, label in sorted(self._interrupts.items())]
        lines.append(" NMI:" + "          0" * self._ncpu + "   Non-maskable interrupts")
        self.write("proc", "interrupts", "\n".join(lines) + "\n")

    def affinity(self, irq: int) -> str:
        return (self.procfs / "irq" / str(irq) / "smp_affinity_list").read_text().strip()

    def xps(self, name: str, q: int) -> str:
        return (self.sysfs / "class/net" / name / "queues" / f"tx-{q}" / "xps_cpus").read_text().strip()

    def settings(self, **overrides):
        """A `[nic]` section pointed at this tree, as `agent.config.parse` would give it."""
        from agent import config
        cfg = config.parse("")
        nic = cfg.nic
        nic.procfs, nic.sysfs = str(self.procfs), str(self.sysfs)
        for key, value in overrides.items():
            assert hasattr(nic, key), key
            setattr(nic, key, value)
        return nic


@pytest.fixture
def tree(tmp_path) -> Tree:
    return Tree(tmp_path)
