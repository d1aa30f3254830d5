"""Client side of the local API, shared by every CLI verb that talks to the daemon.

Other rooms' verbs (alarms, recordings) use `resolve_socket(args)` and `open_channel(path)`
to reach their own services on the same socket, and `explain_unavailable(path, error)` to
turn a failed call into the one line an operator needs ("not running; start it with...").
"""
from __future__ import annotations

import errno
import json
import socket
from typing import Iterator

import grpc

from agent import config as config_mod
from agent.proto import agent_pb2, agent_pb2_grpc

START_HINT = "start it with `systemctl start egs-agent` (or `egs-agent run` in the foreground)"


class DaemonUnavailable(Exception):
    """The daemon cannot be reached; the message is the one line to show (exit code 1)."""


def resolve_socket(args=None) -> str:
    """--socket, else $EGS_SOCKET, else `api.socket` from --config or the default file."""
    explicit = getattr(args, "socket", None)
    if explicit:
        return explicit
    return config_mod.load(getattr(args, "config", None)).api.socket


def explain_unavailable(path: str, error: Exception | None = None) -> DaemonUnavailable:
    """Why `path` cannot be reached, in one line."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except FileNotFoundError:
        return DaemonUnavailable(f"egs-agent is not running (no socket at {path}); {START_HINT}")
    except ConnectionRefusedError:
        return DaemonUnavailable(f"egs-agent is not running (stale socket {path}); {START_HINT}")
    except PermissionError:
        return DaemonUnavailable(f"permission denied on {path}: run as root or as a member of the socket's group")
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return DaemonUnavailable(f"egs-agent is not running (no socket at {path}); {START_HINT}")
        return DaemonUnavailable(f"cannot connect to {path}: {e.strerror or e}")
    finally:
        probe.close()
    detail = error.details() if isinstance(error, grpc.RpcError) else error
    return DaemonUnavailable(f"egs-agent at {path} did not answer ({detail})")


def open_channel(path: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{path}")


class Client:
    def __init__(self, path: str, timeout: float = 5.0):
        self.path, self.timeout = path, timeout
        self.channel = open_channel(path)
        self.stub = agent_pb2_grpc.AgentStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, **kw):
        try:
            return method(request, timeout=self.timeout, **kw)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise explain_unavailable(self.path, e) from None
            raise

    def status(self) -> dict:
        return json.loads(self._call(self.stub.Status, agent_pb2.StatusRequest()).json)

    def query(self, metric: str, window_seconds: float = 0.0, stat: str = "avg",
              labels: dict[str, str] | None = None) -> agent_pb2.QueryReply:
        return self._call(self.stub.Query, agent_pb2.QueryRequest(
            metric=metric, window_seconds=window_seconds, stat=stat, labels=labels or {}))

    def watch(self, interval: float = 1.0, metrics=(), labels=None, history_seconds: int = 0,
              include_status: bool = False) -> Iterator[agent_pb2.WatchUpdate]:
        request = agent_pb2.WatchRequest(interval_seconds=interval, metrics=list(metrics), labels=labels or {},
                                         history_seconds=history_seconds, include_status=include_status)
        stream = self.stub.Watch(request)
        try:
            yield from stream
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise explain_unavailable(self.path, e) from None
            raise
        finally:
            stream.cancel()
