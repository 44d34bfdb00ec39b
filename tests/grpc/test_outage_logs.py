"""Logs an operator can read: a condition that repeats with every call is logged a few lines per period,
not a line or two per call. An encoder that is down or fails every other call (the frontend's coding
client over its stream, against a port where nothing listens and a stand-in EncodeStream on 127.0.0.1),
and a handler that raises the same unexpected error on every call (a real server, port 0)."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from prometheus_client import REGISTRY

from frontend.core.calls import CodingServiceError
from frontend.core.routes import parse_route
from frontend.transport.coding_clients import CodingClients
from service_common.server import start_server
from service_common.tensors import from_numpy
from triton_local.server import free_ports

ROUTE = parse_route("m=parm:k=2,encoder=add")
GROUP = np.zeros((2, 1, 4, 4), np.float32)
LOGGERS = ("frontend.transport.coding_clients", "frontend.transport.streams")


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name in LOGGERS]


async def _encodes(clients: CodingClients, count: int, timeout_s: float) -> int:
    """``count`` encodes one after the other; how many failed."""
    failed = 0
    for _ in range(count):
        try:
            await clients.encode(ROUTE, GROUP, timeout_s)
        except CodingServiceError:
            failed += 1
    return failed


async def test_an_encoder_that_is_down_is_logged_once_not_once_per_call(caplog):
    """Every encode opens a stream that breaks at once. Failed before: one "stream broke" line per call
    (1,276 of them over two 7 s outages of a real encoder)."""
    (port,) = free_ports(1)  # nothing listens there
    clients = CodingClients(f"127.0.0.1:{port}", f"127.0.0.1:{port}", 1 << 20, transport="stream")
    await clients.start()
    try:
        with caplog.at_level(logging.INFO):
            assert await _encodes(clients, 20, 2.0) == 20
    finally:
        await clients.close()
    lines = _lines(caplog)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert f"encoder at 127.0.0.1:{port}: UNAVAILABLE" in lines[0][1]
    assert lines[1][1] == f"encoder at 127.0.0.1:{port}: stream broke (UNAVAILABLE); opening a new one"


async def _every_other_unanswered() -> tuple[grpc.aio.Server, int]:
    """An EncodeStream that answers the messages with an even id at once and never the odd ones."""

    async def stream(requests, context):  # type: ignore[no-untyped-def]
        async for request in requests:
            if request.id % 2 == 0:
                parities = [pb.EncodeResponse(parities=from_numpy(GROUP[0])) for _ in request.requests]
                yield pb.EncodeBatchResponse(id=request.id, responses=parities)

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        stream, pb.EncodeBatchRequest.FromString, pb.EncodeBatchResponse.SerializeToString
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("codedserve.v1.Encoder", {"EncodeStream": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_an_encoder_that_fails_every_other_call_is_logged_once_each_way_per_period(caplog):
    """16 encodes alternately time out and succeed (what tiny client deadlines do to the coding calls).
    Failed before: a warning and an "answers again" line per pair, 16 lines (1,345 in 15 s of 5 ms
    client deadlines)."""
    server, port = await _every_other_unanswered()
    clients = CodingClients(f"127.0.0.1:{port}", f"127.0.0.1:{port}", 1 << 20, transport="stream")
    await clients.start()
    try:
        with caplog.at_level(logging.INFO):
            assert await _encodes(clients, 16, 0.1) == 8
    finally:
        await clients.close()
        await server.stop(0)
    lines = _lines(caplog)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert f"encoder at 127.0.0.1:{port}: DEADLINE_EXCEEDED" in lines[0][1]
    assert lines[1][1] == f"encoder at 127.0.0.1:{port} answers again (0 failures not logged)"


async def test_a_handler_that_fails_alike_on_every_call_logs_one_traceback_per_period(caplog):
    """Ten calls to a handler with a bug: each INTERNAL with a generic message and counted, one traceback
    in the log. Failed before: ten tracebacks."""

    async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ZeroDivisionError("a bug")

    handlers = grpc.method_handlers_generic_handler("t.Broken", {"Call": grpc.unary_unary_rpc_method_handler(broken)})
    running = await start_server([lambda s: s.add_generic_rpc_handlers((handlers,))], ["t.Broken"], "127.0.0.1:0", 1024)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    call = channel.unary_unary("/t.Broken/Call")
    before = REGISTRY.get_sample_value("codedserve_rpcs_total", {"method": "Call", "code": "INTERNAL"}) or 0.0
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(10):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(b"", timeout=5)
                assert (err.value.code(), err.value.details()) == (
                    grpc.StatusCode.INTERNAL,
                    "internal error; see the server log",
                )
    finally:
        await channel.close()
        await running.stop(0)
    after = REGISTRY.get_sample_value("codedserve_rpcs_total", {"method": "Call", "code": "INTERNAL"})
    assert after == before + 10
    logged = [r for r in caplog.records if r.name == "service_common.interceptor"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [("ERROR", "unexpected error in Call")]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is ZeroDivisionError
