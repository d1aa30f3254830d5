"""Manager decisions for driver behaviours no namespace can produce: a combined-channel NIC
(virtio_net, ena, mlx5), drivers that refuse or misreport a change, an interface vanishing
between the read and the write. The fake stands in for the ioctl only; everything above it is
the real manager. (veth, an rx/tx driver, is tested against the real kernel in *_netns.py.)"""
import errno

import pytest

from agent.nic import ethtool
from agent.nic.manager import NicManager

ROUTE = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


class FakeNic:
    def __init__(self, channels: ethtool.Channels, driver="virtio_net"):
        self.channels, self.driver, self.set_error, self.keeps = channels, driver, None, None
        self.sets = []

    def get(self, name):
        if self.channels is None:
            raise ethtool.InterfaceGone(name, errno.ENODEV, f"{name}: no such interface (ENODEV)")
        return self.channels

    def set(self, name, want):
        self.sets.append(want)
        if self.set_error:
            raise self.set_error
        # `keeps`: a driver that answers success but keeps this many queues
        self.channels = want if self.keeps is None else want.with_queues(self.keeps)
        return self.channels


@pytest.fixture
def fake(monkeypatch):
    nic = FakeNic(ethtool.Channels(0, 0, 1, 8, 0, 0, 1, 1))  # combined, max 8, one "other" (mlx-style)
    monkeypatch.setattr(ethtool, "get_channels", nic.get)
    monkeypatch.setattr(ethtool, "set_channels", nic.set)
    monkeypatch.setattr(ethtool, "driver_name", lambda name: nic.driver)
    return nic


@pytest.fixture
def manager(tree):
    tree.route(ROUTE)
    tree.nic("eth0", 4)
    events = []
    m = NicManager(tree.settings(interfaces=["eth0"]), emit=lambda nic, data: events.append((nic, data)))
    m.events = events
    return m


def _pass(manager, action, instance_type="ecs.ga1.14xlarge"):
    return manager.run_pass(action, manager.requirement(instance_type, "test"))["interfaces"][0]


def test_combined_driver_gets_combined_channels_and_keeps_other_counts(fake, manager, tree):
    row = _pass(manager, "apply")
    assert row["state"] == "applied" and row["channels"]["style"] == "combined"
    assert fake.sets == [ethtool.Channels(0, 0, 1, 8, 0, 0, 1, 4)]
    assert row["actions"][0] == "set combined 1 -> 4"
    assert [tree.xps("eth0", q) for q in range(4)] == ["1", "2", "4", "8"]


def test_driver_that_cannot_change_channels_is_reported_as_such(fake, manager):
    fake.set_error = ethtool.NotSupported("eth0", errno.EOPNOTSUPP, "eth0: the driver cannot change its channel count")
    row = _pass(manager, "apply")
    assert row["state"] == "unsupported" and "cannot change" in row["detail"] and not row["ok"]


def test_kernel_refusal_keeps_the_kernels_reason(fake, manager):
    fake.set_error = ethtool.InvalidRequest("eth0", errno.EINVAL, "eth0: the kernel refused setting channels (EINVAL): RSS")
    row = _pass(manager, "apply")
    assert row["state"] == "refused" and "EINVAL" in row["detail"]


def test_success_is_claimed_only_for_what_reads_back(fake, manager):
    fake.keeps = 2
    row = _pass(manager, "apply")
    assert row["state"] == "error" and "accepted 4 queues but reads back 2" in row["detail"] and not row["ok"]


def test_interface_vanishing_between_read_and_write_is_gone_then_reapplied(fake, manager):
    fake.set_error = ethtool.InterfaceGone("eth0", errno.ENODEV, "eth0: no such interface (ENODEV)")
    assert _pass(manager, "apply")["state"] == "gone"
    fake.set_error = None
    assert _pass(manager, "apply")["state"] == "applied"
    assert [d["to"] for _, d in manager.events if d["what"] == "state"] == ["gone", "applied"]


def test_drift_back_below_the_requirement_is_counted_once_per_occurrence(fake, manager):
    assert _pass(manager, "apply")["state"] == "applied"
    assert _pass(manager, "apply")["state"] == "ok"
    fake.channels = fake.channels.with_queues(1)
    row = _pass(manager, "apply")
    assert row["state"] == "applied" and row["drifts"]["channels"] == 1
    assert _pass(manager, "apply")["drifts"]["channels"] == 1


def test_undersized_nic_is_raised_to_its_maximum_and_leaving_that_is_drift(fake, manager):
    fake.channels = ethtool.Channels(0, 0, 0, 2, 0, 0, 0, 1)
    row = _pass(manager, "apply")
    assert row["state"] == "insufficient" and row["queues"] == 2
    assert row["detail"] == ("needs 4 queues, the NIC offers at most 2: raise the queue count on the cloud side "
                             "and restart the instance; raised to the NIC's maximum, 2")
    fake.channels = fake.channels.with_queues(1)
    assert _pass(manager, "apply")["drifts"]["channels"] == 1


def test_verify_never_calls_set(fake, manager):
    row = _pass(manager, "verify")
    assert row["state"] == "mismatch" and fake.sets == []
    assert row["affinity"]["xps"]["state"] == "after-channels"


def test_instance_type_without_requirement_touches_nothing(fake, manager, tree):
    row = _pass(manager, "apply", "gn5-c4g1.xlarge")
    assert row["state"] == "no-requirement" and row["ok"] and fake.sets == []
    assert tree.xps("eth0", 0) == "0"


def test_channels_dataclass_counts_queue_pairs_per_driver_style():
    rxtx = ethtool.Channels(4, 4, 0, 0, 4, 2, 0, 0)
    assert (rxtx.style, rxtx.queues, rxtx.max_queues) == ("rx-tx", 2, 4)
    assert rxtx.with_queues(3) == ethtool.Channels(4, 4, 0, 0, 3, 3, 0, 0)
    combined = ethtool.Channels(0, 0, 1, 16, 0, 0, 1, 8)
    assert (combined.style, combined.queues, combined.max_queues) == ("combined", 8, 16)
