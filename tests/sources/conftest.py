"""The sources room's own fixture (shared ones such as sim_out and short_dir are in
tests/conftest.py)."""
import pytest


@pytest.fixture
def restore_procfs():
    """psutil's PROCFS_PATH as it was: the host source points it at its configured procfs."""
    import psutil

    before = psutil.PROCFS_PATH
    yield
    psutil.PROCFS_PATH = before
