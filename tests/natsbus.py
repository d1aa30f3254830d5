"""Real NATS servers for the tests: `nats-server` (Debian's 2.9.10) with JetStream, alone or as a
3-node cluster on loopback, in the style of engines.py (free ports, a config file and a log in
the server's own directory, killed with the test process, kill -9 and restart on the same ports
and store). The fixtures `nats_server` and `nats_cluster` are in tests/conftest.py; they skip when
the binary is missing (`make system-deps` installs Debian's `nats-server` as root).

    srv = NatsServer(tmp_path).start()          # srv.url == "nats://127.0.0.1:<port>"
    cluster = NatsCluster(tmp_path).start()     # cluster.urls: the three client URLs
    cluster.kill9(1); ...; cluster.restart(1)   # same ports, same store; waits until it caught up

Readiness is read from each server's monitoring port (`http`, on a free loopback port):
`/healthz` answers 200 only once JetStream is up and, in a cluster, in contact with a meta leader
with its streams current (2.9.10 ignores `?js-enabled-only`: it answers ok even with JetStream
off, so a JetStream server is also asked `/jsz`, which says `disabled` when it is off). A cluster
is ready when every node is healthy, all name the same meta leader, and that leader sees the
other nodes as current peers: a stream with num_replicas=3 can then be placed.

Measured on this 2-core machine (2.9.10, nats-py 2.16, one asyncio client; by hand): a single
server is ready in ~0.06 s, a 3-node cluster in 0.2-0.6 s (once 1.2 s). Acknowledged publishes of
14 KB messages to a file stream, one publisher:
    1 node, R1:  ~5,200 msg/s (0.19 ms an ack) one at a time; 10-13k msg/s with 256 in flight
    3 nodes, R3: ~1,350 msg/s (0.75 ms an ack) one at a time; ~5,000 msg/s with 256 in flight
Each server stays at 17-55 MiB resident in these runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import engines
from engines import EngineError, _http, free_port
from engines import find_binary  # noqa: F401  (for callers: natsbus.find_binary, the fixtures' skip)

# The Go runtime's soft memory limit for each server (GOMEMLIMIT): a cluster is three of them on
# a 2-core machine shared with the rest of the suite. JetStream's own limits are in the config.
GO_MEMORY_LIMIT = "256MiB"
CLUSTER_NAME = "egs"


class NatsError(EngineError):
    pass


class NatsServer(engines._Engine):
    """One `nats-server` process: client port, monitoring port (`http`) and, as a cluster member,
    a route port, all on 127.0.0.1; its config (`nats.conf`), store (`store/`) and log
    (`nats.log`, appended across restarts) in `tmpdir`. `jetstream=False` starts a server
    without JetStream (a bus the collector must refuse). The process handling (`restart`,
    `kill9`, `stop`, `log_tail`, killed when the test process exits) is engines._Engine's."""

    binary_name = "nats-server"

    def __init__(self, tmpdir, name: str = "n1", port: int | None = None, cluster_port: int | None = None,
                 routes=(), jetstream: bool = True, http_port: int | None = None):
        super().__init__(tmpdir, port)
        self.name = name
        self.store = self.data = self.root / "store"
        self.log = self.root / "nats.log"
        self.config = self.root / "nats.conf"
        self.jetstream = jetstream
        self.http_port = http_port
        self.cluster_port = cluster_port
        self.routes = list(routes)  # route ports (127.0.0.1) of the cluster's members, this one included or not
        self._http_for: int | None = None  # the client port self.http_port was picked with

    # --- addresses ---
    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def clustered(self) -> bool:
        return self.cluster_port is not None

    # --- config ---
    def config_text(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
        ]
        if self.jetstream:
            # Memory streams bounded well below the Go memory limit; file streams up to 1 GB.
            lines.append(f'jetstream {{ store_dir: "{self.store}", max_memory_store: 64MB, max_file_store: 1GB }}')
        if self.clustered:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes if p != self.cluster_port)
            lines.append(f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{self.cluster_port}, "
                         f"routes: [{routes}] }}")
        return "\n".join(lines) + "\n"

    # --- lifecycle ---
    def _spawn_and_wait(self, timeout: float) -> bool:
        """engines._Engine's start (which retries on new ports when one was lost, unless `port`
        was given) and restart (same ports) call this: spawn, then wait until healthy."""
        if not self._fixed_port and self._http_for != self.port:
            self.http_port = free_port()  # a new client port from _Engine.start: a new monitoring port too
            self._http_for = self.port
        self.spawn()
        return self.wait_ready(timeout, raise_=False)

    def spawn(self) -> None:
        """Write the config and start the process; does not wait (NatsCluster starts all first)."""
        if self.binary is None:
            raise NatsError("nats-server is not installed (make system-deps installs it as root)")
        if self.http_port is None:
            self.http_port = free_port()
        if self.port is None:
            self.port = free_port()
        if self.jetstream:
            self.store.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting nats-server {self.name} on {self.url}\n".encode())
            log.flush()
            env = {**os.environ, "GOMEMLIMIT": GO_MEMORY_LIMIT}
            self.proc = engines.spawn([self.binary, "-c", str(self.config)], cwd=self.root, env=env,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        engines._LIVE.add(self)  # killed when the test process exits (engines' atexit)

    def healthy(self) -> bool:
        """/healthz says ok (JetStream up and, in a cluster, a meta leader in contact and this
        server's streams current) and, for a JetStream server, /jsz says it is enabled."""
        if not self.running:
            return False
        try:
            # A cluster member without a meta leader yet fails /healthz, and the server logs a
            # warning for each failed check: ask /jsz (silent) until it names a leader.
            if self.jetstream and self.clustered and not self.meta_leader():
                return False
            status, _ = _http(self.monitor_url + "/healthz", timeout=2)
            if status != 200:
                return False
            if self.jetstream and self.jsz().get("disabled"):
                return False
        except (OSError, ValueError):
            return False
        return self.running  # ours answered, not a squatter on the port

    def wait_ready(self, timeout: float = 20.0, raise_: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                self._reap(1)
                break
            if self.healthy():
                return True
            time.sleep(0.05)
        else:
            self.kill9()
        if raise_:
            raise NatsError(f"nats-server {self.name} not healthy on {self.url} after {timeout:g} s:\n{self.log_tail()}")
        return False

    # --- monitoring ---
    def monitor(self, path: str) -> dict:
        """GET a monitoring endpoint (/varz, /jsz?streams=true, /routez...) as JSON."""
        status, body = _http(self.monitor_url + path, timeout=5)
        if status != 200:
            raise NatsError(f"{path} on {self.name}: {status} {body[:300]!r}")
        return json.loads(body)

    def jsz(self, query: str = "") -> dict:
        return self.monitor("/jsz" + (f"?{query}" if query else ""))

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name as this server sees it (None: none yet)."""
        try:
            return self.jsz().get("meta_cluster", {}).get("leader") or None
        except (OSError, ValueError, NatsError):
            return None

    def stream_state(self, stream: str) -> dict | None:
        """This server's own copy of `stream` (its `state`: messages, first_seq, last_seq...),
        from /jsz; None when it holds no copy."""
        doc = self.jsz("streams=true")
        for account in doc.get("account_details") or []:
            for s in account.get("stream_detail") or []:
                if s.get("name") == stream:
                    return s.get("state", {})
        return None

    def __repr__(self) -> str:
        return f"NatsServer({self.name}, {self.url}, running={self.running})"


class NatsCluster:
    """`size` JetStream servers (n1, n2, ...) routed to each other on loopback, cluster `egs`, each
    in tmpdir/<name>. All ports are picked before the first server starts (every config names
    every route); a start that loses a port to another process is retried on new ones.

    Measured on this 2-core machine (2.9.10): ready (all healthy, a meta leader, every peer
    current) 0.2-0.6 s after the spawn. After a kill -9: a follower restarted learns the meta
    leader ~2 s later and has caught up its streams ~3 s after the restart; a stream whose
    leader was killed accepts publishes again after 5-10 s (a new stream leader; publishes in the
    gap time out or get no responders: `publish_acked` retries them); the meta leader killed,
    the other two elect a new one in ~6-7 s. The whole bus killed and restarted (`kill9_all`,
    `restart_all`): ready again ~10 s after, with every acknowledged message."""

    def __init__(self, tmpdir, size: int = 3):
        self.root = Path(tmpdir)
        self.size = size
        self.nodes: list[NatsServer] = []
        self._pick_ports()

    def _pick_ports(self) -> None:
        ports = [(free_port(), free_port(), free_port()) for _ in range(self.size)]
        routes = [cp for _, cp, _ in ports]
        self.nodes = [NatsServer(self.root / f"n{i + 1}", name=f"n{i + 1}", port=p, cluster_port=cp,
                                 routes=routes, http_port=hp)
                      for i, (p, cp, hp) in enumerate(ports)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, i: int) -> NatsServer:
        return self.nodes[i]

    def index_of(self, name: str) -> int:
        """The index of the node named `name` (a stream's leader from stream_info().cluster.leader)."""
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise KeyError(name)

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        if self.nodes[0].binary is None:
            raise NatsError("nats-server is not installed (make system-deps installs it as root)")
        for _ in range(3):
            for n in self.nodes:
                n.spawn()
            if self.wait_ready(timeout, raise_=False):
                return self
            lost = any(n._lost_port() for n in self.nodes)
            tails = "\n".join(f"[{n.name}]\n{n.log_tail(1500)}" for n in self.nodes)
            self.kill9_all()
            if not lost:
                break
            self._pick_ports()  # same directories, new ports
        raise NatsError(f"NATS cluster did not become ready in {timeout:g} s:\n{tails}")

    def wait_ready(self, timeout: float = 30.0, raise_: bool = True) -> bool:
        """Every running node healthy, all naming the same meta leader, and that leader seeing
        every other running node as a current peer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return True
            if not any(n.running for n in self.nodes):
                break
            time.sleep(0.05)
        if raise_:
            raise NatsError(f"NATS cluster not ready after {timeout:g} s")
        return False

    def _ready(self) -> bool:
        up = [n for n in self.nodes if n.running]
        if len(up) <= self.size // 2 or not all(n.healthy() for n in up):
            return False
        leaders = {n.meta_leader() for n in up}
        if len(leaders) != 1 or None in leaders:
            return False
        leader = leaders.pop()
        try:
            meta = self.nodes[self.index_of(leader)].jsz().get("meta_cluster", {})
        except (KeyError, OSError, ValueError, NatsError):
            return False
        current = {r["name"] for r in meta.get("replicas") or [] if r.get("current")}
        if not all(n.name in current for n in up if n.name != leader):
            return False
        # Every running node routed to every other running one (a meta leader can be agreed
        # on by a majority while one route is still coming up: seen under CI load).
        try:
            return all(n.monitor("/routez").get("num_routes", 0) >= len(up) - 1 for n in up)
        except (OSError, ValueError, NatsError):
            return False

    def meta_leader(self) -> int | None:
        """The index of the meta leader, as the running nodes agree on it (None: no agreement)."""
        leaders = {n.meta_leader() for n in self.nodes if n.running}
        if len(leaders) != 1 or None in leaders:
            return None
        return self.index_of(leaders.pop())

    def kill9(self, i: int) -> None:
        self.nodes[i].kill9()

    def restart(self, i: int, timeout: float = 30.0) -> NatsServer:
        """Node i again on its ports and store (stopped first if running); returns once it is
        healthy (meta leader in contact, its streams current) and the cluster is ready."""
        node = self.nodes[i].restart(timeout)
        self.wait_ready(timeout)
        return node

    def kill9_all(self) -> None:
        """The whole bus down at once."""
        for n in self.nodes:
            n.kill9()

    def restart_all(self, timeout: float = 30.0) -> "NatsCluster":
        """Every node again on its ports and store (after kill9_all or stop): all spawned first,
        since none is healthy before a quorum is back."""
        for n in self.nodes:
            n.stop()
        for n in self.nodes:
            n.spawn()
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"NatsCluster({', '.join(n.url for n in self.nodes)})"


# --- nats-py with test-friendly settings ------------------------------------------------------

async def connect(urls, **options):
    """A nats-py connection to `urls` (one URL or a list) that fails fast and reconnects fast
    (a test kills servers on purpose): 2 s to connect, 0.1 s between reconnects, no random order,
    and the refused reconnects to a killed server kept quiet (nats-py logs each one with its
    traceback otherwise). Options override these."""
    import nats

    async def quiet(e):  # the connection's own errors; a failing call still raises in the test
        pass

    servers = [urls] if isinstance(urls, str) else list(urls)
    settings = dict(connect_timeout=2, reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                    dont_randomize=True, allow_reconnect=True, error_cb=quiet)
    settings.update(options)
    return await nats.connect(servers=servers, **settings)


async def publish_acked(js, subject: str, data: bytes, headers: dict | None = None, *,
                        within: float = 15.0, attempt_timeout: float = 2.0):
    """js.publish until JetStream acknowledges it (returns the PubAck), retrying what a cluster
    answers while it elects a stream leader or the client reconnects: a timeout, no responders,
    503 (no quorum yet), a reconnecting or closed-for-now connection. Raises the last error
    after `within` seconds. Retry with the same Nats-Msg-Id: a publish that was stored but whose
    ack was lost comes back as a duplicate, not as a second copy."""
    import asyncio

    import nats.errors
    import nats.js.errors
    deadline = time.monotonic() + within
    while True:
        try:
            return await js.publish(subject, data, timeout=attempt_timeout, headers=headers)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError,
                nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError) as e:
            if time.monotonic() >= deadline:
                raise NatsError(f"publish to {subject} not acknowledged within {within:g} s: {e!r}") from e
        except nats.js.errors.APIError as e:
            if e.code != 503 or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.05)

