"""gRPC's own bound on the RPCs open at once on a data port (``--max-concurrent-rpcs``): past it a call is
refused RESOURCE_EXHAUSTED before any handler sees it, while the health-only port still answers and the
KServe port keeps a bound of its own. The whole frontend runs on 127.0.0.1 against the stand-in Triton on
the wire (tests/grpc/fake_triton.py), whose calls are held at its gate."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.app.config import FrontendConfig
from frontend.app.server import FrontendServer, create_server
from frontend.core.routes import parse_route
from service_common.metrics import RPCS
from service_common.tensors import from_numpy
from tests.grpc.fake_triton import INPUT, MODEL, ROW, FakeTriton

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
RPC_BOUND_DETAILS = "Concurrent RPC limit exceeded!"  # grpc.aio's own refusal (grpcio 1.81)
SERVING = health_pb2.HealthCheckResponse.SERVING
BOUND_S = 20.0  # every wait on an event here is bounded by this


class Stack:
    def __init__(self, triton: FakeTriton, server: FrontendServer) -> None:
        self.triton, self.server = triton, server
        self.channels: list[grpc.aio.Channel] = []

    def channel(self, port: int | None) -> grpc.aio.Channel:
        self.channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return self.channels[-1]

    async def wait_serving(self) -> None:
        """Through the health-only port, so that no RPC stays open on a bounded one."""
        health = health_pb2_grpc.HealthStub(self.channel(self.server.running.health_port))
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=BOUND_S)
        async for reply in watch:
            if reply.status == SERVING:
                break
        watch.cancel()


@pytest.fixture
async def start():
    """``await start(bound)``: a frontend whose data ports each hold at most ``bound`` RPCs open at once."""
    started: list[Stack] = []

    async def make(bound: int) -> Stack:
        triton = await FakeTriton().start()
        config = FrontendConfig(
            "127.0.0.1:0", (triton.url,), "e", "d", (parse_route(f"{MODEL}=none"),), coding="local",
            kserve_address="127.0.0.1:0", health_address="127.0.0.1:0", warm_up=False, batch_inflight=8,
            max_concurrent_rpcs=bound,
        )  # fmt: skip
        started.append(Stack(triton, await create_server(config)))
        await started[-1].wait_serving()
        return started[-1]

    yield make
    for s in started:
        s.triton.gate.set()
        for channel in s.channels:
            await channel.close()
        await s.server.stop(0)
        await s.triton.stop()


def _query(i: int) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=MODEL, id=str(i), input=from_numpy(np.full(ROW, i, np.float32)))


def _classify_rpcs_counted() -> float:
    """Every Classify the frontend's handlers have finished, whatever its status (service_common.metrics)."""
    return sum(
        s.value
        for metric in RPCS.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("method") == "Classify"
    )


async def _refusal(call: grpc.aio.Call) -> tuple[grpc.StatusCode, str]:
    async with asyncio.timeout(BOUND_S):
        return await call.code(), await call.details()


async def test_past_the_bound_a_call_is_refused_before_any_handler_while_health_and_kserve_answer(start):
    """Bound 4, four queries held at Triton: the fifth is refused with gRPC's own message, and no handler
    saw it (admission's count, the RPC counter and Triton are unchanged). The health-only port still says
    SERVING; grpc.health.v1 on the full data port is refused like any call there. The KServe port counts
    its own RPCs: a batch sent there still reaches Triton. Once Triton answers, the held queries are
    answered."""
    stack = await start(4)
    stack.triton.gate.clear()
    frontend = stack.channel(stack.server.port)
    stub = pb_grpc.FrontendStub(frontend)
    held = [asyncio.ensure_future(stub.Classify(_query(i), timeout=60)) for i in range(4)]
    await stack.triton.held(4)
    counted = _classify_rpcs_counted()

    code, details = await _refusal(stub.Classify(_query(4), timeout=60))

    assert (code, details) == (EXHAUSTED, RPC_BOUND_DETAILS)
    assert stack.server.app.admission.inflight == 4 and stack.triton.rows_waiting == 4
    assert _classify_rpcs_counted() == counted and not any(t.done() for t in held)
    health_port = health_pb2_grpc.HealthStub(stack.channel(stack.server.running.health_port))
    assert (await health_port.Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S)).status == SERVING
    data_port_health = health_pb2_grpc.HealthStub(frontend).Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S)
    assert await _refusal(data_port_health) == (EXHAUSTED, RPC_BOUND_DETAILS)
    kserve = kpb_grpc.GRPCInferenceServiceStub(stack.channel(stack.server.kserve_port))
    batch = asyncio.ensure_future(kserve.ModelInfer(_infer(1), timeout=60))
    await stack.triton.held(5)
    stack.triton.gate.set()
    async with asyncio.timeout(BOUND_S):
        replies = await asyncio.gather(*held)
        assert (await batch).outputs[0].shape == [1, 3]
    assert sorted(r.id for r in replies) == ["0", "1", "2", "3"] and stack.triton.rows == 5
    assert _classify_rpcs_counted() == counted + 4  # the counter does see the calls a handler ran


async def test_a_stream_is_one_rpc_however_many_messages_it_carries(start):
    """Bound 2: two open ClassifyStreams carry three queries each, answered; a third stream is refused
    before its handler runs, and the two open ones go on answering."""
    stack = await start(2)
    stub = pb_grpc.FrontendStub(stack.channel(stack.server.port))
    streams = [stub.ClassifyStream(timeout=60), stub.ClassifyStream(timeout=60)]
    async with asyncio.timeout(BOUND_S):
        for i in range(6):
            await streams[i % 2].write(_query(i))
            assert (await streams[i % 2].read()).id == str(i)

    assert await _refusal(stub.ClassifyStream(timeout=60)) == (EXHAUSTED, RPC_BOUND_DETAILS)

    async with asyncio.timeout(BOUND_S):
        for i, stream in enumerate(streams, start=6):
            await stream.write(_query(i))
            assert (await stream.read()).id == str(i)
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK


def _infer(rows: int) -> kpb.ModelInferRequest:
    tensor = kpb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[rows, ROW])
    data = np.ones((rows, ROW), np.float32).tobytes()
    return kpb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[data])
