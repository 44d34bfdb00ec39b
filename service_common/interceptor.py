"""The one place where exceptions become gRPC statuses, and where every RPC is counted and timed.

``codedserve_rpcs_total{method, code}`` counts each call once by the status it ends with (the gRPC
name: ``OK``, ``DEADLINE_EXCEEDED``...), and each message of a stream answered with an error status
once more, under the stream's method and the message's status (:func:`message_status`): an error is
counted the same whether it was a unary call or one message of a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service_common import metrics
from service_common.errors import InvalidArgument, status_of

log = logging.getLogger(__name__)


def message_status(exc: Exception, method: str | None, what: str) -> tuple[grpc.StatusCode, str]:
    """The status ``exc`` maps to (an unexpected error is logged with its traceback and becomes INTERNAL
    with a generic message), counted under ``method`` (when given): for a whole call, or for one
    message of a stream."""
    known = status_of(exc)
    if known is None:
        log.exception("unexpected error in %s", what)
        known = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
    if method is not None:
        metrics.RPCS.labels(method=method, code=known[0].name).inc()
    return known


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    await context.abort(*message_status(exc, method, method))


class _Unparsed:
    """A unary request that did not parse: the handler answers INVALID_ARGUMENT (gRPC said UNKNOWN)."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Unparsed(exc)

    return parse


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    ok, seconds = metrics.RPCS.labels(method=method, code="OK"), metrics.RPC_SECONDS.labels(method=method)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            if isinstance(request, _Unparsed):
                raise InvalidArgument(f"the {method} request is not well-formed (truncated?): {request.error}")
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
    wrapped handler is built once and reused by every later call of it. A unary request that does not
    parse is INVALID_ARGUMENT; a stream's is the servicer's to answer (it arrives as a DecodeError from
    the request iterator)."""

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
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
