"""systemd/egs-collector.service is hardened and valid, per systemd's own analyzers."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "egs-collector.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (make system-deps installs it)")


def test_collector_unit_exposure_is_at_most_2():
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def test_collector_unit_verifies(tmp_path):
    # The packaged unit runs /usr/bin/egs-collector; point a copy at this checkout's entry
    # point so `verify` checks everything else without needing the package installed.
    exe = Path(sys.executable).with_name("egs-collector")
    assert exe.exists(), f"{exe} is missing: `make venv` (pip install -e .) creates it"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/bin/egs-collector", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "egs-collector.service" not in out.stderr, out.stderr
