"""SIOCETHTOOL channels against the real kernel in a network namespace, checked with the real
`ethtool -l` as the independent reader. veth is an rx/tx driver (max_combined 0)."""
import errno

import pytest

pytestmark = pytest.mark.root  # network namespaces, ethtool -L


def test_get_channels_matches_ethtool(netns):
    netns.veth("va", 4, current=3)
    mine = netns.channels("va")
    theirs = netns.ethtool_l("va")
    assert (mine["max_rx"], mine["max_tx"], mine["max_combined"]) == (
        theirs["max"]["rx"], theirs["max"]["tx"], theirs["max"]["combined"])
    assert (mine["rx"], mine["tx"], mine["combined"]) == (
        theirs["current"]["rx"], theirs["current"]["tx"], theirs["current"]["combined"])
    assert mine["style"] == "rx-tx" and mine["queues"] == 3 and mine["max_queues"] == 4


@pytest.mark.parametrize("count", [2, 3, 4])
def test_set_channels_is_read_back_and_ethtool_agrees(netns, count):
    netns.veth("va", 4, current=1)
    after = netns.channels("va", set_to=count)
    assert (after["rx"], after["tx"]) == (count, count)
    assert netns.ethtool_l("va")["current"]["rx"] == count
    assert netns.ethtool_l("va")["current"]["tx"] == count


def test_over_the_maximum_is_einval_with_the_kernels_reasons(netns):
    netns.veth("va", 2)
    result = netns.channels("va", set_to=3)
    assert result["error"] == "InvalidRequest" and result["errno"] == errno.EINVAL
    assert "over its maximum" in result["message"]
    assert netns.ethtool_l("va")["current"]["rx"] == 2


def test_missing_interface_is_enodev(netns):
    result = netns.channels("nosuchnic0")
    assert result["error"] == "InterfaceGone" and result["errno"] == errno.ENODEV


def test_loopback_cannot_report_channels_eopnotsupp(netns):
    result = netns.channels("lo")
    assert result["error"] == "NotSupported" and result["errno"] == errno.EOPNOTSUPP
    assert "cannot report" in result["message"]


def test_unprivileged_set_is_eperm_lacking_cap_net_admin_and_reading_still_works(netns):
    netns.veth("va", 4, current=1)
    assert netns.channels("va", as_nobody=True)["queues"] == 1
    result = netns.channels("va", set_to=4, as_nobody=True)
    assert result["error"] == "NoPermission" and result["errno"] == errno.EPERM
    assert "CAP_NET_ADMIN" in result["message"]
    assert netns.ethtool_l("va")["current"]["rx"] == 1
