"""Apply mode under the packaged unit's sandbox: the kernel's own answers, not mocks. A procfs
mounted hidepid=invisible (what ProtectProc=invisible mounts), a read-only bind mount (what
ProtectKernelTunables= does to /proc/irq and /sys), and the agent's user with only the unit's
ambient CAP_NET_ADMIN, made with setpriv. Everything runs in `unshare -m` children, so no
mount outlives its test."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.nic import affinity, sandbox

pytestmark = pytest.mark.root  # mount namespaces, procfs mounts, setpriv

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
# The unit's user: not root, no groups, CAP_NET_ADMIN kept as AmbientCapabilities= keeps it.
AGENT_USER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin"]
# The same with the nic-apply drop-in's extra capability.
AGENT_USER_WITH_DROP_IN = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=-all,+net_admin,+dac_override", "--ambient-caps=-all,+net_admin,+dac_override"]


def _needs_mount_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for mount namespaces")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (util-linux)")


def in_mount_ns(setup: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run shell `setup` (mounts) and then argv in a private mount namespace."""
    script = f"set -e; {setup}; exec \"$@\""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def open_dir():
    """A scratch folder the unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="egs-sandbox-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def py(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def test_procfs_options_come_from_the_last_proc_mount_at_the_point():
    mountinfo = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
                 "65 22 0:39 / /proc rw,nosuid shared:5 - proc proc rw,hidepid=invisible,gid=110\n"
                 "66 22 0:40 / /proc/sys ro - proc proc rw\n")
    assert sandbox.procfs_options(mountinfo, "/proc") == {"rw": "", "hidepid": "invisible", "gid": "110"}
    assert sandbox.procfs_options(mountinfo, "/elsewhere") is None


def test_a_fixture_tree_never_counts_as_hidden(tree):
    assert sandbox.hidden_processes(tree.procfs) is None


def test_hidepid_proc_hides_root_processes_from_the_agent_user_and_says_which_setting(open_dir):
    _needs_mount_namespaces()
    proc = open_dir / "proc"
    proc.mkdir()
    code = (f"import json, os; from agent.nic import sandbox; "
            f"print(json.dumps([sandbox.hidden_processes('{proc}'), os.path.exists('{proc}/1')]))")
    mount = f"mount -t proc -o hidepid=invisible proc {proc}"
    agent = in_mount_ns(mount, NOBODY + py(code))
    assert agent.returncode == 0, agent.stderr
    why, pid1_visible = json.loads(agent.stdout)
    # the kernel agrees: init, a root process, is not listed for this user
    assert pid1_visible is False
    assert "hidepid=invisible" in why and "ProtectProc=default" in why and "uid 65534" in why
    # root is not subject to hidepid, so a root shell running `egs-agent nic apply` is not told off
    root = in_mount_ns(mount, py(code))
    assert json.loads(root.stdout) == [None, True], root.stderr


def _tree_code(tree, apply: bool) -> str:
    return (f"import json; from agent.nic import affinity; "
            f"print(json.dumps([affinity.irq_pass('eth0', 2, [0, 1, 2, 3], '{tree.sysfs}', '{tree.procfs}', {apply}), "
            f"affinity.xps_pass('eth0', 2, [0, 1, 2, 3], '{tree.sysfs}', {apply})]))")


def test_read_only_kernel_files_block_apply_with_the_drop_in_named_and_change_nothing(tree):
    _needs_mount_namespaces()
    tree.nic("eth0", 2, {61: "eth0-TxRx-0", 62: "eth0-TxRx-1"})
    root = tree.procfs.parent
    read_only = f"mount --bind {root} {root}; mount -o remount,bind,ro {root}"
    r = in_mount_ns(read_only, py(_tree_code(tree, apply=True)))
    assert r.returncode == 0, r.stderr
    irq, xps = json.loads(r.stdout)
    for part in (irq, xps):
        assert part["state"] == "blocked", part
        assert part["detail"].startswith(sandbox.DROP_IN)
        assert "read-only mount" in part["detail"] and "ProtectKernelTunables=" in part["detail"]
        # blocked even though the values differ, and reported for each file that differs
        assert [row["want"] != row["have"] for row in part["rows"]] == [True, True]
    assert (tree.affinity(61), tree.xps("eth0", 0)) == ("0-3", "0")
    # verify never writes, so the same sandbox is no problem for it
    r = in_mount_ns(read_only, py(_tree_code(tree, apply=False)))
    assert [p["state"] for p in json.loads(r.stdout)] == ["mismatch", "mismatch"], r.stderr


def _veth_pass(netns, folder: Path, user: list[str], action: str = "apply") -> dict:
    """One `egs-agent nic` pass on veth `va` as `user`, with /proc mounted as ProtectProc=invisible does."""
    proc = folder / "proc"
    proc.mkdir(exist_ok=True)
    config = folder / "agent.toml"
    config.write_text(f'[nic]\nprocfs = "{proc}"\n')
    config.chmod(0o644)
    argv = ["ip", "netns", "exec", netns.name] + user + [
        PYTHON, "-m", "agent.cli", "nic", action, "--interface", "va", "--instance-type", "ecs.ga1.4xlarge",
        "--json", "--config", str(config)]
    r = in_mount_ns(f"mount -t proc -o hidepid=invisible proc {proc}", argv)
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def test_the_packaged_units_privileges_block_xps_and_hide_irqbalance(netns, open_dir):
    _needs_mount_namespaces()
    netns.veth("va", 4, current=2)  # already at the requirement: no channel change needed
    before = [netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus") for q in range(2)]
    report = _veth_pass(netns, open_dir, AGENT_USER)
    row = report["interfaces"][0]
    assert report["ok"] is False and row["state"] == "ok"
    xps = row["affinity"]["xps"]
    assert xps["state"] == "blocked" and "CAP_DAC_OVERRIDE" in xps["detail"], xps
    assert report["apply_blocked"].startswith(sandbox.DROP_IN) and "xps_cpus" in report["apply_blocked"]
    assert report["irqbalance"]["visible"] is False and report["irqbalance"]["detail"].startswith("unknown: ")
    # a veth has no queue interrupts, so the hidden irqbalance blocks nothing here
    assert row["affinity"]["irq"]["state"] == "none"
    assert [netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus") for q in range(2)] == before


def test_the_drop_ins_capability_lets_the_agent_user_set_xps(netns, open_dir):
    _needs_mount_namespaces()
    netns.veth("va", 4, current=2)
    report = _veth_pass(netns, open_dir, AGENT_USER_WITH_DROP_IN)
    xps = report["interfaces"][0]["affinity"]["xps"]
    assert xps["state"] == "applied" and report["apply_blocked"] is None, report
    # read back by the manager, and by root outside the agent's process
    assert [netns.read(f"/sys/class/net/va/queues/tx-{q}/xps_cpus").strip() for q in range(2)] == \
        [affinity.format_mask(set(r["want"])) for r in xps["rows"]]


def test_verify_mode_is_not_blocked_by_the_packaged_unit(netns, open_dir):
    _needs_mount_namespaces()
    netns.veth("va", 4, current=2)
    report = _veth_pass(netns, open_dir, AGENT_USER, action="verify")
    assert report["apply_blocked"] is None
    assert report["interfaces"][0]["affinity"]["xps"]["state"] in ("ok", "mismatch")
