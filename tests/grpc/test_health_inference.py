"""Health does not take a Triton's word for it: a model that says ready on ModelReady but fails every
inference makes the frontend NOT_SERVING (after FAILING_CALLS failed queries the probe sends a real
inference), and SERVING again once an inference succeeds. The whole frontend runs on 127.0.0.1 over a
stand-in Triton on the wire (tests/grpc/fake_triton.py) whose ModelInfers fail while ``failing`` is set."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend.app.config import FrontendConfig
from frontend.app.server import create_server
from frontend.core.routes import parse_route
from frontend.transport.triton import FAILING_CALLS
from service_common.tensors import from_numpy
from tests.grpc.fake_triton import MODEL, ROW, FakeTriton

BOUND_S = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def stack():
    triton = await FakeTriton().start()
    config = FrontendConfig(
        "127.0.0.1:0", (triton.url,), "e", "d", (parse_route(f"{MODEL}=none"),), coding="local",
        health_interval_s=0.1, warm_up=False,
    )  # fmt: skip
    server = await create_server(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield triton, channel
    await channel.close()
    await server.stop(0)
    await triton.stop()


async def _until(channel: grpc.aio.Channel, status: int) -> None:
    """Poll "" with Check until it is ``status`` (bounded)."""
    health = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(BOUND_S):
        while (await health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S)).status != status:
            await asyncio.sleep(0.05)


def _query(i: int) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=MODEL, id=str(i), input=from_numpy(np.full(ROW, 0.5, np.float32)))


async def test_a_model_that_says_ready_but_fails_every_inference_is_not_serving_until_one_succeeds(stack):
    triton, channel = stack
    stub = pb_grpc.FrontendStub(channel)
    await _until(channel, SERVING)
    triton.failing = True
    for i in range(FAILING_CALLS):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Classify(_query(i), timeout=5)
        assert "INTERNAL" in (err.value.details() or ""), err.value.details()
    await _until(channel, NOT_SERVING)  # failed before: ModelReady kept saying ready, health stayed SERVING
    probed = triton.failed
    async with asyncio.timeout(BOUND_S):  # the probe rounds go on sending one real inference each
        while triton.failed <= probed:
            await asyncio.sleep(0.05)
    triton.failing = False
    await _until(channel, SERVING)
    assert (await stub.Classify(_query(9), timeout=5)).id == "9"
