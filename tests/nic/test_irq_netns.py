"""IRQ affinity and XPS through the whole pass: the channels are the real kernel's (a veth in a
namespace), the interrupt and queue files a fixture tree the config points the roots at, since
a veth has no interrupts of its own."""
import pytest

pytestmark = pytest.mark.root  # network namespaces, ethtool -L

ROUTE = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


@pytest.fixture
def nic_tree(tree, tmp_path):
    tree.route(ROUTE)
    tree.nic("va", 2, {61: "va-TxRx-0", 62: "va-TxRx-1", 63: "va-mgmt"})
    config = tmp_path / "agent.toml"
    config.write_text(f'[nic]\nprocfs = "{tree.procfs}"\nsysfs = "{tree.sysfs}"\n')
    return tree, str(config)


def test_apply_spreads_queue_interrupts_and_sets_xps_to_match(netns, nic_tree):
    tree, config = nic_tree
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge", "--config", config)
    row = report["interfaces"][0]
    assert rc == 0 and row["state"] == "applied", row
    assert row["affinity"]["irq"]["state"] == "applied" and row["affinity"]["xps"]["state"] == "applied"
    assert (tree.affinity(61), tree.affinity(62), tree.affinity(63)) == ("0", "1", "0-3")
    assert (tree.xps("va", 0), tree.xps("va", 1)) == ("5", "a")  # CPUs 0,2 and 1,3


def test_verify_reports_unspread_interrupts_without_writing(netns, nic_tree):
    tree, config = nic_tree
    netns.veth("va", 4, current=2)
    rc, report = netns.nic("verify", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge", "--config", config)
    row = report["interfaces"][0]
    assert rc == 1 and row["state"] == "ok" and row["affinity"]["irq"]["state"] == "mismatch"
    assert "would set irq 61 (va-TxRx-0) -> CPUs 0" in row["actions"]
    assert tree.affinity(61) == "0-3" and tree.xps("va", 0) == "0"


def test_with_irqbalance_running_interrupts_are_left_to_it_and_xps_still_set(netns, nic_tree):
    tree, config = nic_tree
    tree.process(812, "irqbalance")
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge", "--config", config)
    row = report["interfaces"][0]
    assert rc == 0 and row["affinity"]["irq"]["state"] == "skipped"
    assert "irqbalance" in row["affinity"]["irq"]["detail"] and "pid 812" in report["irqbalance"]["detail"]
    assert tree.affinity(61) == "0-3"
    assert row["affinity"]["xps"]["state"] == "applied" and tree.xps("va", 1) == "a"


def test_irq_and_xps_switched_off_are_not_touched(netns, nic_tree, tmp_path):
    tree, config = nic_tree
    off = tmp_path / "off.toml"
    off.write_text(open(config).read() + "irq_affinity = false\nxps = false\n")
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge", "--config", str(off))
    row = report["interfaces"][0]
    assert rc == 0 and row["affinity"]["irq"]["state"] == row["affinity"]["xps"]["state"] == "off"
    assert tree.affinity(61) == "0-3" and tree.xps("va", 0) == "0"
