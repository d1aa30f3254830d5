"""Settings and fixtures every room's tests share; a room's own fixtures are in its conftest.

Test modules import helpers by name from this folder (pyproject's `pythonpath` puts it on
sys.path; the suite runs with --import-mode=importlib, so conftest itself is never imported):
`sim_paths` (the simulated vendor libraries), `pki` (a throwaway CA), `collector_procs` (the
collector and agents as processes), `daemon_helpers` (configs, the CLI, a daemon process),
`alarm_helpers` (fakes for the alarm engine).

Hypothesis profiles for the property-based (fuzz) tests: `ci`, the short profile `make test`
runs, and `long`, the soak profile of `make fuzz` (HYPOTHESIS_PROFILE=long). Both are
deadline-free (the collector's tests go through real gRPC calls, whose first call is slow)
and keep no example database in the tree.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import sim_paths
from collector_procs import AgentProc, CollectorProc, wait_for
from pki import PKI

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("long", max_examples=3000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Every simulated event wait returns within 50 ms (native/sim/README.md), here and in the
# daemons the tests start: a core's stop waits for its event thread's current wait (500 ms by
# default), and the suite stops hundreds of cores.
os.environ.setdefault("EGS_SIM_EVENT_WAIT_MAX_MS", "50")


# --- the simulated vendor libraries (daemon, sources, native, sim, alarms) -------------------

@pytest.fixture(scope="session")
def sim_out() -> Path:
    return sim_paths.build_sim()  # a failing build is a failure, not a skip


# --- short paths for Unix sockets (daemon, config, sources) ----------------------------------

@pytest.fixture
def short_dir():
    """A directory under /tmp: socket paths are limited to 107 bytes, pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="egsd-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the collector and agents as processes (collector, stream, e2e) --------------------------

@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    import cryptography  # noqa: F401  (a test extra: `make test` installs it, so no skip)
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def collector_factory(tmp_path, pki):
    made: list[CollectorProc] = []

    def make(name: str = "c", plaintext: bool = False, extra: str = "") -> CollectorProc:
        c = CollectorProc(tmp_path / name, pki, plaintext, extra)
        c.root.mkdir(parents=True, exist_ok=True)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def agent_factory(tmp_path, pki):
    made: list[AgentProc] = []

    def make(host: str, endpoints: list[str], name: str | None = None, **kw) -> AgentProc:
        root = tmp_path / (name or f"agent-{host}")
        root.mkdir(parents=True, exist_ok=True)
        a = AgentProc(root, host, endpoints, pki, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


@pytest.fixture
def wait():
    return wait_for


@pytest.fixture
def daemons():
    """Daemons a test started, stopped after it (make_daemon in daemon_helpers)."""
    started = []
    yield started
    for d in started:
        d.stop()


# --- real time-series engines on loopback (engines.py; the collector's remote-write store) ------

def _engine_fixture(cls, tmp_path):
    import engines
    if engines.find_binary(cls.binary_name) is None:
        pytest.skip(f"{cls.binary_name} is not installed: `make system-deps` installs Debian's "
                    f"{cls.binary_name} package when run as root with apt-get")
    engine = cls(tmp_path / cls.binary_name)
    try:
        yield engine.start()
    finally:
        engine.stop()


@pytest.fixture
def victoria_metrics(tmp_path):
    """A started VictoriaMetrics (engines.VictoriaMetrics) in tmp_path; stopped after the test."""
    import engines
    yield from _engine_fixture(engines.VictoriaMetrics, tmp_path)


@pytest.fixture
def prometheus_engine(tmp_path):
    """A started Prometheus remote-write receiver (engines.Prometheus) in tmp_path; stopped after."""
    import engines
    yield from _engine_fixture(engines.Prometheus, tmp_path)


# --- real NATS servers on loopback (natsbus.py; the collectors' bus) ---------------------------

def _nats_skip_unless_installed() -> None:
    import natsbus
    if natsbus.find_binary(natsbus.NatsServer.binary_name) is None:
        pytest.skip("nats-server is not installed: `make system-deps` installs Debian's nats-server "
                    "package when run as root with apt-get")


@pytest.fixture
def nats_server(tmp_path):
    """A started single nats-server with JetStream (natsbus.NatsServer) in tmp_path; stopped after."""
    import natsbus
    _nats_skip_unless_installed()
    server = natsbus.NatsServer(tmp_path / "nats")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path):
    """A started 3-node JetStream cluster (natsbus.NatsCluster) in tmp_path, ready for streams with
    num_replicas=3; every node stopped after the test."""
    import natsbus
    _nats_skip_unless_installed()
    cluster = natsbus.NatsCluster(tmp_path / "nats", size=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
