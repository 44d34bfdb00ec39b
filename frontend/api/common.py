"""What both protocol shells do alike: the request's deadline, client and forced fault read from its gRPC
context, the message-size check, one status per failed stream message, finite answers only, and a stream's
requests answered concurrently.

Bad input is INVALID_ARGUMENT naming the problem, and an answer is never OK with a non-finite logit
(:func:`finite_answer`). A message over ``--max-message-bytes`` is RESOURCE_EXHAUSTED on its own
(:func:`check_message_size`): the ports read up to :data:`READ_SLACK` times the limit so that it can be.
(Past that, gRPC refuses the message unread and fails the whole call with RESOURCE_EXHAUSTED.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from frontend.dataplane.coordinator import Dataplane, QueryAnswer
from service_common import interceptor
from service_common.errors import InvalidArgument, ResourceExhausted, Unavailable

FAULT_METADATA_KEY = "codedserve-fault"
CLIENT_METADATA_KEY = "x-codedserve-client"

# The frontend's ports read messages up to this many times --max-message-bytes, so that one over the
# limit is refused alone (a stream goes on) instead of gRPC ending the call: see check_message_size.
READ_SLACK = 4

Request = TypeVar("Request")
Response = TypeVar("Response")


class HealthView(Protocol):
    """What a shell's readiness answers follow (frontend.app.health's monitor)."""

    @property
    def serving(self) -> bool: ...

    def answerable(self, model: str) -> bool: ...


def check_message_size(request: Message, max_bytes: int, what: str) -> None:
    """RESOURCE_EXHAUSTED, as gRPC's own limit says it, for a request over ``--max-message-bytes``."""
    size = request.ByteSize()
    if size > max_bytes:
        raise ResourceExhausted(
            f"{what} of {size} bytes is over the frontend's limit of {max_bytes} bytes (--max-message-bytes); "
            "send fewer rows per request"
        )


def client_of(context: grpc.aio.ServicerContext) -> str:
    """Who a call counts against in ``--max-inflight-per-client``: its ``x-codedserve-client`` metadata
    (clients behind one proxy, or one client over many connections), else its connection (gRPC's peer)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA_KEY and value:
            return str(value)
    return str(context.peer())


def query_timeout_s(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """The client's remaining deadline, or ``default_s`` for clients that set none."""
    remaining = context.time_remaining()
    return remaining if remaining is not None else default_s


def request_fault(context: grpc.aio.ServicerContext, plane: Dataplane) -> Any:
    """The fault a request forces through its ``codedserve-fault`` metadata, as the dataplane reads it (None
    unless the frontend takes such faults: --allow-fault-metadata)."""
    if not plane.takes_faults:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == FAULT_METADATA_KEY:
            return plane.forced_fault(value)
    return None


def message_status(exc: Exception, what: str, method: str | None = None) -> tuple[grpc.StatusCode, str]:
    """The status of one failed stream message (the interceptor's mapping, for a single message),
    counted in ``codedserve_rpcs_total`` under the stream's ``method`` like a failed unary call
    (uncounted without one)."""
    return interceptor.message_status(exc, method, what)


def finite_answer(answer: QueryAnswer) -> QueryAnswer:
    """``answer``, unless an output holds NaN or infinity: that is never answered as OK. An own output
    is INVALID_ARGUMENT (the input drives the model out of range, and would again); a reconstruction
    UNAVAILABLE (its coding group's other outputs overflowed; a retry is served by a new group)."""
    for output in answer.outputs:
        if np.isfinite(output.logits).all():
            continue
        if output.reconstructed:
            raise Unavailable(
                f"the reconstruction of {output.model}'s output is not finite (NaN or infinity): the other "
                "outputs of its coding group overflowed; retry"
            )
        raise InvalidArgument(
            f"{output.model} answered non-finite logits (NaN or infinity) for this input: its values drive "
            "the model out of range"
        )
    return answer


async def answer_concurrently(
    requests: AsyncIterator[Request], one: Callable[[Request], Awaitable[Response]]
) -> AsyncIterator[Response]:
    """Run ``one`` on every request as it arrives; yield the responses as they complete, until the
    client has closed its side and every accepted request is answered. ``one`` must not raise.

    A message that cannot be parsed (truncated, or not this request type) ends the reading: gRPC's
    request iterator cannot go on after it. Every request accepted before it is still answered, then
    the stream ends with INVALID_ARGUMENT saying which message it was (it used to hang, unanswered,
    until the deadline). A stream that ends first (its client cancelled it, or its deadline passed)
    stops its queries still running: nobody is left to answer, and none of them is counted."""
    done: asyncio.Queue[Response | None] = asyncio.Queue()  # None: no more requests will come
    tasks: set[asyncio.Task[None]] = set()
    accepted = 0
    broken: list[Exception] = []  # why the reading stopped before the client closed its side

    async def run(request: Request) -> None:
        await done.put(await one(request))

    async def read() -> None:
        nonlocal accepted
        try:
            async for request in requests:
                accepted += 1
                task = asyncio.create_task(run(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except DecodeError as exc:
            broken.append(
                InvalidArgument(
                    f"stream message {accepted + 1} is not a well-formed request (truncated, or of another type: "
                    f"{exc}); the stream ends once the messages before it ({accepted}) are answered"
                )
            )
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the accepted ones are answered
            broken.append(exc)
        finally:
            done.put_nowait(None)

    reader = asyncio.create_task(read())
    answered, closed = 0, False
    try:
        while not (closed and answered == accepted):
            item = await done.get()
            if item is None:
                closed = True
                continue
            answered += 1
            yield item
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
    if broken:
        raise broken[0]
