"""Synchronous servicers on the grpc.aio server (agent.api.bridge), over a real Unix socket:
a client that leaves a stream early gets its generator closed and its pool thread back (grpc.aio's
own bridge leaves the thread blocked for good), abort gives the caller the status and the
text, add_callback and is_active see the end of a call, and a stop with a stream open returns."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from agent.api import bridge
from agent.proto import agent_pb2, agent_pb2_grpc


class Servicer(agent_pb2_grpc.AgentServicer):
    def __init__(self):
        self.closed = threading.Event()  # the stream's generator ran its finally
        self.ended = threading.Event()  # add_callback fired
        self.active_after_end: list[bool] = []

    def Status(self, request, context):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the thing is off")

    def Query(self, request, context):
        return agent_pb2.QueryReply(metric=request.metric.upper())

    def Watch(self, request, context):
        context.add_callback(self.ended.set)
        try:
            for i in range(10_000):
                yield agent_pb2.WatchUpdate(ts=i)
                if self.ended.wait(0.01):
                    self.active_after_end.append(context.is_active())
                    return
        finally:
            self.closed.set()


@pytest.fixture
def served(short_dir):
    pool = futures.ThreadPoolExecutor(max_workers=2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servicer = Servicer()
    path = f"unix:{short_dir / 'b.sock'}"

    async def start():
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServicer_to_server(servicer, bridge.Registrar(server, pool))
        assert server.add_insecure_port(path)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    channel = grpc.insecure_channel(path)
    yield servicer, agent_pb2_grpc.AgentStub(channel), pool, (server, loop)
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    pool.shutdown(wait=True)


def busy_workers(pool: futures.ThreadPoolExecutor) -> int:
    """Workers running a task: submit one task per worker and count how many do not start."""
    started = threading.Semaphore(0)
    tasks = [pool.submit(started.release) for _ in range(pool._max_workers)]
    deadline = time.monotonic() + 3
    ran = 0
    while ran < len(tasks) and started.acquire(timeout=max(0.0, deadline - time.monotonic())):
        ran += 1
    for t in tasks:
        t.cancel()
    return len(tasks) - ran


def test_a_client_leaving_a_stream_early_closes_the_generator_and_frees_its_thread(served):
    servicer, stub, pool, _ = served
    stream = stub.Watch(agent_pb2.WatchRequest())
    assert next(stream).ts == 0 and next(stream).ts == 1
    stream.cancel()
    assert servicer.ended.wait(5), "add_callback did not fire when the client left"
    assert servicer.closed.wait(5), "the generator was not closed"
    assert servicer.active_after_end in ([], [False])
    assert busy_workers(pool) == 0, "a pool thread is still held by the cancelled stream"
    # and the server still answers
    assert stub.Query(agent_pb2.QueryRequest(metric="abc"), timeout=5).metric == "ABC"


def test_abort_gives_the_caller_the_status_and_the_text(served):
    _, stub, pool, _ = served
    with pytest.raises(grpc.RpcError) as e:
        stub.Status(agent_pb2.StatusRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "the thing is off"
    assert busy_workers(pool) == 0


def test_stopping_the_server_with_a_stream_open_ends_it_and_its_generator(served):
    servicer, stub, pool, (server, loop) = served
    stream = stub.Watch(agent_pb2.WatchRequest())
    assert next(stream).ts == 0
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    assert servicer.closed.wait(5)
    with pytest.raises(grpc.RpcError):
        for _ in stream:
            pass
    assert busy_workers(pool) == 0


def test_a_client_streaming_method_is_refused_rather_than_served_wrong():
    handler = grpc.stream_unary_rpc_method_handler(lambda it, ctx: None)
    with futures.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="client-streaming"):
        bridge.wrap(handler, pool)


def test_sync_context_is_active_until_the_call_ends_and_then_runs_the_callbacks():
    class AioContext:  # the two things SyncContext takes from grpc.aio's context
        def __init__(self):
            self.done_callbacks = []

        def add_done_callback(self, fn):
            self.done_callbacks.append(fn)

        def peer(self):
            return "unix:/x"

    aio = AioContext()
    ctx = bridge.SyncContext(aio)
    ran = []
    assert ctx.add_callback(lambda: ran.append("cb")) is True
    assert ctx.is_active() and ran == [] and ctx.peer() == "unix:/x"
    for fn in aio.done_callbacks:
        fn(aio)
    assert not ctx.is_active() and ran == ["cb"]
    with pytest.raises(bridge._Aborted) as e:
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    assert (e.value.code, e.value.details) == (grpc.StatusCode.NOT_FOUND, "no such thing")


def test_unknown_methods_are_unimplemented_and_not_remembered(served):
    """A client may ask for any method name; each is answered UNIMPLEMENTED, and only the
    service's own methods are kept by the bridge (its memory does not grow with the names)."""
    servicer, stub, pool, _ = served
    generic = bridge._GenericHandler(grpc.method_handlers_generic_handler("egs.agent.v1.Agent", {
        "Query": grpc.unary_unary_rpc_method_handler(servicer.Query)}), pool)

    class Details:
        def __init__(self, method):
            self.method, self.invocation_metadata = method, ()

    for i in range(1000):
        assert generic.service(Details(f"/egs.agent.v1.Agent/Nope{i}")) is None
    assert generic.service(Details("/egs.agent.v1.Agent/Query")) is not None
    assert list(generic._wrapped) == ["/egs.agent.v1.Agent/Query"]


def test_an_unknown_method_over_the_socket_is_unimplemented(served, short_dir):
    _, stub, _, _ = served
    channel = grpc.insecure_channel(f"unix:{short_dir / 'b.sock'}")
    call = channel.unary_unary("/egs.agent.v1.Agent/Nope")
    with pytest.raises(grpc.RpcError) as e:
        call(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()
    assert stub.Query(agent_pb2.QueryRequest(metric="x"), timeout=5).metric == "X"
