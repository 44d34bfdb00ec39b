"""python -m bench.floor_proxy: the least any per-query Python frontend can cost, as a benchmark target.

A grpc.aio server that forwards every unary call it gets (KServe ``ModelInfer``, metadata, health) to
one Triton as raw bytes: no parsing, no numpy, no tritonclient, one Triton call per call received.
``bench.perf_compare`` measures it beside Triton and the frontends (its ``floor`` target). With
``--canned`` it answers every ModelInfer with Triton's answer to the first one, calling Triton no more:
the server half of a call alone (``bench.call_cost``; only for a load that repeats one request).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from service_common.channels import message_limits
from service_common.logs import setup_logging
from service_common.server import wait_for_signal

log = logging.getLogger("bench.floor_proxy")


class _Forward(grpc.GenericRpcHandler):
    """Every method name is forwarded; requests and replies stay bytes (no (de)serializer)."""

    def __init__(self, channel: grpc.aio.Channel, canned: bool = False) -> None:
        self._channel = channel
        self._methods: dict[str, Callable[..., Any]] = {}
        self._canned = canned
        self._answer: bytes | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method not in self._methods:
            self._methods[method] = self._channel.unary_unary(method)

        canned = self._canned and method.endswith("/ModelInfer")

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if canned and self._answer is not None:
                return self._answer
            try:
                answer = await self._methods[method](request, timeout=context.time_remaining())
                if canned:
                    self._answer = answer
                return answer
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # unreachable: abort raises

        return grpc.unary_unary_rpc_method_handler(forward)


async def start_proxy(
    address: str, triton_url: str, max_message_bytes: int = 16 << 20, canned: bool = False
) -> tuple[grpc.aio.Server, grpc.aio.Channel, int]:
    """The started proxy server, its channel to Triton, and the port it listens on."""
    options = message_limits(max_message_bytes)
    channel = grpc.aio.insecure_channel(triton_url, options=options)
    server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_Forward(channel, canned),))
    port = server.add_insecure_port(address)
    await server.start()
    return server, channel, port


async def serve(address: str, triton_url: str, max_message_bytes: int = 16 << 20, canned: bool = False) -> None:
    server, channel, port = await start_proxy(address, triton_url, max_message_bytes, canned)
    log.info("floor proxy on port %d forwarding to %s%s", port, triton_url, " (canned answers)" if canned else "")
    await wait_for_signal()
    await server.stop(1.0)
    await channel.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:8104", help="host:port to listen on")
    p.add_argument("--triton-url", default="127.0.0.1:8001", help="the Triton gRPC host:port to forward to")
    p.add_argument(
        "--canned",
        action="store_true",
        help="answer every ModelInfer with Triton's answer to the first (the server half alone; default: forward all)",
    )
    args = p.parse_args()
    setup_logging()
    asyncio.run(serve(args.address, args.triton_url, canned=args.canned))


if __name__ == "__main__":
    main()
