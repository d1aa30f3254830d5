"""The store's writer, in a process of its own.

Why: a Python process runs one thread of Python at a time. At a fleet's rate (a thousand
100-point batches a second) the gRPC side (framing, checks, fan-out to consumers) takes
~64 % of a core and the store side (rollups, zlib, SQLite) ~55 % (measured split this way);
in one process they waited on each other and the collector saturated near one core with
ack p99 in seconds (docs/benchmarks.md). Here the store side runs in a child process with an interpreter of
its own: the parent sends it each commit group as the bytes it received and gets back,
per batch, whether it was a duplicate and its points' series ids. An ack still follows
the commit: the parent acks a batch only after the child has answered for its group.

The child does nothing on its own account. It dies with its parent (PR_SET_PDEATHSIG, so a
`kill -9` of the collector leaves no writer behind to race the next one), ignores SIGINT
(Ctrl-C reaches the whole process group; the parent decides when to stop, then asks it to
flush and exit; systemd's SIGTERM goes to the parent only, KillMode=mixed), and a request it fails to serve comes back as an error for that group
(no ack: the agents send again). If the child dies, every later write fails with
`WriterGone`; the collector then exits non-zero and systemd restarts it whole, and the
agents replay what was not acknowledged.

The child holds whichever store `[store] backend` names: the SQLite store, or the
remote-write store (agent/collector/store/remote_write.py), whose encoding, compression and
HTTP wait then stay off the gRPC process the same way.

Messages, over one multiprocessing Pipe:
    parent -> child: ("write", received, [wire, ...]) | ("cleanup", now) | ("stop",)
    child -> parent: ("ready", info) once, then per request ("ok", value, state),
        ("error", text, state) or ("unavailable", text, state) (the store cannot take
        anything now: `StoreUnavailable`); `state` is the store's own account of itself
        ("" for the SQLite store), kept as `WriterProcess.state`.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path

from agent.collector.store import StoreUnavailable, WriteResult

log = logging.getLogger("egs-collector")
PR_SET_PDEATHSIG = 1


class WriterGone(RuntimeError):
    """The writer process is not there to answer."""


class WriterError(RuntimeError):
    """The writer process could not do what was asked (the store's own error, as text)."""


class WriterProcess:
    """A `SQLiteStore` in a child process: a `StoreWriter` (agent/collector/store)."""

    def __init__(self, store_args: dict, log_level: str = "warning", start_timeout: float = 600.0):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._proc = ctx.Process(target=_child, name="egs-collector-writer", daemon=True,
                                 args=(child, store_args, log_level, os.getpid()))
        self._proc.start()
        child.close()
        # Recovery (refolding unrolled batches after a crash) happens before "ready".
        if not self._conn.poll(start_timeout):
            self._proc.kill()
            raise WriterGone(f"the store writer did not start within {start_timeout:g} s")
        kind, info, _ = self._receive()
        if kind != "ready":
            self._proc.join(5)
            raise WriterError(f"the store could not be opened: {info}")
        self.path = Path(info["path"])
        self.recovered = info["recovered"]
        self.state: str = info.get("state", "")
        self.pid = self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def _receive(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise WriterGone(f"the store writer process exited (code {self.exitcode})") from None

    def _call(self, *message):
        with self._lock:  # one request at a time: the replies come back in order
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError):
                raise WriterGone(f"the store writer process exited (code {self.exitcode})") from None
            kind, value, self.state = self._receive()
        if kind == "unavailable":
            raise StoreUnavailable(value)
        if kind == "error":
            raise WriterError(value)
        return value

    def write(self, batches, received: float, wire: list[bytes] | None = None, points=None) -> list[WriteResult]:
        """As `SQLiteStore.write`; the child reads the batches from their bytes again."""
        if wire is None:
            wire = [b.SerializeToString() for b in batches]
        return [WriteResult(duplicate, n, sids) for duplicate, n, sids in self._call("write", received, list(wire))]

    def cleanup(self, now: float) -> dict:
        return self._call("cleanup", now)

    def close(self, timeout: float = 60.0) -> None:
        """Flush the rollups and stop the child; killed if it does not finish in time."""
        if self.alive:
            try:
                self._call("stop")
            except (WriterGone, WriterError) as e:
                log.error("store writer: %s", e)
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.error("store writer did not stop within %g s; killed (the next start rebuilds its rollups)", timeout)
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


def _child(conn, store_args: dict, log_level: str, parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the EOF on the pipe ends the child instead
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    # Ctrl-C reaches the whole process group: the parent handles it. SIGTERM keeps its
    # default (the unit's KillMode=mixed sends it to the parent only).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s writer: %(message)s")
    gc.set_threshold(20_000, 100, 1000)  # as in the parent: see agent/collector/cli.py

    from agent.proto import collector_pb2
    try:
        store = open_store(dict(store_args))
    except Exception as e:
        conn.send(("error", f"{describe(store_args)}: {type(e).__name__}: {e}", ""))
        return
    state = getattr(store, "state_text", str)
    conn.send(("ready", {"path": str(store.path), "recovered": store.recovered, "state": state()}, ""))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone without asking: as after a crash
            return
        kind = message[0]
        if kind == "stop":
            try:
                store.close()
                conn.send(("ok", None, ""))
            except Exception as e:
                conn.send(("error", f"{type(e).__name__}: {e}", ""))
            return
        try:
            if kind == "write":
                _, received, wire = message
                results = store.write([collector_pb2.Batch.FromString(w) for w in wire], received, wire)
                reply = [(r.duplicate, r.points, r.series) for r in results]
            elif kind == "cleanup":
                reply = store.cleanup(message[1])
            else:
                raise ValueError(f"unknown request {kind!r}")
        except StoreUnavailable as e:  # nothing can be stored now: no ack for the group
            conn.send(("unavailable", str(e), state()))
            continue
        except Exception as e:  # the disk or the database failed: that group gets no ack
            conn.send(("error", f"{type(e).__name__}: {e}", state()))
            continue
        conn.send(("ok", reply, state()))


def open_store(args: dict):
    """The store `args["backend"]` names ("sqlite" when absent), from the rest of `args`."""
    backend = args.pop("backend", "sqlite")
    if backend == "sqlite":
        from agent.collector.store.sqlite import SQLiteStore
        return SQLiteStore(**args)
    if backend == "remote_write":
        from agent.collector.store.remote_write import RemoteWriteStore
        return RemoteWriteStore(**args)
    raise ValueError(f"unknown store backend {backend!r}")


def describe(args: dict) -> str:
    """What a store's start failure names: its file, or its engine."""
    if args.get("backend") == "remote_write":
        return f"store {args.get('remote_write_url')} (ledger {Path(args['data_dir']) / 'ledger.db'})"
    return str(Path(args["data_dir"]) / "collector.db")
