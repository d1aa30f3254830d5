"""IRQ affinity and XPS on fixture trees: queue -> IRQ discovery, the spread, writes read back."""
import pytest

from agent.nic import affinity

VIRTIO = {37: "virtio2-config", 38: "virtio2-input.0", 39: "virtio2-output.0",
          40: "virtio2-input.1", 41: "virtio2-output.1", 42: "virtio2-control"}


def test_cpu_list_and_mask_round_trip():
    assert affinity.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert affinity.format_cpu_list([3, 1, 2, 1]) == "1,2,3"
    assert affinity.parse_mask("00000000,00000003\n") == {0, 1}
    assert affinity.format_mask({0, 1}) == "3"
    assert affinity.format_mask({33, 0}) == "2,00000001"
    assert affinity.parse_mask(affinity.format_mask({5, 40, 64})) == {5, 40, 64}


def test_spread_gives_each_queue_its_own_cpu_and_every_cpu_a_tx_queue():
    irq_cpu, xps = affinity.spread(2, [0, 1, 2, 3])
    assert irq_cpu == {0: 0, 1: 1}
    assert xps == {0: {0, 2}, 1: {1, 3}}
    # Every queue's interrupt CPU sends on that queue.
    assert all(irq_cpu[q] in xps[q] for q in irq_cpu)


def test_spread_with_more_queues_than_cpus_wraps_around():
    irq_cpu, xps = affinity.spread(4, [0, 1])
    assert irq_cpu == {0: 0, 1: 1, 2: 0, 3: 1}
    assert xps == {0: {0}, 1: {1}, 2: {0}, 3: {1}}


def test_virtio_vectors_are_found_on_the_pci_parent_and_paired_by_queue(tree):
    tree.nic("eth0", 2, VIRTIO, vectors_on_parent=True)
    found = affinity.queue_irqs("eth0", 2, tree.sysfs, tree.procfs)
    assert [(q.irq, q.queue) for q in found] == [(38, 0), (39, 0), (40, 1), (41, 1)]


@pytest.mark.parametrize("names, expected", [
    ({60: "ena-mgmnt@pci:0000:00:05.0", 61: "eth0-Tx-Rx-0", 62: "eth0-Tx-Rx-1"}, [(61, 0), (62, 1)]),
    ({70: "mlx5_async0@pci:0000:00:06.0", 71: "mlx5_comp0@pci:0000:00:06.0", 72: "mlx5_comp1@pci:0000:00:06.0"},
     [(71, 0), (72, 1)]),
    # gve numbers its tx blocks first, then rx blocks: block 2 and 3 are rx queues 0 and 1.
    ({80: "gve-mgmnt@pci:0000:00:04.0", 81: "gve-ntfy-blk0@pci:0000:00:04.0", 82: "gve-ntfy-blk1@pci:0000:00:04.0",
      83: "gve-ntfy-blk2@pci:0000:00:04.0", 84: "gve-ntfy-blk3@pci:0000:00:04.0"},
     [(81, 0), (82, 1), (83, 0), (84, 1)]),
])
def test_driver_interrupt_names_map_to_queues(tree, names, expected):
    tree.nic("eth0", 2, names)
    assert [(q.irq, q.queue) for q in affinity.queue_irqs("eth0", 2, tree.sysfs, tree.procfs)] == expected


def test_other_devices_interrupts_are_never_picked(tree):
    tree.nic("eth0", 2, {61: "eth0-TxRx-0", 62: "eth0-TxRx-1"})
    tree.interrupt(90, "eth1-TxRx-0")
    tree.interrupt(91, "nvme0q1")
    assert {q.irq for q in affinity.queue_irqs("eth0", 2, tree.sysfs, tree.procfs)} == {61, 62}


def test_names_are_the_fallback_when_the_nic_has_no_msi_vectors(tree):
    tree.nic("eth0", 2)
    tree.interrupt(61, "eth0-TxRx-0")
    tree.interrupt(62, "eth0-TxRx-1")
    tree.interrupt(63, "eth10-TxRx-0")
    assert [q.irq for q in affinity.queue_irqs("eth0", 2, tree.sysfs, tree.procfs)] == [61, 62]


def test_irq_verify_reports_mismatch_and_writes_nothing(tree):
    tree.nic("eth0", 2, VIRTIO, vectors_on_parent=True)
    report = affinity.irq_pass("eth0", 2, [0, 1, 2, 3], tree.sysfs, tree.procfs, apply=False)
    assert report["state"] == "mismatch" and report["changed"] == 0
    assert tree.affinity(38) == "0-3"


def test_irq_apply_sets_each_queue_vector_to_its_cpu_and_reads_back(tree):
    tree.nic("eth0", 2, VIRTIO, vectors_on_parent=True)
    report = affinity.irq_pass("eth0", 2, [0, 1, 2, 3], tree.sysfs, tree.procfs, apply=True)
    assert report["state"] == "applied" and report["changed"] == 4
    assert [tree.affinity(i) for i in (38, 39, 40, 41)] == ["0", "0", "1", "1"]
    assert tree.affinity(37) == "0-3" and tree.affinity(42) == "0-3"  # config/control untouched
    again = affinity.irq_pass("eth0", 2, [0, 1, 2, 3], tree.sysfs, tree.procfs, apply=True)
    assert again["state"] == "ok" and again["changed"] == 0


def test_unreadable_affinity_file_is_an_error_naming_it(tree):
    tree.nic("eth0", 2, {61: "eth0-TxRx-0", 62: "eth0-TxRx-1"})
    path = tree.procfs / "irq/62/smp_affinity_list"
    path.unlink()
    path.mkdir()  # unreadable as a file, even for root
    report = affinity.irq_pass("eth0", 2, [0, 1], tree.sysfs, tree.procfs, apply=True)
    assert report["state"] == "error" and "irq/62/smp_affinity_list: cannot read" in report["detail"]
    assert tree.affinity(61) == "0"  # the readable one was still set


def test_xps_apply_sets_masks_so_every_cpu_has_a_queue(tree):
    tree.nic("eth0", 2)
    report = affinity.xps_pass("eth0", 2, [0, 1, 2, 3], tree.sysfs, apply=True)
    assert report["state"] == "applied"
    assert (tree.xps("eth0", 0), tree.xps("eth0", 1)) == ("5", "a")


def test_xps_verify_writes_nothing(tree):
    tree.nic("eth0", 2)
    report = affinity.xps_pass("eth0", 2, [0, 1, 2, 3], tree.sysfs, apply=False)
    assert report["state"] == "mismatch" and tree.xps("eth0", 0) == "0"


def test_xps_missing_file_is_an_error_naming_it(tree):
    tree.nic("eth0", 2, xps=False)
    report = affinity.xps_pass("eth0", 2, [0, 1], tree.sysfs, apply=True)
    assert report["state"] == "error" and "tx-0/xps_cpus" in report["detail"] and "CONFIG_XPS" in report["detail"]


def test_irqbalance_is_detected_by_its_process_name(tree):
    tree.process(1, "systemd")
    assert affinity.irqbalance_pid(tree.procfs) is None
    tree.process(731, "irqbalance")
    assert affinity.irqbalance_pid(tree.procfs) == 731
