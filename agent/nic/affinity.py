"""Spread a NIC's queue interrupts over the online CPUs and set XPS to match.

Queue i's interrupt goes to CPU i (modulo the CPU count), and transmit packet steering sends
the traffic of every CPU to the queue whose interrupt that CPU serves (CPUs beyond the queue
count are dealt round-robin), so a packet is sent and completed on the same CPU.

Sources (both roots configurable, so tests use fixture trees):
- queue -> IRQ: the device's MSI vectors in `<sysfs>/class/net/DEV/device/msi_irqs/` (virtio_net:
  on the parent PCI device, one directory up), named in `<procfs>/interrupts` (`virtio0-input.0`,
  `eth0-Tx-Rx-0`, `mlx5_comp0@pci:...`, `gve-ntfy-blk0@pci:...`). Without MSI vectors (veth,
  Xen), names starting with `DEV-` are used; a virtual NIC usually has none and only XPS applies.
- `<procfs>/irq/N/smp_affinity_list` and `<sysfs>/class/net/DEV/queues/tx-N/xps_cpus`.

irqbalance rewrites interrupt affinity every few seconds; fighting it would move interrupts back
and forth, so while it runs the IRQ half is left to it and reported as such. It never touches
XPS, so XPS is still set.

Drivers reset affinity when they re-request their interrupts (link up, channel change), so the
manager runs this again after every channel change.

In apply mode every file is checked for write access first, written or not: a sandbox that
forbids the write (agent/nic/sandbox.py) is reported as `blocked` even while the values happen
to match, since the next drift could not be undone.
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.nic import sandbox

# Queue interrupt names end with a per-queue token and usually an index; config, control,
# async and management vectors do not match.
_QUEUE_NAME = re.compile(r"(?:^|[-_.])(?:tx-rx|txrx|input|output|rx|tx|comp|ntfy-blk|fp|queue)[-._]?(\d*)$",
                         re.IGNORECASE)


@dataclass(frozen=True)
class QueueIrq:
    irq: int
    name: str
    queue: int


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpu_list(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(set(cpus)))


def parse_mask(text: str) -> set[int]:
    """An xps_cpus hex bitmap ('00000000,00000003') -> {0, 1}."""
    value = int(text.strip().replace(",", "") or "0", 16)
    return {bit for bit in range(value.bit_length()) if value >> bit & 1}


def format_mask(cpus: set[int]) -> str:
    """{0, 1, 33} -> '2,00000003': comma-separated 32-bit words, as the kernel prints them."""
    value = sum(1 << c for c in cpus)
    words = []
    while True:
        words.append(value & 0xFFFFFFFF)
        value >>= 32
        if not value:
            break
    words.reverse()
    return ",".join([f"{words[0]:x}"] + [f"{w:08x}" for w in words[1:]])


def online_cpus(sysfs: str | Path) -> list[int]:
    return parse_cpu_list((Path(sysfs) / "devices" / "system" / "cpu" / "online").read_text())


def irqbalance_pid(procfs: str | Path) -> int | None:
    """The pid of a running irqbalance, found by scanning `<procfs>/*/comm`."""
    for entry in Path(procfs).iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "irqbalance":
                    return int(entry.name)
            except OSError:  # the process exited while we looked
                continue
    return None


def _interrupt_names(procfs: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    try:
        lines = (procfs / "interrupts").read_text().splitlines()
    except OSError:
        return names
    for line in lines[1:]:
        number, sep, rest = line.partition(":")
        if sep and number.strip().isdigit() and rest.split():
            names[int(number)] = rest.split()[-1]
    return names


def _msi_irqs(sysfs: Path, interface: str) -> set[int]:
    device = sysfs / "class" / "net" / interface / "device"
    # virtio_net's device is the virtio bus device; the vectors belong to its PCI parent.
    for folder in (device / "msi_irqs", device / ".." / "msi_irqs"):
        try:
            return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
        except OSError:
            continue
    return set()


def queue_irqs(interface: str, queues: int, sysfs: str | Path, procfs: str | Path) -> list[QueueIrq]:
    """The interrupts serving the interface's queues, each with its queue index (mod `queues`)."""
    names = _interrupt_names(Path(procfs))
    vectors = _msi_irqs(Path(sysfs), interface)
    if vectors:
        candidates = {irq: names.get(irq, "") for irq in vectors}
    else:
        candidates = {irq: name for irq, name in names.items() if name.startswith(interface + "-")}
    found = []
    for irq, name in sorted(candidates.items()):
        m = _QUEUE_NAME.search(name.split("@", 1)[0])
        if m:
            # gve numbers tx blocks first then rx blocks; the modulo pairs them per queue.
            found.append(QueueIrq(irq, name, int(m.group(1) or 0) % max(queues, 1)))
    return found


