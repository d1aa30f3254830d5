"""Ordinary (synchronous) gRPC servicers served by a `grpc.aio` server.

The local API's servicers are plain functions and generators, written against the blocking
`grpc.ServicerContext` (`abort` raises, `add_callback`, `is_active`), and tested on blocking
servers. The daemon serves them from a `grpc.aio` server because the blocking server keeps a
thread polling its completion queue five times a second (see `agent.api.server.ApiServer`).

grpc.aio can run synchronous handlers itself (`migration_thread_pool`), but a synchronous
*generator* is pumped by a pool thread into a one-item queue on the loop: when the client
goes away mid-stream, nothing drains that queue and the thread blocks on it forever (one lost
worker per cancelled `watch` or recording download; the process cannot exit either, as the
pool's threads are joined at exit). So every handler is wrapped here instead:
- a unary handler runs on the pool, as grpc.aio would run it;
- a streaming handler's generator is advanced one item at a time on the pool, and the loop
  awaits each item. When the call ends early the generator is closed (its `finally` runs) as
  soon as the item in progress is done, on that same pool thread.
The handlers see `SyncContext`, which gives them the blocking context's behaviour on top of
the aio one.
"""
from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any, Callable

import grpc

_END = object()


class _Aborted(Exception):
    """Raised in a handler by SyncContext.abort; the wrapper turns it into the aio abort."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class SyncContext:
    """A `grpc.aio.ServicerContext` as a synchronous handler expects it. `abort` raises
    (the call ends with that status once the handler unwinds), `add_callback` runs its
    callback when the call ends for any reason, `is_active` is False from then on; everything
    else is the aio context's own (`invocation_metadata`, `peer`, `set_code`, ...)."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context
        self._ended = False
        context.add_done_callback(self._end)

    def _end(self, _context) -> None:
        self._ended = True

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._context.add_done_callback(lambda _context: callback())
        return True

    def is_active(self) -> bool:
        return not self._ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _unary(handler: Callable, pool: futures.Executor) -> Callable:
    async def call(request, context):
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, handler, request, SyncContext(context))
        except _Aborted as e:
            await context.abort(e.code, e.details)
    return call


def _streaming(handler: Callable, pool: futures.Executor) -> Callable:
    async def call(request, context):
        items = handler(request, SyncContext(context))  # a generator: nothing runs yet
        step: futures.Future | None = None
        try:
            while True:
                step = pool.submit(next, items, _END)
                item = await asyncio.wrap_future(step)
                step = None
                if item is _END:
                    return
                yield item
        except _Aborted as e:
            await context.abort(e.code, e.details)
        finally:
            # Ended early (cancelled, aborted, the server stopping): close the generator (its
            # own `finally` runs: the servicers' are short, unsubscribing or closing a file),
            # at once if no step is in progress, else once that step is done, on the pool
            # thread that ran it; closing a running generator is an error.
            if step is None:
                items.close()
            else:
                step.add_done_callback(lambda _step: items.close())
    return call


def wrap(method: grpc.RpcMethodHandler, pool: futures.Executor) -> grpc.RpcMethodHandler:
    """`method` with its synchronous behaviour function replaced by an async one on `pool`."""
    if method.request_streaming:
        raise ValueError("client-streaming methods are not bridged (the local API has none)")
    if method.response_streaming:
        return method._replace(unary_stream=_streaming(method.unary_stream, pool))
    return method._replace(unary_unary=_unary(method.unary_unary, pool))


class _GenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, pool: futures.Executor):
        self._inner, self._pool = inner, pool
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # the inner handler's methods only

    def service(self, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            found = self._inner.service(handler_call_details)
            if found is None:
                return None  # not remembered: a client can ask for any number of names
            wrapped = self._wrapped[method] = wrap(found, self._pool)
        return wrapped


class Registrar:
    """What a generated `add_XServicer_to_server(servicer, server)` is given instead of the aio
    server: the same two registration calls, with every method handler bridged."""

    def __init__(self, server: grpc.aio.Server, pool: futures.Executor):
        self._server, self._pool = server, pool

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GenericHandler(h, self._pool) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: wrap(h, self._pool) for name, h in method_handlers.items()})
