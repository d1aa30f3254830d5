"""Real time-series engines for the tests: VictoriaMetrics and Prometheus as processes on
loopback, a remote-write client with no dependency, PromQL helpers, and a TCP proxy that
delays or refuses (a slow or flapping engine). The fixtures `victoria_metrics` and
`prometheus_engine` are in tests/conftest.py; they skip when the binary is missing
(`make system-deps` installs Debian's `victoria-metrics` and `prometheus` as root).

    vm = VictoriaMetrics(tmp_path).start()
    remote_write(vm.write_url, [({"__name__": "egs_x", "host": "h"}, [(ts_ms, 1.0)])])
    vm.flush()                                   # VictoriaMetrics: searchable now (no-op on Prometheus)
    count_samples(vm.query_url, 'egs_x{host="h"}', start_s, end_s)

Every engine runs with its data and its log (`engine.log`, appended across restarts) in its own
directory, bound to 127.0.0.1 on a port picked free (a start that loses the port to another
process is retried on a new one; `restart()` keeps the port and the data). A started engine is
killed when the test process exits, however it exits (PR_SET_PDEATHSIG, and atexit).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# The Go runtime's soft memory limit for each engine (Go >= 1.19 reads GOMEMLIMIT): engines
# share a 2-core machine with the rest of the suite, so they are kept small.
GO_MEMORY_LIMIT = "512MiB"

_LIVE: set["_Engine"] = set()


def find_binary(name: str) -> str | None:
    """`name` on PATH, or in /usr/sbin, /usr/bin (a non-root PATH may lack sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/usr/local/bin"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec (fallback only)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_SETPRIV = find_binary("setpriv")  # util-linux (Essential on Debian): --pdeathsig since 2.33


def spawn(argv: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start `argv` so that it is killed when the test process dies.

    With util-linux's setpriv the death signal is set by an exec'd wrapper, so Popen passes no
    preexec_fn and spawns with vfork: no Python and no pthread_atfork handler runs in the child.
    A preexec_fn forces fork(), and in a test process that has run gRPC, gRPC's fork handlers
    then run in the child; CI saw such a child die before its exec ("epoll_wait error: Bad file
    descriptor" in the engine's log and no engine)."""
    if _SETPRIV:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *argv], **popen_kwargs)
    return subprocess.Popen(argv, preexec_fn=_die_with_parent, **popen_kwargs)


def _http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class EngineError(AssertionError):
    pass


class _Engine:
    """One engine process. Subclasses give the binary, the ready path and the arguments."""

    binary_name = ""
    ready_path = ""
    write_path = "/api/v1/write"

    def __init__(self, tmpdir, port: int | None = None, extra_args: list[str] | tuple = ()):
        self.root = Path(tmpdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.log = self.root / "engine.log"
        self.port = port
        self._fixed_port = port is not None
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.binary = find_binary(self.binary_name)

    # --- addresses ---
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def write_url(self) -> str:
        return self.url + self.write_path

    @property
    def query_url(self) -> str:
        """The base of the Prometheus HTTP API (append /api/v1/query_range, /api/v1/series...)."""
        return self.url

    # --- lifecycle ---
    def args(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Files the engine needs before it starts (a config file)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> "_Engine":
        if self.binary is None:
            raise EngineError(f"{self.binary_name} is not installed (make system-deps installs it as root)")
        if self.running:
            return self
        self.data.mkdir(parents=True, exist_ok=True)
        self.prepare()
        tries = 1 if self._fixed_port else 5
        for attempt in range(tries):
            if not self._fixed_port:
                self.port = free_port()
            if self._spawn_and_wait(timeout):
                return self
            if not (self._lost_port() or self._died_before_exec()):
                break
        raise EngineError(f"{self.binary_name} did not become ready on {self.url}:\n{self.log_tail()}")

    def restart(self, timeout: float = 30.0) -> "_Engine":
        """Stop (gracefully, if still running) and start again: same data directory, same port."""
        self.stop()
        for _ in range(3):  # a child that died before its exec is spawned again (see spawn())
            if self._spawn_and_wait(timeout):
                return self
        raise EngineError(f"{self.binary_name} did not come back on {self.url}:\n{self.log_tail()}")

    def kill9(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap(10)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:  # not expected after SIGKILL; never leave it behind
                self.proc.kill()
                self.proc.wait(5)
        _LIVE.discard(self)

    def _spawn_and_wait(self, timeout: float) -> bool:
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.binary_name} on {self.url}\n".encode())
            log.flush()
            env = {**os.environ, "GOMEMLIMIT": GO_MEMORY_LIMIT}
            self.proc = spawn([self.binary, *self.args(), *self.extra_args], cwd=self.root, env=env,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reap(1)
                return False
            try:
                status, _ = _http(self.url + self.ready_path, timeout=2)
                if status == 200 and self.running:  # ours answered, not a squatter on the port
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        self.kill9()
        return False

    def _lost_port(self) -> bool:
        return "address already in use" in self.log_tail(since_start=True)

    def _died_before_exec(self) -> bool:
        """The child exited and wrote nothing of the engine's own (see spawn())."""
        if self.running:
            return False
        lines = [ln for ln in self.log_tail(since_start=True).splitlines() if ln.strip()]
        return all(ln.startswith("---") or "epoll" in ln for ln in lines)

    def log_tail(self, chars: int = 4000, since_start: bool = False) -> str:
        try:
            text = self.log.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        if since_start:
            text = text[getattr(self, "_mark", 0):]
        return text[-chars:].decode(errors="replace")

    def flush(self) -> None:
        """Make everything accepted so far visible to queries (needed by VictoriaMetrics only)."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url}, running={self.running})"


class VictoriaMetrics(_Engine):
    """Single-node VictoriaMetrics (Debian's 1.79). Remote write at /api/v1/write; also
    /api/v1/import/prometheus (text format) through `import_text`.

    Measured on 1.79.5 (tests/collector/test_engines.py and by hand, this 2-core machine):
    - A new series is searchable about 10 s after its first write, or about 1 s after
      `flush()` (/internal/force_flush); a sample of a known series about 1 s after, or at once
      after `flush()`. Poll (`wait_samples`) rather than sleep.
    - A kill -9 loses what VictoriaMetrics acknowledged (204) in roughly the last 5-10 s: new
      series and their samples written 2-4 s before the kill were gone after the restart, even
      when flushed and already visible to queries; 6 s (flushed) or 11 s (not) were kept. A
      clean stop (`stop()`, `restart()`) keeps everything. So a kill -9 test can only hold
      VictoriaMetrics to what it had for ~10 s; Prometheus (its WAL) keeps every acknowledged
      sample over a kill -9.
    """

    binary_name = "victoria-metrics"
    ready_path = "/health"

    def args(self) -> list[str]:
        return [
            f"-storageDataPath={self.data}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            # Identical samples (same series, same millisecond) are stored once: a replayed batch
            # leaves no second copy. Applied when parts merge and when a query reads them.
            "-dedup.minScrapeInterval=1ms",
            # 1.79 accepts up to 100y; 10y is long enough that no test or demo sample is dropped.
            "-retentionPeriod=10y",
            # Samples are visible to queries as soon as they are flushed (default: 30 s later).
            "-search.latencyOffset=0s",
            # No response cache: tests write into the past and read straight back.
            "-search.disableCache",
            # Caches bounded in bytes (-memory.allowedPercent is a share of the whole machine).
            "-memory.allowedBytes=128MiB",
            "-loggerLevel=INFO",
            "-http.shutdownDelay=0s",
        ]

    def flush(self) -> None:
        """1.79 keeps just-written rows in memory for up to about a second before they are
        searchable (and before they are on disk: a kill -9 loses them); force them out."""
        status, body = _http(self.url + "/internal/force_flush", timeout=10)
        if status != 200:
            raise EngineError(f"force_flush: {status} {body[:200]!r}")

    def import_text(self, text: str) -> None:
        """Prometheus exposition lines (`name{labels} value timestamp_ms`) into the engine."""
        status, body = _http(self.url + "/api/v1/import/prometheus", data=text.encode())
        if status // 100 != 2:
            raise EngineError(f"import: {status} {body[:500]!r}")


class Prometheus(_Engine):
    """Prometheus (Debian's 2.42) as a remote-write receiver with no scrape targets."""

    binary_name = "prometheus"
    ready_path = "/-/ready"
    # The out-of-order window (tsdb, since 2.39) lets a replayed or late sample in, up to 30 days
    # old; an identical sample at an identical timestamp is then a no-op, not an error.
    CONFIG = ("global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n"
              "storage:\n  tsdb:\n    out_of_order_time_window: 30d\n"
              "scrape_configs: []\n")

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    def prepare(self) -> None:
        self.config.write_text(self.CONFIG)

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=10y",
            "--web.enable-admin-api",        # snapshot / delete_series for tests that need them
            "--log.level=info",
        ]


# --- remote write (protobuf + snappy, protocol 1.0) with no dependency ----------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _snappy_literal(data: bytes) -> bytes:
    """A valid snappy block that stores `data` as literals (no compression): enough for an
    engine to decode, and no library needed."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


def encode_write_request(series) -> bytes:
    """series: iterable of (labels dict with __name__, [(timestamp_ms, value), ...])."""
    body = bytearray()
    for labels, samples in series:
        ts = bytearray()
        for name in sorted(labels):
            ts += _field(1, _field(1, name.encode()) + _field(2, str(labels[name]).encode()))
        for t_ms, value in samples:
            ts += _field(2, b"\x09" + struct.pack("<d", float(value)) + b"\x10" + _varint(int(t_ms)))
        body += _field(1, bytes(ts))
    return bytes(body)


def remote_write(write_url: str, series, timeout: float = 10.0) -> tuple[int, str]:
    """POST one remote-write 1.0 request; returns (HTTP status, body text). Does not raise on 4xx/5xx."""
    payload = _snappy_literal(encode_write_request(series))
    status, body = _http(write_url, data=payload, timeout=timeout, headers={
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0"})
    return status, body.decode(errors="replace")


# --- queries through the Prometheus HTTP API --------------------------------------------------

def _api(url: str, path: str, params: dict) -> dict:
    status, body = _http(f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}", timeout=30)
    try:
        doc = json.loads(body)
    except ValueError:
        raise EngineError(f"{path}: {status} {body[:500]!r}") from None
    if status != 200 or doc.get("status") != "success":
        raise EngineError(f"{path} {params}: {status} {doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


def promql(url: str, query: str, time: float | None = None) -> list[dict]:
    """The `result` of GET /api/v1/query (a vector: [{"metric": {...}, "value": [t, "v"]}])."""
    params = {"query": query}
    if time is not None:
        params["time"] = f"{time:.3f}"
    return _api(url, "/api/v1/query", params)["result"]


def promql_range(url: str, query: str, start: float, end: float, step: float) -> list[dict]:
    """The `result` of GET /api/v1/query_range (a matrix)."""
    return _api(url, "/api/v1/query_range", {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                             "step": f"{step:g}"})["result"]


def _closed_ranges(url: str) -> bool:
    """Whether the engine's range selectors include their start: Prometheus before 3.0. Asked
    every time (cheap), since a later engine may get the same port."""
    try:
        version = str(_api(url, "/api/v1/status/buildinfo", {}).get("version", ""))
    except EngineError:
        version = ""
    major = version.split(".")[0]  # VictoriaMetrics answers {} here
    return major.isdigit() and int(major) < 3


def series_counts(url: str, selector: str, start: float, end: float) -> dict[frozenset, int]:
    """Samples stored per series with start <= timestamp <= end (seconds, to the millisecond),
    counted by the engine itself (count_over_time). A replayed sample that was stored twice
    counts twice."""
    # Range selectors are closed [t - w, t] in Prometheus 2.x and left-open (t - w, t] in
    # VictoriaMetrics and Prometheus 3: the window is sized for the engine at hand.
    window_ms = round((end - start) * 1000) + (0 if _closed_ranges(url) else 1)
    if window_ms < 1:
        return {}
    out = {}
    for r in promql(url, f"count_over_time({selector}[{window_ms}ms])", time=end):
        out[frozenset(r["metric"].items())] = int(float(r["value"][1]))
    return out


def count_samples(url: str, selector: str, start: float, end: float) -> int:
    """All samples of `selector` with start <= timestamp <= end, all series together."""
    return sum(series_counts(url, selector, start, end).values())


def wait_samples(engine: "_Engine", selector: str, start: float, end: float, at_least: int,
                 timeout: float = 15.0) -> int:
    """Poll (flushing the engine each time) until `selector` has at least `at_least` samples in
    [start, end]; returns the count then (check it for == too: more means a duplicate)."""
    deadline = time.monotonic() + timeout
    while True:
        engine.flush()
        got = count_samples(engine.query_url, selector, start, end)
        if got >= at_least or time.monotonic() > deadline:
            if got < at_least:
                raise EngineError(f"{selector}: {got} samples after {timeout:g} s, expected >= {at_least}")
            return got
        time.sleep(0.1)


# --- a slow or flapping engine ----------------------------------------------------------------

class DelayProxy:
    """A TCP proxy on 127.0.0.1:`port` to target_host:target_port that holds every chunk it
    forwards for `delay_s` (settable while it runs) before passing it on; `direction` picks which
    way: "both" (default; a request and its answer are each held at least once), "up" (to the
    engine) or "down" (to the client). `refuse()` closes new connections at once (and, with
    drop=True, the open ones too); `resume()` accepts again. At most `max_connections` are
    proxied at once (two threads each); more are closed. `close()` stops everything."""

    def __init__(self, target_host: str, target_port: int, delay_s: float = 0.0, direction: str = "both",
                 max_connections: int = 32, chunk: int = 256 * 1024):
        assert direction in ("both", "up", "down")
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.direction = direction
        self.max_connections = max_connections
        self.chunk = chunk
        self.refusing = False
        self.accepted = 0
        self.refused = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        # id -> [client socket, engine socket, its two pump threads, pumps still running]
        self._conns: dict[int, list] = {}
        self._next_id = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))  # the kernel's free port: no race
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"delayproxy-{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def set_delay(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def refuse(self, drop: bool = False) -> None:
        self.refusing = True
        if drop:
            self.drop()

    def resume(self) -> None:
        self.refusing = False

    def drop(self) -> None:
        """Close every proxied connection now."""
        with self._lock:
            conns = list(self._conns.values())
        for a, b, _, _ in conns:
            self._shut(a)
            self._shut(b)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._shut(self._listener)
        self._acceptor.join(5)
        with self._lock:
            threads = [t for _, _, ts, _ in self._conns.values() for t in ts]
        self.drop()
        for t in threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _shut(s: socket.socket) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.2)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                full = len(self._conns) >= self.max_connections
            if self.refusing or full or self._closed.is_set():
                self.refused += 1
                self._shut(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self.refused += 1
                self._shut(client)  # the engine is down: so is the proxy, for this client
                continue
            self.accepted += 1
            with self._lock:
                cid = self._next_id
                self._next_id += 1
                threads = [threading.Thread(target=self._pump, args=(cid, client, upstream, "up"), daemon=True),
                           threading.Thread(target=self._pump, args=(cid, upstream, client, "down"), daemon=True)]
                self._conns[cid] = [client, upstream, threads, 2]
            for t in threads:
                t.start()

    def _pump(self, cid: int, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while not self._closed.is_set():
                data = src.recv(self.chunk)
                if not data:
                    break
                if self.direction in ("both", way) and self.delay_s > 0:
                    if self._closed.wait(self.delay_s):
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end both, so the other pump and the peer see it.
            self._shut(src)
            self._shut(dst)
            with self._lock:
                entry = self._conns[cid]
                entry[3] -= 1
                if entry[3] == 0:
                    del self._conns[cid]


@atexit.register
def _kill_leftovers() -> None:
    for engine in list(_LIVE):
        try:
            engine.kill9()
        except Exception:
            pass
