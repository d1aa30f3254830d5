"""`egs-agent nic plan|verify|apply` in a network namespace against veth pairs, with the real
`ethtool -l` and the veth's real sysfs queue files as the independent readers."""
import pytest

pytestmark = pytest.mark.root  # network namespaces, ethtool -L

TABLE = {2: "ecs.ga1.4xlarge", 3: "gn5-c8g1.8xlarge", 4: "ecs.gn4.14xlarge"}


@pytest.mark.parametrize("required", [2, 3, 4])
def test_apply_sets_each_table_count_and_ethtool_reads_it_back(netns, required):
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", TABLE[required])
    row = report["interfaces"][0]
    assert rc == 0, row
    assert row["state"] == "applied" and row["queues"] == required and row["required"] == required
    assert row["actions"][0] == f"set rx 1 -> {required}, tx 1 -> {required}"
    current = netns.ethtool_l("va")["current"]
    assert (current["rx"], current["tx"]) == (required, required)


def test_second_apply_changes_nothing_and_says_ok(netns):
    netns.veth("va", 4, current=1)
    netns.nic("apply", "--interface", "va", "--instance-type", "gn5-c8g1.14xlarge")
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "gn5-c8g1.14xlarge")
    row = report["interfaces"][0]
    assert rc == 0 and row["state"] == "ok" and row["actions"] == []


def test_more_queues_than_required_are_left_alone_unless_exact(netns, tmp_path):
    netns.veth("va", 4)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge")
    assert rc == 0 and report["interfaces"][0]["state"] == "ok"
    assert netns.ethtool_l("va")["current"]["rx"] == 4
    exact = tmp_path / "exact.toml"
    exact.write_text("[nic]\nexact = true\n")
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge",
                           "--config", str(exact))
    assert rc == 0 and report["interfaces"][0]["state"] == "applied"
    assert netns.ethtool_l("va")["current"]["rx"] == 2


def test_too_small_maximum_is_reported_as_a_cloud_side_change_and_raised_to_the_maximum(netns):
    netns.veth("va", 2, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "gn5-c8g1.14xlarge")
    row = report["interfaces"][0]
    assert rc == 1 and row["state"] == "insufficient"
    assert row["detail"].startswith("needs 4 queues, the NIC offers at most 2: raise the queue count on the "
                                    "cloud side and restart the instance")
    assert netns.ethtool_l("va")["current"]["rx"] == 2


def test_verify_reports_the_difference_and_changes_nothing(netns):
    netns.veth("va", 4, current=1)
    before_xps = [netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus") for q in range(1)]
    rc, report = netns.nic("verify", "--interface", "va", "--instance-type", "ecs.ga1.14xlarge")
    row = report["interfaces"][0]
    assert rc == 1 and row["state"] == "mismatch" and "has 1 queues, needs 4" in row["detail"]
    assert netns.ethtool_l("va")["current"]["rx"] == 1
    assert [netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus") for q in range(1)] == before_xps


def test_plan_lists_what_apply_would_do_and_changes_nothing(netns):
    netns.veth("va", 4, current=2)
    rc, report = netns.nic("plan", "--interface", "va", "--instance-type", "ecs.ga1.14xlarge")
    assert rc == 0
    assert report["interfaces"][0]["actions"] == ["would set rx 2 -> 4, tx 2 -> 4",
                                                  "would then spread irq and xps over 4 queues"]
    assert netns.ethtool_l("va")["current"]["rx"] == 2


def test_unprivileged_apply_says_it_lacks_cap_net_admin(netns):
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.14xlarge", as_nobody=True)
    row = report["interfaces"][0]
    assert rc == 1 and row["state"] == "no-permission" and "CAP_NET_ADMIN" in row["detail"]
    assert netns.ethtool_l("va")["current"]["rx"] == 1


def test_missing_interface_is_reported_gone(netns):
    rc, report = netns.nic("verify", "--interface", "nosuch0", "--instance-type", "ecs.ga1.14xlarge")
    assert rc == 1 and report["interfaces"][0]["state"] == "gone"


def test_default_route_interface_is_the_only_one_touched(netns):
    netns.veth("va", 4, current=1)
    netns.veth("vb", 4, current=1)
    netns.ip("addr", "add", "10.77.0.1/24", "dev", "vb")
    netns.ip("route", "add", "default", "via", "10.77.0.2", "dev", "vb")
    rc, report = netns.nic("apply", "--instance-type", "ecs.ga1.4xlarge")
    assert rc == 0 and [r["interface"] for r in report["interfaces"]] == ["vb"]
    assert netns.ethtool_l("vb")["current"]["rx"] == 2
    assert netns.ethtool_l("va")["current"]["rx"] == 1


def test_apply_sets_xps_on_the_veths_real_queues(netns):
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.ga1.4xlarge")
    xps = report["interfaces"][0]["affinity"]["xps"]
    assert xps["state"] in ("applied", "ok"), xps
    cpus = report["cpus"]
    from agent.nic import affinity
    _, plan = affinity.spread(2, cpus)
    for q in range(2):
        assert affinity.parse_mask(netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus")) == plan[q]
    assert report["interfaces"][0]["affinity"]["irq"]["state"] == "none"  # veth has no queue interrupts


def test_unknown_instance_type_changes_nothing_and_says_how_to_fix_it(netns):
    netns.veth("va", 4, current=1)
    rc, report = netns.nic("apply", "--interface", "va", "--instance-type", "ecs.gn9.huge")
    row = report["interfaces"][0]
    assert rc == 1 and row["state"] == "unknown" and "[nic.instance_types]" in row["detail"]
    assert netns.ethtool_l("va")["current"]["rx"] == 1
