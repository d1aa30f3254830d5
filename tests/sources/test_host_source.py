"""The host source's figures, checked against procfs read independently in the test:
exactly on a fixture tree, and within what can change between two reads on the real /proc."""
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.sources.host import HostSource



def settings(procfs, nics=(), interval=1.0):
    return SimpleNamespace(enabled=True, interval=interval, procfs=str(procfs), sysfs="/sys", nics=list(nics))


def write_tree(root: Path, cpu_rows, meminfo_kb, net_rows, loadavg="0.50 0.25 0.10 1/100 42"):
    (root / "net").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, fields in cpu_rows:
        lines.append(f"{name} " + " ".join(str(f) for f in fields))
    lines += ["intr 0", "ctxt 0", "btime 1700000000", "processes 1", "procs_running 1", "procs_blocked 0"]
    (root / "stat").write_text("\n".join(lines) + "\n")
    (root / "meminfo").write_text("".join(f"{k}: {v} kB\n" for k, v in meminfo_kb.items()))
    dev = ["Inter-|   Receive                                                |  Transmit",
           " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed"]
    for nic, (rxb, rxp, rxe, rxd, txb, txp, txe, txd) in net_rows.items():
        dev.append(f"{nic:>6}: {rxb} {rxp} {rxe} {rxd} 0 0 0 0 {txb} {txp} {txe} {txd} 0 0 0 0")
    (root / "net" / "dev").write_text("\n".join(dev) + "\n")
    (root / "loadavg").write_text(loadavg + "\n")


MEM = {"MemTotal": 16 * 1024 * 1024, "MemFree": 2 * 1024 * 1024, "MemAvailable": 12 * 1024 * 1024,
       "Buffers": 100, "Cached": 1000, "Shmem": 10, "SReclaimable": 10, "Active": 1, "Inactive": 1,
       "SwapTotal": 0, "SwapFree": 0}


def by_key(samples):
    return {(s.metric, tuple(sorted(s.labels.items()))): s.last for s in samples}


def test_fixture_tree_cpu_memory_load_and_nic_rates_are_exact(tmp_path, restore_procfs):
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    cpu0 = [100, 0, 50, 800, 50, 0, 0, 0, 0, 0]
    cpu1 = [300, 0, 100, 500, 100, 0, 0, 0, 0, 0]
    total = [a + b for a, b in zip(cpu0, cpu1)]
    eth0 = (1000, 10, 0, 0, 5000, 20, 0, 0)
    write_tree(tmp_path, [("cpu", total), ("cpu0", cpu0), ("cpu1", cpu1)], MEM,
               {"lo": (9, 9, 0, 0, 9, 9, 0, 0), "eth0": eth0})
    src = HostSource(settings(tmp_path))
    src.start()
    first = by_key(src.collect(100.0))
    # the first reading has only the gauges: no rates without a previous reading
    assert ("cpu_utilization_percent", ()) not in first
    assert first[("memory_used_percent", ())] == pytest.approx(100 * (16 - 12) / 16)
    assert first[("memory_total_bytes", ())] == 16 * 1024 ** 3
    assert first[("load1", ())] == 0.5 and first[("load15", ())] == 0.1

    # two seconds later: cpu0 busy 60 of 200 ticks (iowait counts as idle), cpu1 busy 150 of 200,
    # guest time is inside user already and must not be counted twice
    cpu0b = [140, 0, 70, 920, 70, 0, 0, 0, 0, 0]
    cpu1b = [420, 0, 130, 540, 110, 0, 0, 0, 30, 0]
    totalb = [a + b for a, b in zip(cpu0b, cpu1b)]
    eth0b = (3000, 14, 1, 2, 5500, 30, 0, 4)
    write_tree(tmp_path, [("cpu", totalb), ("cpu0", cpu0b), ("cpu1", cpu1b)], MEM,
               {"lo": (99, 99, 0, 0, 99, 99, 0, 0), "eth0": eth0b})
    second = by_key(src.collect(102.0))
    assert second[("cpu_utilization_percent", (("cpu", "0"),))] == pytest.approx(100 * 60 / 200)
    assert second[("cpu_utilization_percent", (("cpu", "1"),))] == pytest.approx(100 * 150 / 200)
    assert second[("cpu_utilization_percent", ())] == pytest.approx(100 * 210 / 400)
    nic = (("nic", "eth0"),)
    assert second[("net_rx_bytes_per_second", nic)] == pytest.approx(2000 / 2)
    assert second[("net_tx_bytes_per_second", nic)] == pytest.approx(500 / 2)
    assert second[("net_rx_packets_per_second", nic)] == pytest.approx(4 / 2)
    assert second[("net_tx_packets_per_second", nic)] == pytest.approx(10 / 2)
    assert second[("net_rx_errors_per_second", nic)] == pytest.approx(0.5)
    assert second[("net_rx_drops_per_second", nic)] == pytest.approx(1.0)
    assert second[("net_tx_drops_per_second", nic)] == pytest.approx(2.0)
    # the kernel's counters themselves, for Prometheus' rate() (from the first reading on)
    assert first[("net_rx_bytes_total", nic)] == eth0[0] and first[("net_tx_packets_total", nic)] == eth0[5]
    assert (second[("net_rx_bytes_total", nic)], second[("net_rx_packets_total", nic)],
            second[("net_tx_bytes_total", nic)], second[("net_tx_packets_total", nic)]) == (3000, 14, 5500, 30)
    # loopback is left out unless asked for
    assert not any(dict(k[1]).get("nic") == "lo" for k in second)


