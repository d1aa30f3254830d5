"""The unit files in systemd/ pass systemd-analyze: `verify`, and `security --offline=true` with
an exposure of at most 2.0; the agent's keeps the GPU device nodes, CAP_NET_ADMIN and its
directories. The nic-apply drop-in (NIC apply mode) also passes `verify`; its exposure is
printed, not bounded. The collector's unit (egs-collector.service) is held to the same bound."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "egs-agent.service"
COLLECTOR_UNIT = ROOT / "systemd" / "egs-collector.service"
NIC_APPLY = ROOT / "systemd" / "nic-apply.conf"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (`make system-deps` installs it)")


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exposure(unit: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=true` of a unit file (drop-ins beside it apply too)."""
    result = subprocess.run([ANALYZE, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                            cwd=unit.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert m, result.stdout + result.stderr
    return float(m.group(1)), result.stdout


def unit_copy(folder: Path, drop_ins: tuple[Path, ...] = ()) -> Path:
    """The unit in `folder` with ExecStart on this checkout's console script, as `verify` checks
    that the program exists, and `drop_ins` in the `egs-agent.service.d/` beside it, where
    systemd-analyze reads them for a unit given by path."""
    exe = shutil.which("egs-agent") or str(ROOT / ".venv" / "bin" / "egs-agent")
    assert Path(exe).exists(), "no egs-agent console script: `make venv` (pip install -e .) installs it"
    copy = folder / "egs-agent.service"
    copy.write_text(UNIT.read_text().replace("/usr/bin/egs-agent", exe))
    for conf in drop_ins:
        (folder / "egs-agent.service.d").mkdir(exist_ok=True)
        shutil.copy(conf, folder / "egs-agent.service.d" / conf.name)
    return copy


@needs_analyze
def test_security_exposure_is_at_most_2(tmp_path):
    score, report = exposure(UNIT)
    print(f"exposure of egs-agent.service: {score}")
    assert score <= 2.0, report


@needs_analyze
def test_verify_passes_with_the_nic_apply_drop_in(tmp_path):
    copy = unit_copy(tmp_path, (NIC_APPLY,))
    result = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "egs-agent.service" not in result.stderr and "nic-apply.conf" not in result.stderr, result.stderr
    score, report = exposure(copy)
    # The drop-in was read: the settings it relaxes now count against the unit.
    for relaxed in ("~CAP_(DAC_*", "ProtectKernelTunables=", "ProtectProc="):
        lines = [line.strip() for line in report.splitlines() if relaxed in line]
        assert lines and lines[0].startswith("✗"), (relaxed, report)
    print(f"exposure of egs-agent.service with nic-apply.conf: {score} (without: {exposure(UNIT)[0]})")


def test_nic_apply_drop_in_relaxes_only_what_apply_mode_needs():
    s = unit_settings(NIC_APPLY)
    # root's file access for the IRQ and XPS files, not root: the user and the bounding set stay
    assert "User" not in s and "Group" not in s
    assert s["CapabilityBoundingSet"] == ["CAP_DAC_OVERRIDE"] and s["AmbientCapabilities"] == ["CAP_DAC_OVERRIDE"]
    # ProtectKernelTunables' effect kept, wider: all of /proc and /sys read-only, writes reopened
    # only for /proc/irq and NIC queue folders
    assert s["ProtectKernelTunables"] == ["no"] and s["ReadOnlyPaths"] == ["/proc /sys"]
    assert "/proc/kallsyms" in " ".join(s["InaccessiblePaths"]) and "/proc/kcore" in " ".join(s["InaccessiblePaths"])
    reopened = " ".join(s["ReadWritePaths"]).split()
    assert reopened[0] == "/proc/irq"
    assert all(re.fullmatch(r"-?/sys/class/net/[^/]+/queues", p) for p in reopened[1:]) and reopened[1:]
    assert s["ProtectProc"] == ["default"]
    assert not {"ProtectSystem", "ProtectHome", "SystemCallFilter", "DevicePolicy", "NoNewPrivileges"} & set(s)


@needs_analyze
def test_verify_passes(tmp_path):
    copy = unit_copy(tmp_path)
    result = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "egs-agent.service" not in result.stderr, result.stderr


def test_hardening_keeps_what_the_agent_needs():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["WatchdogSec"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"] and s["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    allowed = " ".join(s["DeviceAllow"])
    for device in ("char-nvidia-frontend", "char-nvidia-uvm", "/dev/kfd", "char-drm"):
        assert device in allowed
    assert s["RuntimeDirectory"] == ["egs-agent"] and s["StateDirectory"] == ["egs-agent"]
    assert s["User"] == ["egs-agent"]
    # the config's default socket and state dir are the unit's directories
    from agent import config

    defaults = {sec.name: sec for sec in config.CORE_SECTIONS}
    assert defaults["api"].keys["socket"].default.startswith("/run/egs-agent/")
    assert defaults["agent"].keys["state_dir"].default == "/var/lib/egs-agent"


def _check_tool(tool: str, args: list[str], path: Path, tmp_path: Path):
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        src = Path("/etc") / name
        if src.exists():
            shutil.copy(src, root / "etc" / name)
    result = subprocess.run([exe, f"--root={root}", *args, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


def test_sysusers_creates_the_user_in_the_gpu_groups(tmp_path):
    root, _ = _check_tool("systemd-sysusers", [], ROOT / "systemd" / "egs-agent.sysusers.conf", tmp_path)
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^egs-agent:x:\d+:\d+:.*:/var/lib/egs-agent:", passwd, re.M), passwd
    groups = {l.split(":")[0]: l.split(":")[3] for l in (root / "etc" / "group").read_text().splitlines()}
    assert "egs-agent" in groups["video"].split(",") and "egs-agent" in groups["render"].split(",")


def test_tmpfiles_creates_the_directories_with_their_modes(tmp_path):
    root = tmp_path / "root"
    # the user must exist for the ownership lines
    _check_tool("systemd-sysusers", [], ROOT / "systemd" / "egs-agent.sysusers.conf", tmp_path)
    exe = shutil.which("systemd-tmpfiles")
    if exe is None:
        pytest.skip("systemd-tmpfiles not installed")
    result = subprocess.run([exe, f"--root={root}", "--create", str(ROOT / "systemd" / "egs-agent.tmpfiles.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path, mode in (("run/egs-agent", 0o750), ("var/lib/egs-agent", 0o750), ("var/lib/egs-agent/recordings", 0o750)):
        st = (root / path).stat()
        assert st.st_mode & 0o7777 == mode, path


# --- egs-collector.service ------------------------------------------------------------------

@needs_analyze
def test_collector_unit_exposure_is_at_most_2():
    score, report = exposure(COLLECTOR_UNIT)
    print(f"exposure of egs-collector.service: {score}")
    assert score <= 2.0, report


@needs_analyze
def test_collector_unit_verifies(tmp_path):
    # The packaged unit runs /usr/bin/egs-collector; point a copy at this checkout's entry
    # point so `verify` checks everything else without needing the package installed.
    exe = Path(sys.executable).with_name("egs-collector")
    assert exe.exists(), f"{exe} is missing: `make venv` (pip install -e .) creates it"
    copy = tmp_path / COLLECTOR_UNIT.name
    copy.write_text(COLLECTOR_UNIT.read_text().replace("/usr/bin/egs-collector", str(exe)))
    out = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "egs-collector.service" not in out.stderr, out.stderr
