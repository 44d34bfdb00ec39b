"""A server not ready yet (the frontend before Triton has its models) is still alive: the liveness probe's
health name answers SERVING while "" (readiness) answers NOT_SERVING, and both stop at shutdown."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.server import LIVENESS_SERVICE, start_server

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_liveness_is_serving_while_readiness_is_not():
    running = await start_server([], ["codedserve.v1.Test"], "127.0.0.1:0", 1 << 20, serving=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(name: str) -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status

        assert (await status(""), await status(LIVENESS_SERVICE)) == (NOT_SERVING, SERVING)
        await running.set_serving(True)
        assert (await status(""), await status(LIVENESS_SERVICE)) == (SERVING, SERVING)
        await running.health.enter_graceful_shutdown()
        assert await status(LIVENESS_SERVICE) == NOT_SERVING
    await running.server.stop(0)
