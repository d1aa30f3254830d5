"""The local API: gRPC over the daemon's Unix socket.

Servicers stay thin: `Status` returns the snapshot the main loop publishes each tick (so a
status call never waits on a source or a component), `Query` reads the windows, `Watch`
streams from a `WatchHub` subscription. Features add their own services through their
component's `grpc_services()`.

Access control is the socket file itself: mode `api.socket_mode` (0660) and group
`api.socket_group`, set right after binding. gRPC creates the socket under the process
umask (systemd's default 0022 leaves no write bit for group/other, and connecting needs
write permission), so the socket is never more open than configured, only briefly less.
"""
from __future__ import annotations

import asyncio
import grp
import logging
import math
import os
import socket
import stat
import threading
from concurrent import futures
from pathlib import Path
from typing import Callable, NamedTuple

import grpc

from agent.config import ConfigError
from agent.metrics import BY_NAME, agent_metrics, unknown_hint
from agent.proto import agent_pb2, agent_pb2_grpc
from agent.api import bridge
from agent.api.watch import WatchHub
from agent.windows import STATS, Windows
from agent.threads import name_os_thread

log = logging.getLogger("egs-agent")

MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class SocketBusy(RuntimeError):
    """Another process is serving on the socket path."""


def prepare_socket_path(path: str) -> None:
    """Make the directory; remove a stale socket left by a crash, refuse a live one."""
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path is {len(path.encode())} bytes; Unix sockets allow {MAX_SOCKET_PATH}",
                          key="api.socket")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketBusy(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        p.unlink(missing_ok=True)  # nobody listens: left over from a process that died
        return
    except OSError:
        return  # e.g. permission denied: let bind report it
    finally:
        probe.close()
    raise SocketBusy(f"another process is serving on {path} (is egs-agent already running?)")


def apply_socket_permissions(path: str, mode: int, group: str, locator=None) -> None:
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            message = f"no such group {group!r}"
            raise (locator.error(("api", "socket_group"), message) if locator is not None
                   else ConfigError(message, key="api.socket_group")) from None
        os.chown(path, -1, gid)
    os.chmod(path, mode)


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class AgentView(NamedTuple):
    """What the local API reads of the agent; every part is safe to use from any thread."""

    status_json: Callable[[], str]  # the Status document (agent.api.status.StatusDocument.json)
    windows: Windows
    hub: WatchHub
    clock: Callable[[], float]
    simulated: bool


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, view: AgentView):
        self.view = view

    def Status(self, request, context):
        return agent_pb2.StatusReply(json=self.view.status_json(), simulated=self.view.simulated)

    def Query(self, request, context):
        windows = self.view.windows
        metric = request.metric
        if metric not in BY_NAME and metric not in windows.metrics():
            known = set(agent_metrics()) | set(windows.metrics())
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown metric {metric[:200]!r}: {unknown_hint(metric, known)}")
        stat_name = request.stat or "avg"
        if stat_name not in STATS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown statistic {stat_name!r} (known: {', '.join(STATS)})")
        window = request.window_seconds or windows.sizes[0]
        if not (math.isfinite(window) and 1 <= window <= windows.retention - 1):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"window {window:g} s is outside what is kept (1..{windows.retention - 1} s; configured: "
                          f"{', '.join(f'{s} s' for s in windows.sizes)})")
        now = self.view.clock()
        reply = agent_pb2.QueryReply(metric=metric, unit=BY_NAME[metric].unit if metric in BY_NAME else "",
                                     window_seconds=window, stat=stat_name, ts=now, simulated=self.view.simulated)
        wanted = dict(request.labels)
        for labels in sorted(windows.label_sets(metric), key=lambda ls: sorted(ls.items())):
            if not _matches(labels, wanted):
                continue
            series = reply.series.add(labels=labels)
            value = windows.stat(metric, labels, window, stat_name, now)
            count = windows.stat(metric, labels, window, "count", now)
            if value is not None:
                series.value = value
            series.count = int(count or 0)
        return reply

    def Watch(self, request, context):
        hub = self.view.hub
        sub = hub.subscribe(request.interval_seconds, request.metrics, dict(request.labels),
                            min(int(request.history_seconds), 900), request.include_status)
        if sub is None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{hub.max_subscribers} clients are already watching; try again later")
        context.add_callback(lambda: hub.unsubscribe(sub))
        try:
            while context.is_active() and not sub.closed:
                update = sub.get(timeout=1.0)
                if update is None:
                    continue
                yield self._to_proto(update)
        finally:
            hub.unsubscribe(sub)

    def _to_proto(self, update) -> agent_pb2.WatchUpdate:
        msg = agent_pb2.WatchUpdate(ts=update.ts, events_json=update.events, coalesced=update.coalesced,
                                    events_dropped=update.events_dropped, status_json=update.status_json,
                                    simulated=self.view.simulated)
        for metric, labels, value in update.points:
            point = msg.points.add(metric=metric, labels=labels)
            if value is not None:
                point.value = value
            history = update.history.get((metric, tuple(sorted(labels.items()))))
            if history:
                point.history.extend(math.nan if v is None else v for v in history)
        return msg


