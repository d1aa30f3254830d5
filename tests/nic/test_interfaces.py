"""Interface choice: configured names, else the default route's, never anything else."""
from agent.nic import interfaces

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def test_default_route_interface_is_chosen(tree):
    tree.route(HEADER + "eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
                        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert interfaces.choose([], tree.procfs) == (["eth0"], "interface of the default route")


def test_lowest_metric_default_route_wins_and_down_routes_are_ignored(tree):
    tree.route(HEADER + "eth0\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
                        "eth2\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
                        "eth1\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n")
    assert interfaces.default_route_interface(tree.procfs) == "eth1"


def test_ipv6_default_route_is_used_when_there_is_no_ipv4_one(tree):
    tree.route(HEADER)
    zeros = "0" * 32
    tree.write("proc", "net/ipv6_route",
               f"{zeros} 00 {zeros} 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     ens5\n"
               f"{zeros} 00 {zeros} 00 {zeros} ffffffff 00000001 00000000 00200200       lo\n")
    assert interfaces.default_route_interface(tree.procfs) == "ens5"


def test_no_default_route_manages_nothing_and_says_why(tree):
    tree.route(HEADER + "eth1\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    chosen, why = interfaces.choose([], tree.procfs)
    assert chosen == [] and "no default route" in why


def test_configured_names_win_over_the_default_route(tree):
    tree.route(HEADER + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert interfaces.choose(["ens6", "ens7", "ens6"], tree.procfs)[0] == ["ens6", "ens7"]
