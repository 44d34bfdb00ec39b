"""The one place where exceptions become gRPC statuses, and where every RPC is counted and timed.

``codedserve_rpcs_total{method, code}`` counts each call once, by the status its client sees (the gRPC
name: ``OK``, ``DEADLINE_EXCEEDED``...). That includes a call that ends under its handler: gRPC cancels
the handler when the client's deadline passes (counted ``DEADLINE_EXCEEDED``) or the client cancels
(``CANCELLED``; a call cut off by the server's own shutdown counts so too, while its client sees
UNAVAILABLE), and an answer or error ready only after the deadline is counted ``DEADLINE_EXCEEDED``,
as its client saw it. A call whose deadline passes before gRPC starts its handler is counted nowhere
(the handler never runs). Each message of a stream answered with an error status is counted once
more, under the stream's method and the message's status (:func:`message_status`): an error is
counted the same whether it was a unary call or one message of a stream.
``codedserve_rpcs_in_flight{method}`` is the number of handlers running.

A call whose client has gone leaves no traceback: grpc.aio 1.81 raises ``ExecuteBatchError`` from
``context.abort`` (and from sending an answer) on a call already ended, and ``context.cancelled()``
and ``context.done()`` stay False then, so the time left tells a passed deadline from a client that
cancelled. The handler then ends as gRPC's own cancellation does (``asyncio.CancelledError``), which
gRPC logs at DEBUG only. An unexpected error is logged with its traceback, once per method and kind
of error in every :data:`UNEXPECTED_LOG_EVERY_S` (the held-back ones counted in the next line).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc._cython.cygrpc import ExecuteBatchError  # grpc.aio raises it, and exports only its base class

from service_common import metrics
from service_common.errors import InvalidArgument, status_name
from service_common.logs import RateLimitedLog

log = logging.getLogger(__name__)

UNEXPECTED_LOG_EVERY_S = 10.0
# The client's deadline is earlier than our copy of it by the time its request took to arrive (a few ms on a
# loaded machine, measured: up to 4.5 ms with three busy processes on two cores) and gRPC's rounding.
DEADLINE_SLACK_S = 0.01
_unexpected = RateLimitedLog(log, UNEXPECTED_LOG_EVERY_S)
_counts: dict[tuple[str, grpc.StatusCode], Any] = {}  # RPCS children, bound on first use


def _count(method: str, code: grpc.StatusCode) -> None:
    child = _counts.get((method, code))
    if child is None:
        child = _counts[method, code] = metrics.RPCS.labels(method=method, code=code.name)
    child.inc()


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The (code, message) for an error we know, or None for an unexpected one (-> INTERNAL)."""
    name = status_name(exc)
    return None if name is None else (grpc.StatusCode[name], str(exc))


def message_status(exc: Exception, method: str | None, what: str) -> tuple[grpc.StatusCode, str]:
    """The status ``exc`` maps to (an unexpected error is logged with its traceback, rate-limited, and
    becomes INTERNAL with a generic message), counted under ``method`` (when given): for a whole call,
    or for one message of a stream."""
    known = status_of(exc)
    if known is None:
        cause = (method or what, type(exc).__qualname__)
        _unexpected.log(logging.ERROR, cause, "unexpected error in %s", what, exc_info=exc)
        known = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
    if method is not None:
        _count(method, known[0])
    return known