class ApiServer:
    """The gRPC server on the Unix socket; `start()` binds and sets the socket's permissions.

    The server is a `grpc.aio` server on an asyncio loop of its own thread (`egs-api-loop`);
    the servicers stay ordinary synchronous code, run on a thread pool (`egs-api_N`) through
    `agent.api.bridge`.
    The blocking `grpc.server` has a thread that wakes five times a second to poll its
    completion queue even when nobody calls: 0.055 % of a core in the idle daemon, a tenth of
    the daemon's budget (docs/benchmarks.md). The aio server's loop sleeps until a call comes.
    """

    def __init__(self, settings, view: AgentView, extra_services=(), locator=None, max_workers: int = 16):
        self.settings = settings
        self.locator = locator
        self.path = settings.socket
        # Each Watch client holds a worker thread for its stream; the hub caps watchers well
        # below the pool size so Status and Query always find a free worker.
        self._pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="egs-api",
                                                initializer=name_os_thread)
        self._services = [lambda server: agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(view), server),
                          *extra_services]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.server: grpc.aio.Server | None = None
        self.started = False

    def start(self) -> None:
        prepare_socket_path(self.path)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="egs-api-loop", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(30.0)
        except BaseException:
            self._close_loop()
            raise
        self.started = True
        apply_socket_permissions(self.path, self.settings.socket_mode, self.settings.socket_group, self.locator)

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        name_os_thread()
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _start(self) -> None:
        # No migration_thread_pool: every handler reaches the server through the registrar,
        # already async (bridge.py says why grpc.aio's own way is not used).
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
        registrar = bridge.Registrar(server, self._pool)
        for add in self._services:
            add(registrar)
        try:
            bound = server.add_insecure_port(f"unix:{self.path}")
        except RuntimeError as e:
            bound, error = 0, e
        else:
            error = None
        if not bound:
            raise RuntimeError(f"cannot bind unix:{self.path}: {error or 'bind failed'}")
        await server.start()
        self.server = server

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5.0)
        if not loop.is_running():
            loop.close()

    def reconfigure(self, settings) -> None:
        if settings.socket != self.path:
            log.warning("reload: api.socket changed to %s; the daemon keeps serving on %s until restart",
                        settings.socket, self.path)
        if self.started:
            try:
                apply_socket_permissions(self.path, settings.socket_mode, settings.socket_group, self.locator)
            except ConfigError as e:
                log.error("reload: %s; socket permissions unchanged", e)
                return
        self.settings = settings

    def stop(self, grace: float = 1.0) -> None:
        if not self.started:
            return
        self.started = False
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result(grace + 1.0)
        except futures.TimeoutError:
            log.warning("api: the server did not stop within %.1f s", grace + 1.0)
        self._close_loop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