def test_a_counter_that_went_backwards_gives_no_rate(tmp_path, restore_procfs):
    cpu = [("cpu", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0]), ("cpu0", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0])]
    write_tree(tmp_path, cpu, MEM, {"eth0": (5000, 50, 0, 0, 5000, 50, 0, 0)})
    src = HostSource(settings(tmp_path))
    src.start()
    src.collect(10.0)
    write_tree(tmp_path, cpu, MEM, {"eth0": (100, 1, 0, 0, 6000, 60, 0, 0)})  # NIC re-created
    second = by_key(src.collect(11.0))
    assert ("net_rx_bytes_per_second", (("nic", "eth0"),)) not in second
    assert second[("net_tx_bytes_per_second", (("nic", "eth0"),))] == pytest.approx(1000)
    assert second[("net_rx_bytes_total", (("nic", "eth0"),))] == 100  # the counter as it is: a reset to rate()


def test_configured_nics_are_the_only_ones_reported(tmp_path, restore_procfs):
    cpu = [("cpu", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0]), ("cpu0", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0])]
    rows = {"lo": (1, 1, 0, 0, 1, 1, 0, 0), "eth0": (1, 1, 0, 0, 1, 1, 0, 0), "eth1": (1, 1, 0, 0, 1, 1, 0, 0)}
    write_tree(tmp_path, cpu, MEM, rows)
    src = HostSource(settings(tmp_path, nics=["lo", "eth1"]))
    src.start()
    src.collect(1.0)
    nics = {dict(k[1])["nic"] for k in by_key(src.collect(2.0)) if k[0].startswith("net_")}
    assert nics == {"lo", "eth1"}
    assert src.nics == {"lo", "eth1"}


def test_a_nic_that_goes_away_is_no_longer_current(tmp_path, restore_procfs):
    cpu = [("cpu", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0]), ("cpu0", [1, 0, 1, 10, 0, 0, 0, 0, 0, 0])]
    write_tree(tmp_path, cpu, MEM, {"eth0": (1, 1, 0, 0, 1, 1, 0, 0), "veth9": (1, 1, 0, 0, 1, 1, 0, 0)})
    src = HostSource(settings(tmp_path))
    src.start()
    src.collect(1.0)
    assert src.nics == {"eth0", "veth9"}
    write_tree(tmp_path, cpu, MEM, {"eth0": (5, 2, 0, 0, 5, 2, 0, 0)})
    samples = src.collect(2.0)
    assert src.nics == {"eth0"}
    assert {s.labels["nic"] for s in samples if s.metric.startswith("net_")} == {"eth0"}


def _meminfo():
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values


def _lo_rx_bytes():
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise AssertionError("no lo in /proc/net/dev")