def _past_deadline(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _ended(context: grpc.aio.ServicerContext, start: float) -> grpc.StatusCode:
    """How a call that ended under its handler (started at ``start``) ended, as its client saw it:
    DEADLINE_EXCEEDED once the deadline has passed or nearly, else CANCELLED. Nearly: the client gives
    up at its own deadline, and the server's copy runs late by up to :data:`DEADLINE_SLACK_S` plus 1 %
    of the timeout (gRPC rounds the timeout it sends up, to at most 3 digits of its unit)."""
    remaining = context.time_remaining()
    if remaining is None:
        return grpc.StatusCode.CANCELLED
    slack = DEADLINE_SLACK_S + (remaining + time.perf_counter() - start) / 100
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining <= slack else grpc.StatusCode.CANCELLED


def _gone(method: str, context: grpc.aio.ServicerContext, start: float) -> asyncio.CancelledError:
    """Count a call whose client has gone; what its handler raises then (gRPC logs it at DEBUG)."""
    _count(method, _ended(context, start))
    return asyncio.CancelledError(f"{method}: the call ended before its handler answered")


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception, start: float) -> None:
    """End the call with ``exc``'s status, counted; a call already over is counted as its client saw it."""
    code, details = message_status(exc, None, method)
    if not _past_deadline(context):
        try:
            await context.abort(code, details)
        except grpc.aio.AbortError:
            _count(method, code)
            raise
        except ExecuteBatchError:  # ended meanwhile: its deadline passed, or its client cancelled
            pass
    raise _gone(method, context, start)


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
    in_flight = metrics.RPCS_IN_FLIGHT.labels(method=method)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        in_flight.inc()
        try:
            if isinstance(request, _Unparsed):
                raise InvalidArgument(f"the {method} request is not well-formed (truncated?): {request.error}")
            response = await behavior(request, context)
        except grpc.aio.AbortError:  # the behaviour ended the call itself (e.g. UNIMPLEMENTED)
            _count(method, context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:  # gRPC ended the call: its deadline passed, or its client cancelled
            _count(method, _ended(context, start))
            raise
        except ExecuteBatchError:  # the behaviour's own abort, on a call already over
            raise _gone(method, context, start) from None
        except Exception as exc:  # noqa: BLE001 - mapped to a status right here
            await _abort(context, method, exc, start)
            raise  # unreachable: _abort raises
        finally:
            in_flight.dec()
        if _past_deadline(context):  # its client has given up: sending would fail, and gRPC log that
            raise _gone(method, context, start)
        ok.inc()
        seconds.observe(time.perf_counter() - start)
        return response

    return handler


def _wrap_stream(method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    ok, in_flight = metrics.RPCS.labels(method=method, code="OK"), metrics.RPCS_IN_FLIGHT.labels(method=method)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        start = time.perf_counter()
        in_flight.inc()
        try:
            async for response in behavior(request, context):
                if _past_deadline(context):  # nobody is left to send it to: end quietly, below
                    break
                yield response
        except grpc.aio.AbortError:
            _count(method, context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # ended by gRPC, or by a failed send of an answer
            _count(method, _ended(context, start))
            raise
        except ExecuteBatchError:  # reading or aborting a call already over
            raise _gone(method, context, start) from None
        except Exception as exc:  # noqa: BLE001
            await _abort(context, method, exc, start)
        finally:
            in_flight.dec()
        if _past_deadline(context):
            raise _gone(method, context, start)
        ok.inc()

    return handler


class ErrorMappingServer:
    """The server as the generated ``add_*Servicer_to_server`` functions see it: every handler registered
    through it is wrapped once, at registration. Not a grpc.aio ``ServerInterceptor``: a server with one
    runs the interceptor chain in Python for every call (about 70 us of CPU a call in an ad-hoc null-server
    comparison, 2026-12-02), while a registered method is found by gRPC itself. A unary request that does
    not parse is INVALID_ARGUMENT; a stream's is the servicer's to answer (it arrives as a DecodeError from
    the request iterator)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: wrap_handler(handler, name) for name, handler in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h) for h in handlers))


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler (the fallback for methods gRPC did not find registered), its answers wrapped once
    per method."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        full = handler_call_details.method
        wrapped = self._wrapped.get(full)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:  # not this handler's method; not remembered (any name can be asked for)
                return None
            wrapped = self._wrapped[full] = wrap_handler(handler, full.rsplit("/", 1)[-1])
        return wrapped


def wrap_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """Unary-unary and stream-stream handlers mapped and counted; other kinds pass through untouched."""
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
