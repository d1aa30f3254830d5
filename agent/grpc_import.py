"""Import gRPC for the daemon without Python's `ssl` module.

grpc's Cython core imports asyncio, and asyncio imports `ssl` when it can, which maps OpenSSL's
libcrypto and libssl into the process: 4.1 MiB of the daemon's RSS (`bench/daemon.py
--memory`). The daemon has no use for them. gRPC's TLS (the stream's mutual TLS, OTLP over
gRPC) is its own BoringSSL inside cygrpc, and the daemon never opens one of asyncio's TLS
transports. So `egs-agent run` imports grpc with `ssl` hidden: asyncio then records that it
has no ssl, and a later `import ssl` (the /metrics listener's TLS, `[prometheus] tls_*`)
loads the real module as usual.

Only the daemon does this, before anything else imported asyncio or ssl; tools and tests
import grpc the ordinary way.
"""
from __future__ import annotations

import importlib
import sys


def import_grpc_without_ssl() -> bool:
    """Import grpc and grpc.aio with `ssl` hidden; False (nothing changed) when asyncio, ssl
    or grpc is already loaded, or when a grpc release turns out to need `ssl` (it is then
    imported with it, as usual)."""
    if any(name in sys.modules for name in ("grpc", "asyncio", "ssl")):
        return False
    sys.modules["ssl"] = None  # `import ssl` raises ImportError while this is here
    try:
        importlib.import_module("grpc.aio")
        hidden = True
    except ImportError:
        hidden = False
    finally:
        del sys.modules["ssl"]
    if not hidden:
        importlib.import_module("grpc.aio")  # with ssl this time
    return hidden