def spread(queues: int, cpus: list[int]) -> tuple[dict[int, int], dict[int, set[int]]]:
    """(queue -> CPU for its interrupt, tx queue -> CPUs whose traffic it carries)."""
    if not cpus or queues < 1:
        return {}, {}
    irq_cpu = {q: cpus[q % len(cpus)] for q in range(queues)}
    xps: dict[int, set[int]] = {q: set() for q in range(queues)}
    if queues >= len(cpus):
        for q in range(queues):
            xps[q].add(irq_cpu[q])
    else:
        for i, cpu in enumerate(cpus):
            xps[i % queues].add(cpu)
    return irq_cpu, xps


def _write_error(path: Path, e: OSError) -> str:
    if e.errno == errno.EIO:
        return f"{path}: the kernel manages this interrupt's affinity (EIO); it cannot be set from user space"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: not permitted ({errno.errorcode[e.errno]}); needs root"
    if e.errno == errno.EINVAL:
        return f"{path}: CPU set refused (EINVAL): a CPU is offline or not allowed for interrupts"
    return f"{path}: {e.strerror or e}"


def irq_pass(interface: str, queues: int, cpus: list[int], sysfs: str | Path, procfs: str | Path,
             apply: bool) -> dict:
    """Compare (and with `apply`, set) each queue interrupt's CPU; returns a JSON-ready report."""
    procfs = Path(procfs)
    irq_cpu, _ = spread(queues, cpus)
    found = queue_irqs(interface, queues, sysfs, procfs)
    if not found:
        return {"state": "none", "detail": f"{interface} has no per-queue interrupts (virtual NIC or no MSI-X)",
                "changed": 0, "rows": []}
    rows, errors, blocked, changed = [], [], [], 0
    for q in found:
        path = procfs / "irq" / str(q.irq) / "smp_affinity_list"
        want = [irq_cpu[q.queue]]
        try:
            have = parse_cpu_list(path.read_text())
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror or e}")
            continue
        have, done = _converge(path, have, want, parse_cpu_list, format_cpu_list, apply, errors, blocked)
        changed += done
        rows.append({"irq": q.irq, "name": q.name, "queue": q.queue, "want": want, "have": have})
    return _summary(rows, errors, changed, blocked)


def xps_pass(interface: str, queues: int, cpus: list[int], sysfs: str | Path, apply: bool) -> dict:
    """Compare (and with `apply`, set) each tx queue's XPS CPU mask."""
    _, xps = spread(queues, cpus)
    base = Path(sysfs) / "class" / "net" / interface / "queues"
    rows, errors, blocked, changed = [], [], [], 0
    for q in range(queues):
        path = base / f"tx-{q}" / "xps_cpus"
        want = xps[q]
        try:
            have = parse_mask(path.read_text())
        except FileNotFoundError:
            if not (base / f"tx-{q}").exists():
                errors.append(f"{base / f'tx-{q}'} is missing: the interface has fewer tx queues than {queues}")
            else:
                # The kernel answers ENOENT on reading xps_cpus of a single-queue device too.
                errors.append(f"{path}: ENOENT: kernel built without CONFIG_XPS, or a single-queue device")
            continue
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror or e}")
            continue
        have, done = _converge(path, have, want, parse_mask, format_mask, apply, errors, blocked)
        changed += done
        rows.append({"queue": q, "want": sorted(want), "have": sorted(have)})
    return _summary(rows, errors, changed, blocked)


def _converge(path: Path, have, want, parse, fmt, apply: bool, errors: list[str],
              blocked: list[str]) -> tuple[Any, int]:
    """With `apply`, write `want` where it differs and read the file back: what it reads
    back is what is reported (and counted as a change only if it matches). A file the
    sandbox will not let us write is reported as blocked on every apply pass, even when
    its value is already right, so the operator learns before the next drift."""
    if not apply:
        return have, 0
    blocker = sandbox.write_blocker(path)
    if blocker:
        blocked.append(blocker)
        return have, 0
    if have == want:
        return have, 0
    try:
        path.write_text(fmt(want))
        have = parse(path.read_text())
    except OSError as e:
        errors.append(_write_error(path, e))
        return have, 0
    if have != want:
        errors.append(f"{path}: wrote {fmt(want)} but it reads back {fmt(have)}")
        return have, 0
    return have, 1


def _summary(rows: list[dict], errors: list[str], changed: int, blocked: list[str]) -> dict:
    mismatched = [r for r in rows if r["want"] != r["have"]]
    if blocked:
        state, detail = "blocked", sandbox.summarize(blocked + errors)
    elif errors:
        state, detail = "error", "; ".join(errors)
    elif mismatched:
        state, detail = "mismatch", f"{len(mismatched)} of {len(rows)} differ from the plan"
    elif changed:
        state, detail = "applied", f"set {changed} of {len(rows)}, read back as planned"
    else:
        state, detail = "ok", f"all {len(rows)} as planned"
    return {"state": state, "detail": detail, "changed": changed, "rows": rows, "blocked": blocked}
