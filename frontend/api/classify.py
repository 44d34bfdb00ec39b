"""Frontend gRPC servicer: validate the request, hand the query to its model's server, shape the reply.

Bad input is INVALID_ARGUMENT naming the problem (:mod:`service_common.tensors` has the tensor and value
rules: a missing input, an overflowing shape, NaN/infinity or ``|x| > 1e6`` in a float input), and an
answer is never OK with a non-finite logit (:func:`finite_answer`). In a stream every message is
answered on its own — a bad one with the status a unary call would end with, counted the same — and
the stream goes on; a query whose id is still in flight in the same stream is refused. A message over
``--max-message-bytes`` is RESOURCE_EXHAUSTED on its own too (:func:`check_message_size`): the ports
read up to :data:`READ_SLACK` times the limit so that it can be. (Past that, gRPC refuses the message
unread and fails the whole call with RESOURCE_EXHAUSTED.)

The module-level helpers (deadline, fault metadata, per-message status, finite answers, concurrent
streaming) are shared with the KServe v2 servicer (:mod:`frontend.api.kserve`), so both protocols
behave alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from google.protobuf.message import DecodeError, Message

from frontend.app.assembly import FrontendApp
from frontend.core.faults import Fault, parse_fault_metadata
from frontend.dataplane.coordinator import ModelOutput, QueryAnswer
from service_common import interceptor
from service_common.errors import InvalidArgument, ResourceExhausted, Unavailable
from service_common.tensors import check_input_values, to_numpy

FAULT_METADATA_KEY = "codedserve-fault"
CLIENT_METADATA_KEY = "x-codedserve-client"

# The frontend's ports read messages up to this many times --max-message-bytes, so that one over the
# limit is refused alone (a stream goes on) instead of gRPC ending the call: see check_message_size.
READ_SLACK = 4

Request = TypeVar("Request")
Response = TypeVar("Response")


class FrontendServicer(pb_grpc.FrontendServicer):
    def __init__(self, app: FrontendApp) -> None:
        self._app = app

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        answer = await self._classify(request, context)
        return _response(request.id, answer)

    async def ClassifyStream(
        self, requests: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        """Queries run concurrently; answers stream back as they complete, errors per message (see the
        module doc); an id still in flight in this stream is refused."""
        inflight: set[str] = set()

        async def one(request: pb.ClassifyRequest) -> pb.ClassifyResponse:
            try:
                with _claimed(inflight, request.id):
                    return _response(request.id, await self._classify(request, context))
            except Exception as exc:  # noqa: BLE001 - becomes this message's status, not the stream's
                code, message = message_status(exc, f"stream query {request.id!r}", "ClassifyStream")
                return pb.ClassifyResponse(id=request.id, status_code=code.value[0], error=message)

        async for response in answer_concurrently(requests, one):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    model=r.model,
                    scheme=r.scheme,
                    k=r.k,
                    r=len(r.code.coded_slots),
                    params=r.param_dict,
                    parity_model=r.parity_model,
                    models=r.models,
                    data_slots=len(r.code.data_slots),
                    coded_slots=len(r.code.coded_slots),
                )
                for r in self._app.config.routes
            ]
        )

    async def _classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> QueryAnswer:
        check_message_size(request, self._app.config.max_message_bytes, "Classify request")
        server = self._app.model_server(request.model)  # NOT_FOUND / UNAVAILABLE
        x = to_numpy(request.input, "input")  # "missing input" when unset
        sig = server.signature
        assert sig is not None
        if x.shape != sig.shape:
            raise InvalidArgument(f"input for {request.model}: expected shape {list(sig.shape)}, got {list(x.shape)}")
        if x.dtype != sig.dtype:
            raise InvalidArgument(f"input for {request.model}: expected dtype {sig.dtype.name}, got {x.dtype.name}")
        check_input_values(x, f"input for {request.model}")
        timeout_s = query_timeout_s(context, self._app.config.default_deadline_s)
        fault = request_fault(context, self._app.config.faults.allow_metadata)
        with self._app.admit(server, client_of(context), timeout_s):  # RESOURCE_EXHAUSTED at once beyond a bound
            return await server.classify(x, timeout_s, fault)


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


def request_fault(context: grpc.aio.ServicerContext, allowed: bool) -> Fault | None:
    """The fault a request forces through its ``codedserve-fault`` metadata (only when ``allowed``)."""
    if not allowed:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == FAULT_METADATA_KEY:
            try:
                return parse_fault_metadata(value)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
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


@contextlib.contextmanager
def _claimed(inflight: set[str], query_id: str) -> Iterator[None]:
    """Hold ``query_id`` in ``inflight`` while its query runs; one already held is refused (an empty id
    is no id: never refused)."""
    if not query_id:
        yield
        return
    if query_id in inflight:
        raise InvalidArgument(
            f"query id {query_id!r} is already in flight in this stream; the unanswered queries of a stream "
            "need distinct ids"
        )
    inflight.add(query_id)
    try:
        yield
    finally:
        inflight.discard(query_id)


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


def _response(query_id: str, answer: QueryAnswer) -> pb.ClassifyResponse:
    outputs = [_model_output(o) for o in finite_answer(answer).outputs]
    return pb.ClassifyResponse(
        id=query_id,
        label=outputs[0].label,
        logits=outputs[0].logits,
        reconstructed=answer.reconstructed,
        scheme=answer.scheme,
        source=pb.RECONSTRUCTED if answer.reconstructed else pb.DEPLOYED,
        latency_ms=answer.latency_s * 1e3,
        group_id=answer.group_id,
        faulty_workers=list(answer.faulty_workers),
        outputs=outputs,
    )


def _model_output(output: ModelOutput) -> pb.ModelOutput:
    logits = np.asarray(output.logits, dtype=np.float32)
    return pb.ModelOutput(
        model=output.model,
        shape=list(logits.shape),
        logits=logits.ravel().tolist(),
        label=int(np.argmax(logits)) if logits.ndim == 1 else 0,
        reconstructed=output.reconstructed,
    )