def test_real_proc_figures_match_an_independent_read(restore_procfs):
    src = HostSource(settings("/proc", nics=["lo"], interval=0.1))
    src.start()
    lo_before = _lo_rx_bytes()
    t_first = time.time()
    src.collect(t_first)
    # traffic on loopback between the two readings
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.sendall(b"x" * 200_000)
    received = 0
    while received < 200_000:
        received += len(peer.recv(65536))
    for s in (client, peer, server):
        s.close()
    time.sleep(0.2)
    now = time.time()
    got = by_key(src.collect(now))
    lo_after = _lo_rx_bytes()

    mem = _meminfo()
    expected_used = 100 * (mem["MemTotal"] - mem["MemAvailable"]) / mem["MemTotal"]
    assert got[("memory_used_percent", ())] == pytest.approx(expected_used, abs=2.0)
    assert got[("memory_total_bytes", ())] == mem["MemTotal"]

    cpus = [l for l in Path("/proc/stat").read_text().splitlines() if l.startswith("cpu") and l[3].isdigit()]
    per_cpu = {dict(k[1])["cpu"] for k in got if k[0] == "cpu_utilization_percent" and k[1]}
    assert per_cpu == {str(i) for i in range(len(cpus))}
    assert 0.0 <= got[("cpu_utilization_percent", ())] <= 100.0

    load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    assert got[("load1", ())] == pytest.approx(load[0], abs=0.5)

    # the bytes lo received between the source's two reads: at least what we sent, at most
    # what /proc/net/dev shows around both reads
    seen = got[("net_rx_bytes_per_second", (("nic", "lo"),))] * (now - t_first)
    assert 200_000 <= seen + 1 <= lo_after - lo_before + 1


def test_meminfo_with_a_zero_total_gives_no_memory_figures_not_zero(tmp_path, restore_procfs):
    write_tree(tmp_path, [("cpu", [1, 0, 1, 8, 0, 0, 0, 0, 0, 0])], {"MemTotal": 0, "MemFree": 0, "MemAvailable": 0, "Buffers": 0, "Cached": 0,
                "Shmem": 0, "Active": 0, "Inactive": 0, "SReclaimable": 0},
               {"eth0": (1, 1, 0, 0, 1, 1, 0, 0)})
    src = HostSource(settings(tmp_path))
    src.start()
    got = by_key(src.collect(100.0))
    assert not any(metric.startswith("memory_") for metric, _ in got)
    assert got[("load1", ())] == 0.5  # the rest of the host figures still come


def test_one_read_of_stat_gives_what_psutil_gives_for_the_total_and_each_cpu(tmp_path, restore_procfs):
    """The host source reads /proc/stat once for both (psutil reads it once for each): the same
    seconds as psutil's own readers on the same file."""
    import psutil

    from agent.sources.host import read_cpu_times

    cpu0 = [1234, 5, 678, 91011, 12, 3, 4, 5, 60, 7]
    cpu1 = [4321, 6, 876, 11109, 21, 4, 5, 6, 70, 8]
    write_tree(tmp_path, [("cpu", [a + b for a, b in zip(cpu0, cpu1)]), ("cpu0", cpu0), ("cpu1", cpu1)], MEM,
               {"eth0": (1, 1, 0, 0, 1, 1, 0, 0)})
    psutil.PROCFS_PATH = str(tmp_path)
    total, per_cpu = read_cpu_times(str(tmp_path))
    theirs = psutil.cpu_times()
    assert {f: getattr(total, f) for f in theirs._fields} == pytest.approx(theirs._asdict())
    assert list(per_cpu) == ["0", "1"]
    for ours, theirs in zip(per_cpu.values(), psutil.cpu_times(percpu=True)):
        assert {f: getattr(ours, f) for f in theirs._fields} == pytest.approx(theirs._asdict())
    assert total.user == pytest.approx((1234 + 4321) / os.sysconf("SC_CLK_TCK"))


def test_an_older_kernels_shorter_cpu_lines_leave_the_missing_times_zero(tmp_path):
    """Before 2.6.33 a cpu line has no guest_nice, before 2.6.24 no guest: those are 0, and the
    utilization still comes out of the columns there are."""
    from agent.sources.host import read_cpu_times, utilization

    hz = os.sysconf("SC_CLK_TCK")
    write_tree(tmp_path, [("cpu", [100, 0, 100, 800, 0, 0, 0, 0]), ("cpu0", [100, 0, 100, 800])], MEM, {})
    before, per_cpu = read_cpu_times(str(tmp_path))
    (cpu0,) = per_cpu.values()
    assert cpu0.idle == pytest.approx(800 / hz) and cpu0.iowait == 0.0 and cpu0.guest_nice == 0.0
    write_tree(tmp_path, [("cpu", [150, 0, 150, 900, 0, 0, 0, 0]), ("cpu0", [150, 0, 150, 900])], MEM, {})
    after, _ = read_cpu_times(str(tmp_path))
    assert utilization(before, after) == pytest.approx(100 * 100 / 200)


