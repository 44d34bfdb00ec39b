"""Encoder: a group's queries in, the input of every coded slot out. Proto <-> numpy here; the math is coding/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from coding.schemes import get_scheme
from service_common.batches import answer_each, answer_stream
from service_common.tensors import from_numpy, to_numpy


class EncoderServicer(pb_grpc.EncoderServicer):
    async def Encode(self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext) -> pb.EncodeResponse:
        return _encode(request)

    async def EncodeBatch(
        self, request: pb.EncodeBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeBatchResponse:
        return pb.EncodeBatchResponse(responses=answer_each(request.requests, _encode, _failed))

    async def EncodeStream(
        self, requests: AsyncIterator[pb.EncodeBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EncodeBatchResponse]:
        async for response in answer_stream(requests, _encode, _failed, _batch_reply):  # in request order
            yield response


def _encode(request: pb.EncodeRequest) -> pb.EncodeResponse:
    scheme = get_scheme(request.code.scheme, request.code.k, request.code.params)
    queries = to_numpy(request.queries, "queries")
    # Encoding a group is microseconds of numpy: cheaper inline than a hop to an executor.
    return pb.EncodeResponse(parities=from_numpy(scheme.coded_inputs(queries)))


def _batch_reply(tag: int, responses: list[pb.EncodeResponse]) -> pb.EncodeBatchResponse:
    return pb.EncodeBatchResponse(id=tag, responses=responses)


def _failed(message: str) -> pb.EncodeResponse:
    return pb.EncodeResponse(error=message)
