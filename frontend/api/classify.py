"""Frontend gRPC servicer: validate the request, hand the query to its model's server, shape the reply.

Bad input is INVALID_ARGUMENT naming the problem (:mod:`service_common.tensors` has the tensor and value
rules: a missing input, an overflowing shape, NaN/infinity or ``|x| > 1e6`` in a float input), and an
answer is never OK with a non-finite logit (:func:`finite_answer`). In a stream every message is
answered on its own — a bad one with the status a unary call would end with, counted the same — and
the stream goes on; a query whose id is still in flight in the same stream is refused. A message over
``--max-message-bytes`` is RESOURCE_EXHAUSTED on its own too (:func:`check_message_size`): the ports
read up to :data:`READ_SLACK` times the limit so that it can be. (Past that, gRPC refuses the message
unread and fails the whole call with RESOURCE_EXHAUSTED.)

What both protocols do alike (deadline, client, fault metadata, per-message status, finite answers,
concurrent streaming) is :mod:`frontend.api.common`; the query itself is the dataplane's
(:meth:`Dataplane.answer <frontend.dataplane.coordinator.Dataplane.answer>`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from frontend.api.common import (
    answer_concurrently,
    check_message_size,
    client_of,
    finite_answer,
    message_status,
    query_timeout_s,
    request_fault,
)
from frontend.dataplane.coordinator import Dataplane, ModelOutput, QueryAnswer
from service_common.errors import InvalidArgument
from service_common.tensors import check_input_values, to_numpy


class FrontendServicer(pb_grpc.FrontendServicer):
    def __init__(self, plane: Dataplane) -> None:
        self._plane = plane

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
                for r in self._plane.routes
            ]
        )

    async def _classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> QueryAnswer:
        plane = self._plane
        check_message_size(request, plane.max_message_bytes, "Classify request")
        server = plane.model_server(request.model)  # NOT_FOUND / UNAVAILABLE
        x = to_numpy(request.input, "input")  # "missing input" when unset
        sig = server.signature
        assert sig is not None
        if x.shape != sig.shape:
            raise InvalidArgument(f"input for {request.model}: expected shape {list(sig.shape)}, got {list(x.shape)}")
        if x.dtype != sig.dtype:
            raise InvalidArgument(f"input for {request.model}: expected dtype {sig.dtype.name}, got {x.dtype.name}")
        check_input_values(x, f"input for {request.model}")
        timeout_s = query_timeout_s(context, plane.default_deadline_s)
        fault = request_fault(context, plane)
        (answer,) = await plane.answer(server, x[None], timeout_s, client_of(context), fault)
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