def test_memory_is_what_psutil_reads_and_its_estimate_where_the_kernel_has_no_memavailable(tmp_path, restore_procfs):
    """MemTotal and MemAvailable are read directly; a kernel before 3.14 has no MemAvailable
    line, and then psutil's own estimate from the other lines is what the figures use."""
    import psutil

    from agent.sources.host import read_memory

    psutil.PROCFS_PATH = str(tmp_path)
    write_tree(tmp_path, [("cpu", [1, 0, 1, 8])], MEM, {})
    vm = psutil.virtual_memory()
    assert read_memory(str(tmp_path)) == (vm.total, vm.available) == (16 * 1024 ** 3, 12 * 1024 ** 3)

    old_kernel = {k: v for k, v in MEM.items() if k != "MemAvailable"}
    write_tree(tmp_path, [("cpu", [1, 0, 1, 8])], old_kernel, {})
    vm = psutil.virtual_memory()
    total, available = read_memory(str(tmp_path))
    assert (total, available) == (vm.total, vm.available)
    assert 0 < available < total and available != 12 * 1024 ** 3
    src = HostSource(settings(tmp_path))
    src.start()
    got = by_key(src.collect(100.0))
    assert got[("memory_used_bytes", ())] == total - available


def test_memory_lines_are_found_in_any_order(tmp_path):
    from agent.sources.host import read_memory

    (tmp_path / "meminfo").write_text("MemAvailable: 3 kB\nMemFree: 1 kB\nMemTotal: 8 kB\n")
    assert read_memory(str(tmp_path)) == (8 * 1024, 3 * 1024)


def test_lines_that_do_not_parse_lose_only_their_own_figures(tmp_path, restore_procfs):
    """Garbage in /proc (a fixture, a broken procfs): a cpu line, the memory lines, or the load
    that does not parse costs its own figures; the other figures of the tick still come."""
    write_tree(tmp_path, [("cpu", [2, 0, 2, 16]), ("cpu0", [1, 0, 1, 8]), ("cpu1", ["x", "NaN", "1e300", "-"])],
               {"MemTotal": "lots", "MemAvailable": 12}, {"eth0": (1, 1, 0, 0, 1, 1, 0, 0)}, loadavg="nan x y 1/1 1")
    src = HostSource(settings(tmp_path))
    src.start()
    src.collect(100.0)
    write_tree(tmp_path, [("cpu", [4, 0, 4, 24]), ("cpu0", [2, 0, 2, 12]), ("cpu1", ["x", "NaN", "1e300", "-"])],
               {"MemTotal": "lots", "MemAvailable": 12}, {"eth0": (9, 2, 0, 0, 1, 1, 0, 0)}, loadavg="nan x y 1/1 1")
    got = by_key(src.collect(101.0))
    assert src.status.state != "failed"
    assert got[("cpu_utilization_percent", ())] == pytest.approx(100 * 4 / 12)
    assert got[("cpu_utilization_percent", (("cpu", "0"),))] == pytest.approx(100 * 2 / 6)
    assert ("cpu_utilization_percent", (("cpu", "1"),)) not in got
    assert not any(m.startswith("memory_") or m.startswith("load") for m, _ in got)
    assert got[("net_rx_bytes_per_second", (("nic", "eth0"),))] == pytest.approx(8.0)


def test_a_procfs_file_over_the_bound_is_an_error_naming_it(tmp_path, monkeypatch):
    from agent.sources import host

    monkeypatch.setattr(host, "PROC_FILE_MAX", 1000)
    (tmp_path / "stat").write_bytes(b"cpu  1 2 3 4\n" * 200)
    with pytest.raises(OSError, match="stat: over"):
        host.read_cpu_times(str(tmp_path))


def test_per_cpu_figures_keep_the_kernels_cpu_numbers_when_one_goes_offline(tmp_path, restore_procfs):
    """An offline CPU has no line in /proc/stat: the others keep their own numbers (cpu2 stays
    "2", not the second line's "1"), and the one that went away has no figure."""
    rows = lambda k: [("cpu", [6 * k, 0, 0, 30 * k]), ("cpu0", [k, 0, 0, 10 * k]), ("cpu1", [2 * k, 0, 0, 10 * k]),
                      ("cpu2", [3 * k, 0, 0, 10 * k])]
    write_tree(tmp_path, rows(1), MEM, {})
    src = HostSource(settings(tmp_path))
    src.start()
    src.collect(100.0)
    write_tree(tmp_path, [r for r in rows(2) if r[0] != "cpu1"], MEM, {})
    got = by_key(src.collect(101.0))
    per_cpu = {dict(k[1])["cpu"]: v for k, v in got.items() if k[0] == "cpu_utilization_percent" and k[1]}
    assert per_cpu == {"0": pytest.approx(100 * 1 / 11), "2": pytest.approx(100 * 3 / 13)}
