"""Frontend gRPC servicer: validate the request, hand the query to its model's server, shape the reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from frontend.app import FrontendApp
from frontend.coordinator import Answer
from frontend.workers import Fault, parse_fault_metadata
from service_common.errors import InvalidArgument, status_of
from service_common.tensors import to_numpy

log = logging.getLogger(__name__)

FAULT_METADATA_KEY = "codedserve-fault"


class FrontendServicer(pb_grpc.FrontendServicer):
    def __init__(self, app: FrontendApp) -> None:
        self._app = app

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        answer = await self._classify(request, context)
        return _response(request.id, answer)

    async def ClassifyStream(
        self, requests: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        """Queries run concurrently; answers stream back as they complete, errors per message."""
        done: asyncio.Queue[pb.ClassifyResponse | None] = asyncio.Queue()  # None: the client closed its side
        tasks: set[asyncio.Task[None]] = set()
        accepted = 0

        async def one(request: pb.ClassifyRequest) -> None:
            try:
                await done.put(_response(request.id, await self._classify(request, context)))
            except Exception as exc:  # noqa: BLE001 - becomes this message's status, not the stream's
                code, message = status_of(exc) or (grpc.StatusCode.INTERNAL, "internal error; see the server log")
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("stream query %r failed", request.id)
                await done.put(pb.ClassifyResponse(id=request.id, status_code=code.value[0], error=message))

        async def read() -> None:
            nonlocal accepted
            async for request in requests:
                accepted += 1
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await done.put(None)

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

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(model=r.model, scheme=r.scheme, k=r.k, r=1 if r.coded else 0,
                         params=r.param_dict, parity_model=r.parity_model)
            for r in self._app.config.routes
        ])

    async def _classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> Answer:
        server = self._app.model_server(request.model)  # NOT_FOUND / UNAVAILABLE
        x = to_numpy(request.input, "input")
        sig = server.signature
        assert sig is not None
        if x.shape != sig.shape:
            raise InvalidArgument(f"input for {request.model}: expected shape {list(sig.shape)}, got {list(x.shape)}")
        if x.dtype != sig.dtype:
            raise InvalidArgument(f"input for {request.model}: expected dtype {sig.dtype.name}, got {x.dtype.name}")
        if not np.isfinite(x).all():
            raise InvalidArgument(f"input for {request.model}: contains NaN or infinity")
        remaining = context.time_remaining()
        timeout_s = remaining if remaining is not None else self._app.config.default_deadline_s
        with self._app.admit():  # RESOURCE_EXHAUSTED beyond max_inflight
            return await server.classify(x, timeout_s, self._fault(context))

    def _fault(self, context: grpc.aio.ServicerContext) -> Fault | None:
        if not self._app.config.faults.allow_metadata:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == FAULT_METADATA_KEY:
                try:
                    return parse_fault_metadata(value)
                except ValueError as exc:
                    raise InvalidArgument(str(exc)) from exc
        return None


def _response(query_id: str, answer: Answer) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        id=query_id,
        label=int(np.argmax(answer.logits)),
        logits=answer.logits.astype(np.float32).tolist(),
        reconstructed=answer.reconstructed,
        scheme=answer.scheme,
        source=pb.RECONSTRUCTED if answer.reconstructed else pb.DEPLOYED,
        latency_ms=answer.latency_s * 1e3,
        group_id=answer.group_id,
    )
