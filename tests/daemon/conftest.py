"""Fixtures for the daemon's tests; the helpers themselves live in daemon_helpers.py
(pytest runs with --import-mode=importlib, so test modules cannot import conftest)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_helpers import restore_procfs, short_dir, sim_out, start_daemon  # noqa: E402,F401
