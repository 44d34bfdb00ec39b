"""Calls over one long-lived bidi stream: each message is a call, its answer matched by the id it echoes.

A unary gRPC call from Python costs more than a message on an open stream, on both sides (in an ad-hoc
grpc.aio ping-pong on the 2-core development machine, 2026-12-02: 450-550 us against 170-210 us of client
CPU, 560-710 against 160-210 on the server; in the stack, bench/results/history-kserve.md). The frontend keeps one
stream open per coding service (EncodeStream, DecodeStream) and, with ``--triton-transport stream``, one
per Triton instance (ModelStreamInfer). The stream opens on first use and again after it breaks; a break
fails only the calls that were on it, as a failed call would (``grpc.aio.AioRpcError``, so callers handle
both transports alike). A call's timeout is the caller's: the message is not withdrawn (a stream has no
per-message cancel, and nothing is ever cancelled on Triton), its late answer is dropped. While the
peer is down every call opens a stream that breaks at once: that is logged once per cause (the status
code) in every :attr:`StreamCalls.LOG_EVERY_S`, with the count held back, and the first answer after it
says so once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from service_common.logs import RateLimitedLog

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")


def _set_id(request: Any, tag: int) -> None:
    request.id = tag


def _get_id(response: Any) -> int | None:
    return int(response.id)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a failed unary call would have raised."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Stream(Generic[Response]):
    """One open stream, the calls waiting on it, and the task that reads its answers."""

    def __init__(self, call: grpc.aio.StreamStreamCall, answer_id: Callable[[Response], int | None]) -> None:
        self.call = call
        self.answer_id = answer_id
        self.pending: dict[int, asyncio.Future[Response]] = {}
        self.write_lock = asyncio.Lock()  # grpc.aio allows one write at a time on a stream
        self.broken: grpc.aio.AioRpcError | None = None
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the stream was closed by the server")
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    break
                future = self.pending.pop(self.answer_id(response), None)  # type: ignore[arg-type]
                if future is not None and not future.done():  # None: its caller gave up (timeout)
                    future.set_result(response)
        except grpc.aio.AioRpcError as exc:
            error = exc
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the stream was closed by the frontend")
            raise
        finally:
            self.fail(error)

    def fail(self, error: grpc.aio.AioRpcError) -> None:
        self.broken = error
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)


class StreamCalls(Generic[Request, Response]):
    """``await calls.call(request, timeout_s)``: the answer to ``request`` over the open stream.
    ``tag(request, n)`` writes a call's number into its request, ``answer_id(response)`` reads it back
    (None: not an answer to any call); by default both use the messages' ``id`` field.
    Create inside the running loop; :meth:`close` it."""

    LOG_EVERY_S = 10.0

    def __init__(
        self,
        open_stream: Callable[[], grpc.aio.StreamStreamCall],
        what: str,
        tag: Callable[[Request, int], None] = _set_id,
        answer_id: Callable[[Response], int | None] = _get_id,
    ) -> None:
        self._open = open_stream
        self._what = what  # for logs: "encoder at host:port"
        self._tag = tag
        self._answer_id = answer_id
        self._stream: _Stream[Response] | None = None
        self._ids = itertools.count(1)
        self._breaks = RateLimitedLog(log, self.LOG_EVERY_S)

    def _current(self) -> _Stream[Response]:
        stream = self._stream
        if stream is None or stream.broken is not None:
            if stream is not None and stream.broken is not None:
                code = stream.broken.code().name
                self._breaks.log(logging.INFO, code, "%s: stream broke (%s); opening a new one", self._what, code)
            stream = self._stream = _Stream(self._open(), self._answer_id)
            stream.reader = asyncio.get_running_loop().create_task(stream.read())
        return stream

    async def call(self, request: Request, timeout_s: float) -> Response:
        """Never cancel a call while it writes: grpc.aio would cancel the whole stream, and with it every
        call on it (the Triton pool and the coding clients call from batcher tasks, never cancelled)."""
        stream = self._current()
        loop = asyncio.get_running_loop()
        tag = next(self._ids)
        self._tag(request, tag)
        future: asyncio.Future[Response] = loop.create_future()
        stream.pending[tag] = future
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            try:
                async with stream.write_lock:
                    if stream.broken is None:
                        await stream.call.write(request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                # The stream ended under the write (gRPC may call that INTERNAL): a transport failure,
                # for this call and every other on the stream; the next call opens a new one.
                why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                stream.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self._what} ended: {why}"))
            response = await future
        finally:
            timer.cancel()
            stream.pending.pop(tag, None)
        self._breaks.resolved("%s: the stream answers again", self._what)
        return response

    async def close(self, grace_s: float = 1.0) -> None:
        """End the stream: no more writes; answers still due are awaited for up to ``grace_s``."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if stream.broken is None:
            try:
                await stream.call.done_writing()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                pass  # already ended
        if stream.reader is not None:
            done, _ = await asyncio.wait({stream.reader}, timeout=grace_s)
            if not done:
                stream.reader.cancel()
                await asyncio.gather(stream.reader, return_exceptions=True)


def _expire(future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(
            rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer on the stream within {timeout_s * 1e3:.0f} ms")
        )
