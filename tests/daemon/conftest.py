"""The daemon room's own fixture: `egs-agent run` as a process (the helpers themselves live in
tests/daemon_helpers.py; shared fixtures such as short_dir and sim_out in tests/conftest.py)."""
from pathlib import Path

import pytest

from daemon_helpers import DaemonProcess


@pytest.fixture
def start_daemon():
    started: list[DaemonProcess] = []

    def start(config: Path, socket: Path, env=None, prefix=None, ready=True) -> DaemonProcess:
        d = DaemonProcess(config, socket, env, prefix)
        started.append(d)
        return d.wait_ready() if ready else d

    yield start
    for d in started:
        d.stop()
