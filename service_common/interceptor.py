"""The one place where exceptions become gRPC statuses, and where every RPC is counted and timed."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service_common import metrics
from service_common.errors import status_of

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    known = status_of(exc)
    if known is None:
        log.exception("unexpected error in %s", method)
        known = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
    code, message = known
    metrics.RPCS.labels(method=method, code=code.name).inc()
    await context.abort(code, message)


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    ok, seconds = metrics.RPCS.labels(method=method, code="OK"), metrics.RPC_SECONDS.labels(method=method)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            response = await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status right here
            await _abort(context, method, exc)
            raise  # unreachable: abort raises
        ok.inc()
        seconds.observe(time.perf_counter() - start)
        return response

    return handler


def _wrap_stream(method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, method, exc)
        metrics.RPCS.labels(method=method, code="OK").inc()

    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and stream-stream handlers; other kinds pass through untouched. A method's
    wrapped handler is built once and reused by every later call of it."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        full = handler_call_details.method
        if full not in self._wrapped:
            self._wrapped[full] = self._wrap(await continuation(handler_call_details), full)
        return self._wrapped[full]

    @staticmethod
    def _wrap(handler: grpc.RpcMethodHandler | None, full: str) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        method = full.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
