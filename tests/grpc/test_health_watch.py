"""grpc.health.v1 Watch keeps every watcher told: when one of two Watches of "" ends, the other still
gets the next change (grpcio's asyncio servicer dropped the name's Condition with the first Watch that
ended, so the other never heard again: service_common/health.py)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_common.server import start_server

BOUND_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_watch_still_hears_a_change_after_another_watch_of_the_same_name_ended():
    running = await start_server([], ["codedserve.v1.Test"], "127.0.0.1:0", 1 << 20)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        first = health.Watch(health_pb2.HealthCheckRequest(), timeout=BOUND_S)
        second = health.Watch(health_pb2.HealthCheckRequest(), timeout=BOUND_S)
        async with asyncio.timeout(BOUND_S):
            assert (await first.read()).status == SERVING
            assert (await second.read()).status == SERVING
            first.cancel()
            while running.health.watching("") != 1:  # the server has ended the first Watch
                await asyncio.sleep(0.01)
            await running.set_serving(False)
            assert (await second.read()).status == NOT_SERVING  # failed before: never came (timed out)
            await running.set_serving(True)
            assert (await second.read()).status == SERVING
        second.cancel()
        async with asyncio.timeout(BOUND_S):
            while running.health.watching(""):  # the last Watch gone: nothing kept for the name
                await asyncio.sleep(0.01)
    finally:
        await channel.close()
        await running.stop(0)
